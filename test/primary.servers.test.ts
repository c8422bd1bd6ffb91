/**
 * `setupPrimary(pools)` over several PostgreSQL servers (issue 14): a node:cluster primary
 * (`fixtures/primary.ts`, two workers on `@socket.io/cluster-adapter`) and a plain server of ours,
 * both given the pools of the same two embedded PostgreSQL servers. Each namespace is relayed
 * through the server that holds its channel, as `createAdapter(pools)` places it: broadcasts and
 * requests cross between the workers and the plain server in every namespace.
 */
import pg from "pg"
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { createAdapter } from "../src/index.js"
import { type ChildScript, killFixture, runFixture, watchProcessFaults } from "./fixtures/faults.js"
import {
  connectClient,
  eventually,
  startServer,
  type TestServer,
  waitFor,
} from "./utils/cluster.js"
import {
  namespaceHome,
  startPrivatePostgres,
  type PrivatePostgres,
  openPools,
} from "./utils/privatePostgres.js"

const PREFIX = "primaryservers"
const NAMESPACES = ["/", "/p0", "/p1", "/p2", "/p3", "/p4", "/p5"]
const TIMING = { heartbeatInterval: 300, heartbeatTimeout: 3000, requestsTimeout: 4000 }

describe("setupPrimary over 2 PostgreSQL servers, with a plain server", () => {
  const watcher = watchProcessFaults()
  let databases: Array<PrivatePostgres>
  const pools: Array<pg.Pool> = []
  let primary: ChildScript
  let plain: TestServer
  /** Each worker's port. */
  let workerPorts: Array<number>
  const clients: Array<ClientSocket> = []
  let home: (nsp: string) => number

  beforeAll(async () => {
    databases = await Promise.all([startPrivatePostgres(), startPrivatePostgres()])
    const poolList = openPools(databases, pools)
    home = namespaceHome(poolList, PREFIX)
    primary = runFixture("primary.ts", {
      DATABASE_URL: databases[0]!.url,
      DATABASE_URLS: databases.map((db) => db.url).join(","),
      NAMESPACES: NAMESPACES.join(","),
      CHANNEL_PREFIX: PREFIX,
      TABLE_NAME: "socket_io_attachments",
      WORKERS: "2",
      HEARTBEAT_INTERVAL: String(TIMING.heartbeatInterval),
      HEARTBEAT_TIMEOUT: String(TIMING.heartbeatTimeout),
      REQUESTS_TIMEOUT: String(TIMING.requestsTimeout),
    })
    await primary.waitForMessage("ready")
    workerPorts = primary.messages
      .filter((message) => message["event"] === "worker")
      .map((line) => line["port"] as number)
    plain = await startServer({
      adapter: createAdapter(poolList, {
        channelPrefix: PREFIX,
        ...TIMING,
        errorHandler: () => {},
      }),
    })
    for (const nsp of NAMESPACES) {
      plain.io
        .of(nsp)
        .on("maybe", (_silent: unknown, ack: (answer: unknown) => void) =>
          ack({ from: "plain", nsp }),
        )
    }
    await eventually(
      async () => {
        const counts = await Promise.all(
          NAMESPACES.map((nsp) => plain.io.of(nsp).adapter.serverCount()),
        )
        return counts.every((count) => count === 3)
      },
      { timeout: 20_000, message: "the plain server counts itself and both workers everywhere" },
    )
  }, 90_000)

  afterEach(() => {
    expect(watcher.faults).toEqual([])
  })

  afterAll(async () => {
    watcher.stop()
    for (const client of clients.splice(0)) client.disconnect()
    await killFixture(primary)
    await plain?.close()
    await Promise.all(pools.map((pool) => pool.end()))
    await Promise.all((databases ?? []).map((db) => db.destroy()))
  })

  it("relays every namespace through its own server, both ways: broadcasts and requests", async () => {
    // Namespaces on both servers: a relay on one server only would lose the others.
    expect(new Set(NAMESPACES.map(home)).size).toBe(2)
    for (const nsp of NAMESPACES) {
      const onWorkers = await Promise.all(
        workerPorts.map((port) => connectClient(`http://127.0.0.1:${port}`, { nsp })),
      )
      const onPlain = await connectClient(plain.url, { nsp })
      clients.push(...onWorkers, onPlain)

      // The plain server to the workers' clients.
      const heard = onWorkers.map((client) => waitFor(client, "down"))
      plain.io.of(nsp).emit("down", nsp)
      for (const [said] of await Promise.all(heard)) expect(said).toBe(nsp)

      // A worker to the plain server's client.
      const up = waitFor(onPlain, "up")
      onWorkers[0]!.emit("emit", null, "up", nsp)
      expect((await up)[0]).toBe(nsp)

      // The plain server asks the workers: every socket, and one answer per worker.
      const sockets = await plain.io.of(nsp).fetchSockets()
      expect(sockets.map((s) => s.id).sort()).toEqual(
        [...onWorkers, onPlain].map((client) => client.id!).sort(),
      )
      const answers = await plain.io.of(nsp).serverSideEmitWithAck("maybe", [])
      expect(answers).toHaveLength(2)

      // A worker asks the cluster: the other worker, and the plain server through the relay.
      const asked = (await onWorkers[1]!.timeout(10_000).emitWithAck("ask", "maybe", [])) as {
        ok?: Array<{ from: string; nsp?: string }>
        error?: string
      }
      expect(asked.error).toBeUndefined()
      expect(asked.ok).toHaveLength(2)
      expect(asked.ok).toContainEqual({ from: "plain", nsp })
    }
  })
})
