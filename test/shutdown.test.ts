/**
 * Guarantee 5 (clean shutdown): after `io.close()` of every server and `pool.end()`, nothing of
 * ours is left: no handle on the event loop, no LISTEN backend in PostgreSQL, and a process that
 * did all this exits by itself.
 */
import type pg from "pg"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { createAdapter } from "../src/index.js"
import {
  backendCount,
  type ChildScript,
  clusterHasSize,
  exitWithin,
  fastOptions,
  killFixture,
  listenerPids,
  runFixture,
  watchProcessFaults,
} from "./fixtures/faults.js"
import { collect, eventually, startCluster, waitFor } from "./utils/cluster.js"
import { databaseUrl, dropTable, makePool, suiteId } from "./utils/postgres.js"

/** Active resources (handles and requests) by type, e.g. `{ TCPSocketWrap: 3, Timeout: 1 }`. */
const resources = (): Map<string, number> => {
  const counts = new Map<string, number>()
  for (const type of process.getActiveResourcesInfo()) {
    counts.set(type, (counts.get(type) ?? 0) + 1)
  }
  return counts
}

/** The types of which `after` holds more than `before`, with both counts. */
const grown = (before: Map<string, number>, after: Map<string, number>) =>
  [...after]
    .filter(([type, n]) => n > (before.get(type) ?? 0))
    .map(([type, n]) => ({
      type,
      before: before.get(type) ?? 0,
      after: n,
    }))

describe("after io.close() and pool.end()", () => {
  const watcher = watchProcessFaults()
  const tables: Array<string> = []
  let admin: pg.Pool
  let script: ChildScript | undefined

  beforeAll(async () => {
    // A pool of its own to look at pg_stat_activity, opened before the baseline is taken.
    admin = makePool({ max: 1 })
    await admin.query("SELECT 1")
  })

  afterEach(async () => {
    await killFixture(script)
    script = undefined
    expect(watcher.faults).toEqual([])
  })

  afterAll(async () => {
    watcher.stop()
    for (const table of tables) await dropTable(admin, table)
    await admin?.end()
  })

  it("leaves no handle of ours open and no LISTEN backend in PostgreSQL", async () => {
    const id = suiteId("shutdown")
    tables.push(id)
    const before = resources()

    const pools = [0, 1].map(() => makePool({ max: 4, application_name: id }))
    const cluster = await startCluster(2, (i) =>
      createAdapter(pools[i]!, { channelPrefix: id, tableName: id, ...fastOptions }),
    )
    // A second namespace: its adapter shares the runtime and the LISTEN connection.
    for (const server of cluster.servers) server.io.of("/other")
    await clusterHasSize(cluster.servers, 2)
    cluster.servers[1]!.io.on("ping", (ack: (answer: string) => void) => ack("pong"))
    const got = collect(cluster.clients[1]!, "hello", 2)
    cluster.servers[0]!.io.emit("hello", 1)
    cluster.servers[0]!.io.emit("hello", Buffer.from([2]))
    expect((await got).length).toBe(2)
    expect(await cluster.servers[0]!.io.serverSideEmitWithAck("ping")).toEqual(["pong"])
    expect(await cluster.servers[0]!.io.fetchSockets()).toHaveLength(2)
    expect(await listenerPids(admin, id)).toHaveLength(2)

    await cluster.close()
    await Promise.all(pools.map((pool) => pool.end()))

    await eventually(async () => (await backendCount(admin, id)) === 0, {
      message: "no backend of ours (LISTEN or pool) is left in pg_stat_activity",
    })
    let extra: ReturnType<typeof grown> = []
    await eventually(() => (extra = grown(before, resources())).length === 0, {
      message: "no more active resources than before the servers started",
    }).catch((error: Error) => {
      throw new Error(`${error.message}: ${JSON.stringify(extra)}`)
    })
  })

  it("lets a process that started two servers, used them and closed them exit by itself", async () => {
    const id = suiteId("shutdown_child")
    tables.push(id)
    script = runFixture("two-servers.ts", {
      DATABASE_URL: databaseUrl(),
      CHANNEL_PREFIX: id,
      TABLE_NAME: id,
    })
    const exercised = await script.waitForMessage("exercised")
    expect(exercised).toMatchObject({
      text: "world",
      bytes: [1, 2, 3],
      acks: ["pong-0"],
      sockets: 2,
    })
    await script.waitForMessage("closed")
    const exit = await exitWithin(script, 15_000).catch((error: Error) => {
      throw new Error(`${error.message}; stderr:\n${script!.stderr()}`)
    })
    expect(exit, script.stderr()).toEqual({ code: 0, signal: null })
  })

  it("closes cleanly with publishes in flight and a client still connected", async () => {
    const id = suiteId("shutdown_busy")
    tables.push(id)
    const pool = makePool({ max: 2, application_name: id })
    const cluster = await startCluster(1, () =>
      createAdapter(pool, { channelPrefix: id, tableName: id, ...fastOptions }),
    )
    const [server] = cluster.servers
    const [client] = cluster.clients
    // Publishes still in flight when close() starts.
    for (let n = 0; n < 50; n++) server!.io.emit("burst", n)
    const disconnected = waitFor(client!, "disconnect")
    await server!.close()
    await disconnected
    await pool.end()
    await eventually(async () => (await backendCount(admin, id)) === 0, {
      message: "no backend of ours is left",
    })
    await cluster.close()
  })
})
