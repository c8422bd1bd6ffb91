/**
 * The one builder of test clusters: real Socket.IO servers on our adapter and on
 * `@socket.io/postgres-adapter` 0.5.0 side by side, in this process or in child processes
 * (`fixtures/node.ts`), all on one suite's channels and tables, isolated from the other suites by
 * a unique id. Each node gets a pool of its own (application name `<id>_<index>`, so that its
 * backends can be found in `pg_stat_activity`) and records what its adapter reported.
 *
 * 0.5.0 neither creates its table nor quotes its name: the table is created here first when a
 * 0.5.0 node joins. It keeps one pool connection for LISTEN and publishes concurrently on the rest,
 * so a 0.5.0 node's pool has one connection besides: its publishes then commit in send order. It
 * sends `INITIAL_HEARTBEAT` before it listens, so it may only see the others at their next
 * heartbeat: `waitForMembers` waits until every node counts everyone.
 */
import type pg from "pg"
import type { Server, ServerOptions } from "socket.io"
import type { Socket as ClientSocket } from "socket.io-client"
import type { PostgresAdapter } from "../../src/index.js"
import { type ChildScript, killFixture, runFixture } from "../fixtures/faults.js"
import {
  type Kind,
  makeAdapter,
  type NodeOptions,
  type NodeSettings,
  resolveOptions,
} from "./adapters.js"
import { type ClientOptions, connectClient, eventually, startServer } from "./cluster.js"
import { createAttachmentTable, databaseUrl, dropTable, makePool, suiteId } from "./postgres.js"

export type { Kind } from "./adapters.js"

/** One in-process node of a cluster. */
export interface Node {
  /** Its place in `cluster.nodes` (start order). */
  readonly index: number
  readonly kind: Kind
  readonly io: Server
  /** `http://127.0.0.1:<port>` */
  readonly url: string
  /** The node's own pool (ended by the cluster's `close`, unless the test passed it). */
  readonly pool: pg.Pool
  /** The `application_name` of its pool's connections and of its LISTEN connection. */
  readonly applicationName: string
  /** What the adapter passed to its `errorHandler`. */
  readonly errors: Array<Error>
  /** The adapter's uid in namespace `nsp` (default `/`). */
  readonly uid: (nsp?: string) => string
  /** Our adapter of namespace `nsp` (default `/`); only on nodes of ours. */
  readonly adapter: (nsp?: string) => PostgresAdapter
}

/** A node running `fixtures/node.ts` in a child process; kill it to crash the node. */
export interface ChildNode extends ChildScript {
  readonly kind: Kind
  /** `http://127.0.0.1:<port>` */
  readonly url: string
  /** The adapter's uid in `/`. */
  readonly uid: string
}

/** Options of one node, over the cluster's. */
export interface NodeOverrides {
  /** A pool of the test's own (not ended by the cluster), instead of a new one. */
  readonly pool?: pg.Pool
  /** Options of this node only, over the cluster's. */
  readonly options?: NodeOptions
}

/** Options of a child-process node. */
export interface ChildOverrides {
  /** Connection state recovery on, with this `maxDisconnectionDuration`. */
  readonly recovery?: number
  /** Options of this node only, over the cluster's. */
  readonly options?: NodeOptions
}

/** Options of {@link startCluster}. */
export interface ClusterOptions {
  /** How many nodes of ours, or the kind of each node in start order. Default 3 of ours. */
  readonly nodes?: number | ReadonlyArray<Kind>
  /**
   * Adapter options of every node, over the suite's names and a 300 ms heartbeat; or a function of
   * the suite's id that returns them (e.g. table names made from it).
   */
  readonly options?: NodeOptions | ((id: string) => NodeOptions)
  /** Socket.IO server options of every in-process node (e.g. `connectionStateRecovery`). */
  readonly serverOptions?: Partial<ServerOptions>
  /** Another database (e.g. a private server's url); default the shared one. */
  readonly connectionString?: string
  /** Extra pool options of each in-process node (e.g. another user's connection string). */
  readonly poolOptions?: (index: number, kind: Kind) => pg.PoolConfig
  /** Wait until every node counts every node before returning. Default true. */
  readonly waitForMembers?: boolean
}

