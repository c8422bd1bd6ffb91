/**
 * Mixed clusters for the interop suites: real Socket.IO servers on our adapter and on
 * `@socket.io/postgres-adapter` 0.5.0 side by side, on the same channels and attachments table.
 *
 * 0.5.0 neither creates its table nor quotes its name, so the table is a lowercase suite id created
 * here first. It keeps one pool connection for LISTEN and publishes concurrently on the rest, so
 * each 0.5.0 server gets a pool of its own with one connection besides: its publishes then commit
 * in the order they were sent. It sends `INITIAL_HEARTBEAT` before it listens, so it may only see
 * the others at their next heartbeat: `waitForMembers` waits until every server counts everyone.
 */
import { createAdapter as createUpstreamAdapter } from "@socket.io/postgres-adapter"
import type pg from "pg"
import type { Server } from "socket.io"
import type { Socket as ClientSocket } from "socket.io-client"
import { createAdapter, type AdapterOptions } from "../../src/index.js"
import {
  connectClient,
  eventually,
  startServer,
  type ClientOptions,
  type TestServer,
} from "./cluster.js"
import { createAttachmentTable, dropTable, makePool, suiteId } from "./postgres.js"

/** Which adapter a server runs. */
export type Kind = "ours" | "0.5.0"

/** The heartbeat interval of every mixed-cluster server, ours and 0.5.0 alike. */
export const HEARTBEAT_INTERVAL = 300

/** One server of a mixed cluster. */
export interface MixedNode {
  readonly kind: Kind
  readonly server: TestServer
  readonly io: Server
  /** The server's own pool (ended by the cluster's `close`). */
  readonly pool: pg.Pool
  /** What the adapter passed to its `errorHandler`. */
  readonly errors: Array<Error>
  /** The adapter's uid in namespace `nsp` (default `/`). */
  readonly uid: (nsp?: string) => string
}

/** Options of {@link startMixedCluster}. */
export interface MixedClusterOptions {
  /** Another database (e.g. a private server's url); default the shared one. */
  readonly connectionString?: string
  /** ms without a message before a node is dropped, on every server. Default 10000. */
  readonly heartbeatTimeout?: number
  /** ms our adapters wait for request answers. Default 5000 (0.5.0's is fixed at 5000). */
  readonly requestsTimeout?: number
  /** Extra pool options of each server (e.g. `application_name`), by index. */
  readonly poolOptions?: (index: number, kind: Kind) => pg.PoolConfig
  /** Extra options of our adapters (e.g. a short `reconnectMaxDelay`). */
  readonly oursOptions?: AdapterOptions
}

/** A mixed cluster, its clients, and a pool of its own for the test's queries. */
export interface MixedCluster {
  /** The channel prefix and table name. */
  readonly id: string
  readonly nodes: Array<MixedNode>
  readonly admin: pg.Pool
  /** Starts one more server of `kind`. */
  readonly addNode: (kind: Kind) => Promise<MixedNode>
  /** Closes a server (`io.close()`: its adapters announce `ADAPTER_CLOSE`); its pool stays open. */
  readonly closeNode: (node: MixedNode) => Promise<void>
  /** Servers not closed, in start order. */
  readonly running: () => Array<MixedNode>
  /** Connects a client to `nodes[index]`; tracked for `disconnectClients` and `close`. */
  readonly connect: (index: number, options?: ClientOptions) => Promise<ClientSocket>
  /** Disconnects every tracked client and waits until no running server holds their sockets. */
  readonly disconnectClients: (namespaces?: ReadonlyArray<string>) => Promise<void>
  /** Waits until every running server counts `count` (default: all running) servers on `nsp`. */
  readonly waitForMembers: (nsp?: string, count?: number, timeout?: number) => Promise<void>
  /** Closes clients and servers, drops the table, ends the pools. */
  readonly close: () => Promise<void>
}

/** The Socket.IO adapter factory of `kind` on `pool`, with the mixed cluster's settings. */
export const makeAdapter = (
  kind: Kind,
  pool: pg.Pool,
  id: string,
  options: {
    readonly heartbeatTimeout?: number
    readonly requestsTimeout?: number
    readonly oursOptions?: AdapterOptions
    readonly errorHandler: (error: Error) => void
  },
) =>
  kind === "ours"
    ? createAdapter(pool, {
        ...options.oursOptions,
        channelPrefix: id,
        tableName: id,
        heartbeatInterval: HEARTBEAT_INTERVAL,
        heartbeatTimeout: options.heartbeatTimeout ?? 10_000,
        requestsTimeout: options.requestsTimeout ?? 5000,
        errorHandler: options.errorHandler,
      })
    : createUpstreamAdapter(pool, {
        channelPrefix: id,
        tableName: id,
        heartbeatInterval: HEARTBEAT_INTERVAL,
        heartbeatTimeout: options.heartbeatTimeout ?? 10_000,
        errorHandler: options.errorHandler,
      })

