/**
 * Guarantee 3 (Postgres down), the LISTEN side: a terminated LISTEN backend is replaced by the
 * adapter itself, with backoff, and cross-server delivery resumes; the drop is reported; the
 * LISTEN connection never takes (or leaks) a slot of the caller's pool.
 */
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import type pg from "pg"
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import * as Metrics from "../src/Metrics.js"
import {
  backendCount,
  deliveredEventually,
  listenerPids,
  watchProcessFaults,
} from "./fixtures/faults.js"
import { fastOptions } from "./utils/adapters.js"
import { eventually } from "./utils/cluster.js"
import { type Cluster, startCluster } from "./utils/nodes.js"
import { makePool, type PrivatePostgres, startPrivatePostgres } from "./utils/postgres.js"

const SERVERS = 3
const counter = (metric: typeof Metrics.listenerDrops) =>
  Effect.runSync(Metric.value(metric)).count as number

describe("when the LISTEN backend is terminated", () => {
  const watcher = watchProcessFaults()
  let postgres: PrivatePostgres
  let admin: pg.Pool
  let cluster: Cluster
  let clients: Array<ClientSocket>
  const appName = (i: number) => cluster.nodes[i]!.applicationName

  /** Terminates the LISTEN backend of server `i` and waits until a new one has replaced it. */
  const killListener = async (i: number): Promise<void> => {
    const [pid] = await listenerPids(admin, appName(i))
    expect(pid, `server ${i} has a LISTEN backend`).toBeDefined()
    await admin.query("SELECT pg_terminate_backend($1)", [pid])
    await eventually(
      async () => {
        const pids = await listenerPids(admin, appName(i))
        return pids.length === 1 && pids[0] !== pid
      },
      { timeout: 10_000, message: `server ${i} listens again on a new backend` },
    )
  }

  beforeAll(async () => {
    postgres = await startPrivatePostgres()
    cluster = await startCluster("faults_listener", {
      nodes: SERVERS,
      options: fastOptions,
      connectionString: postgres.url,
    })
    admin = cluster.admin
    clients = await cluster.connectEach()
  })

  afterEach(() => {
    expect(watcher.faults).toEqual([])
  })

  afterAll(async () => {
    watcher.stop()
    await cluster?.close()
    await postgres?.destroy()
  })

  it("reconnects by itself, reports the drop and resumes cross-server delivery", async () => {
    const drops = counter(Metrics.listenerDrops)
    const connects = counter(Metrics.listenerConnects)
    const errors = cluster.nodes[1]!.errors
    errors.length = 0

    await killListener(1)

    await deliveredEventually(cluster.nodes[0]!.io, clients[1]!, "after-one-kill")
    await deliveredEventually(cluster.nodes[1]!.io, clients[2]!, "from-the-victim")
    expect(errors.map((error) => error.message)).toContainEqual(
      expect.stringMatching(/LISTEN connection lost/),
    )
    expect(counter(Metrics.listenerDrops)).toBeGreaterThan(drops)
    expect(counter(Metrics.listenerConnects)).toBeGreaterThan(connects)
  })

  it("survives its LISTEN backend being terminated several times in a row", async () => {
    const drops = counter(Metrics.listenerDrops)
    for (let round = 0; round < 5; round++) await killListener(2)
    expect(counter(Metrics.listenerDrops) - drops).toBeGreaterThanOrEqual(5)

    await deliveredEventually(cluster.nodes[0]!.io, clients[2]!, "after-five-kills")
    await deliveredEventually(cluster.nodes[2]!.io, clients[0]!, "back-from-2")
  })

  it("recovers when every server's LISTEN backend is terminated at once, repeatedly", async () => {
    for (let round = 0; round < 3; round++) {
      // Kill whatever is listening right now, without waiting for the reconnections.
      await admin.query(
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()`,
      )
    }
    await eventually(
      async () => {
        const counts = await Promise.all(
          cluster.nodes.map((_, i) => listenerPids(admin, appName(i))),
        )
        return counts.every((pids) => pids.length === 1)
      },
      { timeout: 10_000, message: "every server listens again" },
    )
    for (let from = 0; from < SERVERS; from++) {
      const to = (from + 1) % SERVERS
      await deliveredEventually(
        cluster.nodes[from]!.io,
        clients[to]!,
        `all-killed-${from}-to-${to}`,
      )
    }
    await cluster.waitForMembers()
  })

  it("holds no pool slot for its LISTEN connection and leaks none across reconnections", async () => {
    const pool = cluster.nodes[0]!.pool
    for (let round = 0; round < 4; round++) {
      await killListener(0)
      await deliveredEventually(cluster.nodes[1]!.io, clients[0]!, `slot-check-${round}`)
    }
    // Every pool client is back in the pool: nothing was checked out and forgotten.
    await eventually(() => pool.idleCount === pool.totalCount && pool.waitingCount === 0, {
      message: "every pool client is idle",
    })
    expect(pool.totalCount).toBeLessThanOrEqual(4)
    // On the server: the pool's connections plus exactly one LISTEN connection, not one per kill.
    await eventually(async () => (await backendCount(admin, appName(0))) === pool.totalCount + 1, {
      message: "backends = pool connections + 1 LISTEN connection",
    })
    expect(await listenerPids(admin, appName(0))).toHaveLength(1)
  })
})

describe("after its LISTEN connection comes back", () => {
  // Heartbeats a minute apart: within the test, only an INITIAL_HEARTBEAT can make nodes meet.
  const options = { heartbeatInterval: 60_000, heartbeatTimeout: 120_000, reconnectMaxDelay: 500 }
  const ROLE = "late_listener"
  let postgres: PrivatePostgres
  let cluster: Cluster

  beforeAll(async () => {
    postgres = await startPrivatePostgres()
    // Node 0 logs in with a role of its own: with its login refused, its LISTEN connection stays
    // down for as long as the test wants, while its pool's open connections go on.
    const url = new URL(postgres.url)
    url.username = ROLE
    url.password = ROLE
    const setup = makePool({ connectionString: postgres.url, max: 1 })
    await setup.query(`CREATE ROLE ${ROLE} LOGIN SUPERUSER PASSWORD '${ROLE}'`)
    await setup.end()
    cluster = await startCluster("faults_relisten", {
      nodes: 2,
      options,
      connectionString: postgres.url,
      poolOptions: (i) => (i === 0 ? { connectionString: url.toString() } : {}),
    })
  })

  afterAll(async () => {
    await cluster?.close()
    await postgres?.destroy()
  })

  it("announces itself again (INITIAL_HEARTBEAT): it and a server started while it could not listen see each other at once", async () => {
    const { admin } = cluster
    const [a, b] = cluster.nodes
    await admin.query(`ALTER ROLE ${ROLE} NOLOGIN`)
    const [pid] = await listenerPids(admin, a!.applicationName)
    expect(pid, "node 0 has a LISTEN backend").toBeDefined()
    await admin.query("SELECT pg_terminate_backend($1)", [pid])
    await eventually(async () => (await listenerPids(admin, a!.applicationName)).length === 0, {
      message: "node 0 does not listen",
    })

    // A server joins meanwhile: node 1 answers its INITIAL_HEARTBEAT, node 0 hears neither.
    const c = await cluster.addNode()
    await eventually(
      async () =>
        (await c.io.of("/").adapter.serverCount()) === 2 &&
        (await b!.io.of("/").adapter.serverCount()) === 3,
      { message: "the new server and node 1 see each other" },
    )
    expect(await a!.io.of("/").adapter.serverCount()).toBe(2)

    await admin.query(`ALTER ROLE ${ROLE} LOGIN`)
    // Long before the next heartbeat: node 0's INITIAL_HEARTBEAT after its new LISTEN is answered.
    await cluster.waitForMembers("/", 3)
  })
})
