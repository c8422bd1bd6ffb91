/**
 * A cluster of real Socket.IO servers running our adapter over the shared PostgreSQL, each server on
 * a pool of its own, isolated from other suites by a unique channel prefix and attachments table.
 */
import type pg from "pg"
import type { ServerOptions } from "socket.io"
import type { Socket as ClientSocket } from "socket.io-client"
import { createAdapter, type AdapterOptions, type PostgresAdapter } from "../../src/index.js"
import {
  connectClient,
  eventually,
  startServer,
  type ClientOptions,
  type TestServer,
} from "./cluster.js"
import { dropTable, makePool, suiteId } from "./postgres.js"

/** Servers on our adapter, clients tracked for cleanup, an extra pool for assertions. */
export interface AdapterCluster {
  /** The suite's channel prefix and table name. */
  readonly id: string
  /** Running servers, in start order (closed ones stay, check `closed`). */
  readonly servers: Array<TestServer>
  /** A pool of its own, for the test's own queries. */
  readonly pool: pg.Pool
  /** Starts one more server on the same channels and table. */
  readonly addServer: () => Promise<TestServer>
  /** Closes one server (its adapters publish `ADAPTER_CLOSE`). */
  readonly closeServer: (server: TestServer) => Promise<void>
  /** Connects a client to `servers[index]`; disconnected by `disconnectClients` and `close`. */
  readonly connect: (index: number, options?: ClientOptions) => Promise<ClientSocket>
  /** Connects one client to every running server (index order). */
  readonly connectEach: (options?: ClientOptions) => Promise<Array<ClientSocket>>
  /**
   * Disconnects every tracked client and waits until no running server holds a socket of them in
   * `namespaces` (default `/`).
   */
  readonly disconnectClients: (namespaces?: ReadonlyArray<string>) => Promise<void>
  /** Waits until every running server counts `count` (default: all running) servers on `nsp`. */
  readonly waitForMembers: (nsp?: string, count?: number) => Promise<void>
  /** The adapter of `nsp` on `server`. */
  readonly adapter: (server: TestServer, nsp?: string) => PostgresAdapter
  /** Closes clients and servers, drops the table, ends the pools. */
  readonly close: () => Promise<void>
}

/** Starts `size` servers with `createAdapter(pool, { channelPrefix: id, tableName: id, ... })`. */
export const startAdapterCluster = async (
  name: string,
  size = 3,
  options: AdapterOptions = {},
  serverOptions: Partial<ServerOptions> = {},
): Promise<AdapterCluster> => {
  const id = suiteId(name)
  const pool = makePool({ max: 2 })
  const pools: Array<pg.Pool> = [pool]
  const servers: Array<TestServer> = []
  const closed = new Set<TestServer>()
  const clients = new Set<ClientSocket>()
  const running = () => servers.filter((server) => !closed.has(server))

  const addServer = async () => {
    const serverPool = makePool({ max: 4 })
    pools.push(serverPool)
    const server = await startServer({
      adapter: createAdapter(serverPool, {
        channelPrefix: id,
        tableName: id,
        heartbeatInterval: 300,
        recoveryTablePrefix: id,
        ...options,
      }),
      serverOptions,
    })
    servers.push(server)
    return server
  }

  const closeServer = async (server: TestServer) => {
    closed.add(server)
    await server.close()
  }

  const connect = async (index: number, clientOptions?: ClientOptions) => {
    const client = await connectClient(servers[index]!.url, clientOptions)
    clients.add(client)
    return client
  }

  const disconnectClients = async (namespaces: ReadonlyArray<string> = ["/"]) => {
    for (const client of clients) client.disconnect()
    clients.clear()
    await eventually(
      () =>
        running().every((server) =>
          namespaces.every(
            (nsp) => !server.io._nsps.has(nsp) || server.io.of(nsp).sockets.size === 0,
          ),
        ),
      { message: "servers dropped the disconnected sockets" },
    )
  }

  const adapter = (server: TestServer, nsp = "/") =>
    server.io.of(nsp).adapter as unknown as PostgresAdapter

  const waitForMembers = (nsp = "/", count?: number) =>
    eventually(
      async () => {
        const live = running()
        const counts = await Promise.all(live.map((server) => adapter(server, nsp).serverCount()))
        return counts.every((n) => n === (count ?? live.length))
      },
      { timeout: 10_000, message: `every server counts the cluster of ${nsp}` },
    )

  let closing: Promise<void> | undefined
  const close = () =>
    (closing ??= (async () => {
      for (const client of clients) client.disconnect()
      clients.clear()
      await Promise.allSettled(servers.map((server) => server.close()))
      for (const table of [id, `${id}_packets`, `${id}_sessions`, `${id}_offsets`]) {
        await dropTable(pool, table).catch(() => {})
      }
      await Promise.allSettled(pools.map((p) => p.end()))
    })())

  try {
    for (let i = 0; i < size; i++) await addServer()
  } catch (error) {
    await close()
    throw error
  }
  return {
    id,
    servers,
    pool,
    addServer,
    closeServer,
    connect,
    connectEach: (clientOptions) =>
      Promise.all(running().map((server) => connect(servers.indexOf(server), clientOptions))),
    disconnectClients,
    waitForMembers,
    adapter,
    close,
  }
}
