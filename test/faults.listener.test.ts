/**
 * Guarantee 3 (Postgres down), the LISTEN side: a terminated LISTEN backend is replaced by the
 * adapter itself, with backoff, and cross-server delivery resumes; the drop is reported; the
 * LISTEN connection never takes (or leaks) a slot of the caller's pool.
 */
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import type pg from "pg"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { createAdapter } from "../src/index.js"
import * as Metrics from "../src/Metrics.js"
import {
  backendCount,
  clusterHasSize,
  deliveredEventually,
  fastOptions,
  listenerPids,
  watchProcessFaults,
} from "./fixtures/faults.js"
import { eventually, startCluster, type TestCluster } from "./utils/cluster.js"
import { makePool, type PrivatePostgres, startPrivatePostgres, suiteId } from "./utils/postgres.js"

const SERVERS = 3
const id = suiteId("faults_listener")
const appName = (i: number) => `${id}_${i}`
const counter = (metric: typeof Metrics.listenerDrops) =>
  Effect.runSync(Metric.value(metric)).count as number

describe("when the LISTEN backend is terminated", () => {
  const watcher = watchProcessFaults()
  const errors: Array<Array<Error>> = Array.from({ length: SERVERS }, () => [])
  const pools: Array<pg.Pool> = []
  let postgres: PrivatePostgres
  let admin: pg.Pool
  let cluster: TestCluster

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
    admin = makePool({ connectionString: postgres.url, max: 2 })
    for (let i = 0; i < SERVERS; i++) {
      pools.push(makePool({ connectionString: postgres.url, max: 4, application_name: appName(i) }))
    }
    cluster = await startCluster(SERVERS, (i) =>
      createAdapter(pools[i]!, {
        channelPrefix: id,
        tableName: id,
        ...fastOptions,
        errorHandler: (error) => void errors[i]!.push(error),
      }),
    )
    await clusterHasSize(cluster.servers, SERVERS)
  })

  afterEach(() => {
    expect(watcher.faults).toEqual([])
  })

  afterAll(async () => {
    watcher.stop()
    await cluster?.close()
    await Promise.all([...pools, admin].filter(Boolean).map((pool) => pool.end()))
    await postgres?.destroy()
  })

  it("reconnects by itself, reports the drop and resumes cross-server delivery", async () => {
    const drops = counter(Metrics.listenerDrops)
    const connects = counter(Metrics.listenerConnects)
    errors[1]!.length = 0

    await killListener(1)

    await deliveredEventually(cluster.servers[0]!.io, cluster.clients[1]!, "after-one-kill")
    await deliveredEventually(cluster.servers[1]!.io, cluster.clients[2]!, "from-the-victim")
    expect(errors[1]!.map((error) => error.message)).toContainEqual(
      expect.stringMatching(/LISTEN connection lost/),
    )
    expect(counter(Metrics.listenerDrops)).toBeGreaterThan(drops)
    expect(counter(Metrics.listenerConnects)).toBeGreaterThan(connects)
  })

  it("survives its LISTEN backend being terminated several times in a row", async () => {
    const drops = counter(Metrics.listenerDrops)
    for (let round = 0; round < 5; round++) await killListener(2)
    expect(counter(Metrics.listenerDrops) - drops).toBeGreaterThanOrEqual(5)

    await deliveredEventually(cluster.servers[0]!.io, cluster.clients[2]!, "after-five-kills")
    await deliveredEventually(cluster.servers[2]!.io, cluster.clients[0]!, "back-from-2")
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
          cluster.servers.map((_, i) => listenerPids(admin, appName(i))),
        )
        return counts.every((pids) => pids.length === 1)
      },
      { timeout: 10_000, message: "every server listens again" },
    )
    for (let from = 0; from < SERVERS; from++) {
      const to = (from + 1) % SERVERS
      await deliveredEventually(
        cluster.servers[from]!.io,
        cluster.clients[to]!,
        `all-killed-${from}-to-${to}`,
      )
    }
    await clusterHasSize(cluster.servers, SERVERS)
  })

  it("holds no pool slot for its LISTEN connection and leaks none across reconnections", async () => {
    const pool = pools[0]!
    for (let round = 0; round < 4; round++) {
      await killListener(0)
      await deliveredEventually(cluster.servers[1]!.io, cluster.clients[0]!, `slot-check-${round}`)
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
