/**
 * The one place where the tests make Socket.IO adapter factories: ours (`createAdapter`) and
 * `@socket.io/postgres-adapter` 0.5.0, with a suite's settings. Used by the cluster builder
 * (`nodes.ts`) and by the child-process fixtures, so it imports nothing of vitest.
 */
import { createAdapter as createUpstreamAdapter } from "@socket.io/postgres-adapter"
import type pg from "pg"
import { createAdapter, type AdapterOptions } from "../../src/index.js"

/** Which adapter a node runs. */
export type Kind = "ours" | "0.5.0"

/** Adapter options shared by every node of a cluster (plain data: they reach child processes). */
export type NodeOptions = Omit<AdapterOptions, "errorHandler">

/** What every node of one cluster is built with. */
export interface NodeSettings {
  /** The suite's id: channel prefix, attachments table and recovery table prefix by default. */
  readonly id: string
  /** Options of every node; 0.5.0 nodes take those they know. */
  readonly options?: NodeOptions
}

/** The heartbeat interval of every node unless told otherwise: membership converges quickly. */
export const HEARTBEAT_INTERVAL = 300

/** Options that keep the fault tests fast: short timeouts, quick reconnects and heartbeats. */
export const fastOptions = {
  heartbeatInterval: 300,
  heartbeatTimeout: 1500,
  requestsTimeout: 2000,
  publishTimeout: 1000,
  reconnectMaxDelay: 500,
} as const satisfies NodeOptions

// What 0.5.0 understands of our options (`requestsTimeout` is fixed at 5000 there).
const UPSTREAM_OPTIONS = [
  "channelPrefix",
  "tableName",
  "payloadThreshold",
  "cleanupInterval",
  "heartbeatInterval",
  "heartbeatTimeout",
] as const

/** The resolved options of `settings`: the suite's names and heartbeat, then its own options. */
export const resolveOptions = (settings: NodeSettings): NodeOptions => ({
  channelPrefix: settings.id,
  tableName: settings.id,
  recoveryTablePrefix: settings.id,
  heartbeatInterval: HEARTBEAT_INTERVAL,
  ...modeUnderTest(),
  ...settings.options,
})

/**
 * `TEST_SUBSCRIPTION_MODE=dynamic` (or `dynamic-private`) runs the cluster suites with that
 * `subscriptionMode` on every node of ours that does not say otherwise (issue 13: every cluster
 * feature in each mode). Suites that need "static" (interop with 0.5.0, recovery, the primary)
 * are not meant to pass in it.
 */
const modeUnderTest = (): NodeOptions => {
  const mode = process.env.TEST_SUBSCRIPTION_MODE
  return mode === "dynamic" || mode === "dynamic-private" ? { subscriptionMode: mode } : {}
}

/**
 * The adapter factory (what `new Server(…, { adapter })` takes) of `kind` on `pool`. 0.5.0 neither
 * creates its attachments table nor quotes its name: see `createAttachmentTable`.
 */
export const makeAdapter = (
  kind: Kind,
  pool: pg.Pool,
  settings: NodeSettings,
  errorHandler: (error: Error) => void,
) => {
  const options = resolveOptions(settings)
  if (kind === "ours") return createAdapter(pool, { ...options, errorHandler })
  const upstream: Record<string, unknown> = { errorHandler }
  for (const key of UPSTREAM_OPTIONS) {
    if (options[key] !== undefined) upstream[key] = options[key]
  }
  return createUpstreamAdapter(pool, upstream)
}