/** A running cluster. */
export interface Cluster {
  /** The suite's id: channel prefix, attachments table and recovery table prefix. */
  readonly id: string
  /** What every node is built with (for emitters and child nodes). */
  readonly settings: NodeSettings
  /** In-process nodes in start order (closed ones stay: see `running`). */
  readonly nodes: Array<Node>
  /** A pool of its own, for the test's own queries. */
  readonly admin: pg.Pool
  /** In-process nodes not closed, in start order. */
  readonly running: () => Array<Node>
  /** Starts one more in-process node of `kind` (default ours). */
  readonly addNode: (kind?: Kind, overrides?: NodeOverrides) => Promise<Node>
  /** Closes a node (`io.close()`: its adapters announce `ADAPTER_CLOSE`); its pool stays open. */
  readonly closeNode: (node: Node) => Promise<void>
  /** Starts a node in a child process and waits until it listens; killed by `close` at the latest. */
  readonly spawnNode: (kind?: Kind, overrides?: ChildOverrides) => Promise<ChildNode>
  /** Connects a client to a node (an index of `nodes`, or any node); tracked for cleanup. */
  readonly connect: (
    node: number | { readonly url: string },
    options?: ClientOptions,
  ) => Promise<ClientSocket>
  /** Connects one client to every running node, in start order. */
  readonly connectEach: (options?: ClientOptions) => Promise<Array<ClientSocket>>
  /**
   * Disconnects every tracked client and waits until no running node holds a socket of them in
   * `namespaces` (default `/`).
   */
  readonly disconnectClients: (namespaces?: ReadonlyArray<string>) => Promise<void>
  /** Waits until every running node counts `count` (default: all running) nodes on `nsp`. */
  readonly waitForMembers: (nsp?: string, count?: number, timeout?: number) => Promise<void>
  /** Closes clients and nodes, kills child nodes, drops the tables, ends the pools. Idempotent. */
  readonly close: () => Promise<void>
}

/**
 * Starts a cluster of `options.nodes` on fresh channels and tables named after `name`, and (unless
 * told not to) waits until its nodes see each other.
 */