/** Starts one server per entry of `kinds`, in order, and waits until they all see each other. */
export const startMixedCluster = async (
  name: string,
  kinds: ReadonlyArray<Kind>,
  options: MixedClusterOptions = {},
): Promise<MixedCluster> => {
  const id = suiteId(name)
  const connection =
    options.connectionString !== undefined ? { connectionString: options.connectionString } : {}
  const admin = makePool({ ...connection, max: 2 })
  const pools: Array<pg.Pool> = [admin]
  const nodes: Array<MixedNode> = []
  const closed = new Set<MixedNode>()
  const clients = new Set<ClientSocket>()
  const running = () => nodes.filter((node) => !closed.has(node))

  const addNode = async (kind: Kind) => {
    const index = nodes.length
    const pool = makePool({
      ...connection,
      max: kind === "ours" ? 4 : 2,
      ...options.poolOptions?.(index, kind),
    })
    pools.push(pool)
    const errors: Array<Error> = []
    const server = await startServer({
      adapter: makeAdapter(kind, pool, id, {
        ...(options.heartbeatTimeout !== undefined
          ? { heartbeatTimeout: options.heartbeatTimeout }
          : {}),
        ...(options.requestsTimeout !== undefined
          ? { requestsTimeout: options.requestsTimeout }
          : {}),
        ...(options.oursOptions !== undefined ? { oursOptions: options.oursOptions } : {}),
        errorHandler: (error) => void errors.push(error),
      }),
    })
    const node: MixedNode = {
      kind,
      server,
      io: server.io,
      pool,
      errors,
      uid: (nsp = "/") => (server.io.of(nsp).adapter as unknown as { uid: string }).uid,
    }
    nodes.push(node)
    return node
  }

  const closeNode = async (node: MixedNode) => {
    closed.add(node)
    await node.server.close()
  }

  const connect = async (index: number, clientOptions?: ClientOptions) => {
    const client = await connectClient(nodes[index]!.server.url, clientOptions)
    clients.add(client)
    return client
  }

  const disconnectClients = async (namespaces: ReadonlyArray<string> = ["/"]) => {
    for (const client of clients) client.disconnect()
    clients.clear()
    await eventually(
      () =>
        running().every(({ io }) =>
          namespaces.every((nsp) => !io._nsps.has(nsp) || io.of(nsp).sockets.size === 0),
        ),
      { message: "servers dropped the disconnected sockets" },
    )
  }

  const waitForMembers = (nsp = "/", count?: number, timeout = 10_000) =>
    eventually(
      async () => {
        const live = running()
        const counts = await Promise.all(live.map(({ io }) => io.of(nsp).adapter.serverCount()))
        return counts.every((n) => n === (count ?? live.length))
      },
      { timeout, message: `every server counts the cluster of ${nsp}` },
    )

  let closing: Promise<void> | undefined
  const close = () =>
    (closing ??= (async () => {
      for (const client of clients) client.disconnect()
      clients.clear()
      await Promise.allSettled(nodes.map((node) => node.server.close()))
      await dropTable(admin, id).catch(() => {})
      await Promise.allSettled(pools.map((pool) => pool.end()))
    })())

  try {
    await createAttachmentTable(admin, id)
    for (const kind of kinds) await addNode(kind)
    await waitForMembers()
  } catch (error) {
    await close()
    throw error
  }
  return {
    id,
    nodes,
    admin,
    addNode,
    closeNode,
    running,
    connect,
    disconnectClients,
    waitForMembers,
    close,
  }
}

/** `[ours, 0.5.0, ours]` → `"[ours, 0.5.0, ours]"`, for test names. */
export const layoutName = (kinds: ReadonlyArray<Kind>): string => `[${kinds.join(", ")}]`

/**
 * The byte length of the notification JSON a server (ours or 0.5.0, same layout) sends for
 * `io.to(rooms).emit(ev, arg)` in namespace `nsp` with adapter uid `uid`.
 */
export const broadcastNotificationBytes = (
  uid: string,
  ev: string,
  arg: string,
  nsp = "/",
  rooms: ReadonlyArray<string> = [],
): number =>
  Buffer.byteLength(
    JSON.stringify({
      type: 3,
      data: { packet: { type: 2, data: [ev, arg] }, opts: { rooms, except: [], flags: {} } },
      uid,
      nsp,
    }),
  )

// Multi-byte characters (2, 3 and 4 UTF-8 bytes) so that the sizes do not only hold for ASCII.
const WIDE = "é€😀"

/**
 * A string argument that makes the broadcast's notification JSON exactly `bytes` bytes long
 * (see {@link broadcastNotificationBytes}); it holds multi-byte characters.
 */
export const argumentForNotificationBytes = (
  bytes: number,
  uid: string,
  ev: string,
  nsp = "/",
): string => {
  const fill = bytes - broadcastNotificationBytes(uid, ev, WIDE, nsp)
  if (fill < 0) throw new Error(`${bytes} bytes is too small a notification`)
  const arg = `${WIDE}${"x".repeat(fill)}`
  const actual = broadcastNotificationBytes(uid, ev, arg, nsp)
  if (actual !== bytes) throw new Error(`made ${actual} bytes instead of ${bytes}`)
  return arg
}