export const startCluster = async (
  name: string,
  options: ClusterOptions = {},
): Promise<Cluster> => {
  const id = suiteId(name)
  const settings: NodeSettings = {
    id,
    options: {
      ...((typeof options.options === "function" ? options.options(id) : options.options) ?? {}),
    },
  }
  const connectionString = options.connectionString ?? databaseUrl()
  const admin = makePool({ connectionString, max: 2 })
  const ownPools: Array<pg.Pool> = [admin]
  const nodes: Array<Node> = []
  const children: Array<ChildScript> = []
  const closed = new Set<Node>()
  /** How to close each node's server (idempotent). */
  const servers = new Map<Node, () => Promise<void>>()
  const clients = new Set<ClientSocket>()
  const running = () => nodes.filter((node) => !closed.has(node))
  // 0.5.0 needs its table to exist. Ours may be creating it at the same moment (`CREATE TABLE IF
  // NOT EXISTS` races on the catalog): a failure is fine if the table is there afterwards.
  const upstreamTable = async (nodeSettings: NodeSettings) => {
    const table = resolveOptions(nodeSettings).tableName!
    await createAttachmentTable(admin, table).catch(async (error) => {
      const { rows } = await admin.query("SELECT to_regclass($1) AS t", [table])
      if (rows[0]?.t === null) throw error
    })
  }

  const addNode = async (kind: Kind = "ours", overrides: NodeOverrides = {}) => {
    const index = nodes.length
    const nodeSettings = { id, options: { ...settings.options, ...overrides.options } }
    if (kind === "0.5.0") await upstreamTable(nodeSettings)
    let pool = overrides.pool
    if (pool === undefined) {
      pool = makePool({
        connectionString,
        max: kind === "ours" ? 4 : 2,
        application_name: `${id}_${index}`,
        ...options.poolOptions?.(index, kind),
      })
      ownPools.push(pool)
    }
    const applicationName = String(
      (pool as unknown as { options: pg.PoolConfig }).options.application_name,
    )
    const errors: Array<Error> = []
    const server = await startServer({
      adapter: makeAdapter(kind, pool, nodeSettings, (error) => void errors.push(error)),
      ...(options.serverOptions !== undefined ? { serverOptions: options.serverOptions } : {}),
    })
    const adapterOf = (nsp = "/") => server.io.of(nsp).adapter as unknown as PostgresAdapter
    const node: Node = {
      index,
      kind,
      io: server.io,
      url: server.url,
      pool,
      applicationName,
      errors,
      uid: (nsp = "/") => (adapterOf(nsp) as unknown as { uid: string }).uid,
      adapter: (nsp = "/") => {
        if (kind !== "ours") throw new Error(`node ${index} runs 0.5.0, not our adapter`)
        return adapterOf(nsp)
      },
    }
    nodes.push(node)
    servers.set(node, server.close)
    return node
  }

  const closeNode = async (node: Node) => {
    closed.add(node)
    await servers.get(node)!()
  }

  const spawnNode = async (kind: Kind = "ours", overrides: ChildOverrides = {}) => {
    const nodeSettings = { id, options: { ...settings.options, ...overrides.options } }
    if (kind === "0.5.0") await upstreamTable(nodeSettings)
    const script = runFixture("node.ts", {
      DATABASE_URL: connectionString,
      NODE_KIND: kind,
      NODE_SETTINGS: JSON.stringify(nodeSettings),
      POOL_MAX: kind === "ours" ? "4" : "2",
      APPLICATION_NAME: `${id}_child${children.length}`,
      ...(overrides.recovery !== undefined ? { RECOVERY_MS: String(overrides.recovery) } : {}),
    })
    children.push(script)
    const ready = await script.waitForMessage("ready")
    return {
      ...script,
      kind,
      url: `http://127.0.0.1:${ready["port"]}`,
      uid: String(ready["uid"]),
    }
  }

  const connect = async (
    node: number | { readonly url: string },
    clientOptions?: ClientOptions,
  ) => {
    const url = typeof node === "number" ? nodes[node]!.url : node.url
    const client = await connectClient(url, clientOptions)
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
      { message: "nodes dropped the disconnected sockets" },
    )
  }

  const waitForMembers = (nsp = "/", count?: number, timeout = 10_000) =>
    eventually(
      async () => {
        const live = running()
        const counts = await Promise.all(live.map(({ io }) => io.of(nsp).adapter.serverCount()))
        const expected = count ?? live.length
        if (counts.every((n) => n === expected)) return true
        // The counts, by node and kind, say which node is wrong when it times out.
        const seen = live.map((node, i) => `${node.index} (${node.kind}): ${counts[i]}`)
        throw new Error(`expected ${expected} everywhere, counted ${seen.join(", ")}`)
      },
      { timeout, message: `every node counts the cluster of ${nsp}` },
    )

  let closing: Promise<void> | undefined
  const close = () =>
    (closing ??= (async () => {
      for (const client of clients) client.disconnect()
      clients.clear()
      await Promise.allSettled(children.map((child) => killFixture(child)))
      await Promise.allSettled([...servers.values()].map((closeServer) => closeServer()))
      const resolved = resolveOptions(settings)
      const prefix = resolved.recoveryTablePrefix!
      for (const table of [
        resolved.tableName!,
        `${prefix}_packets`,
        `${prefix}_sessions`,
        `${prefix}_offsets`,
      ]) {
        await dropTable(admin, table).catch(() => {})
      }
      await Promise.allSettled(ownPools.map((pool) => pool.end()))
    })())

  try {
    const kinds =
      typeof options.nodes === "number"
        ? Array.from({ length: options.nodes }, () => "ours" as const)
        : (options.nodes ?? ["ours", "ours", "ours"])
    // Before any node: ours would otherwise be creating it while 0.5.0 needs it.
    if (kinds.includes("0.5.0")) await upstreamTable(settings)
    for (const kind of kinds) await addNode(kind)
    if (options.waitForMembers !== false && nodes.length > 0) await waitForMembers()
  } catch (error) {
    await close()
    throw error
  }
  return {
    id,
    settings,
    nodes,
    admin,
    running,
    addNode,
    closeNode,
    spawnNode,
    connect,
    connectEach: (clientOptions) =>
      Promise.all(running().map((node) => connect(node, clientOptions))),
    disconnectClients,
    waitForMembers,
    close,
  }
}
