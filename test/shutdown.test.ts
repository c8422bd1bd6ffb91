/**
 * Guarantee 5 (clean shutdown): after `io.close()` of every server and `pool.end()`, nothing of
 * ours is left: no handle on the event loop, no LISTEN backend in PostgreSQL, and a process that
 * did all this exits by itself.
 */
import type pg from "pg"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import {
  backendCount,
  type ChildScript,
  exitWithin,
  killFixture,
  listenerPids,
  runFixture,
  watchProcessFaults,
} from "./fixtures/faults.js"
import { fastOptions, type NodeSettings } from "./utils/adapters.js"
import { collect, eventually, waitFor } from "./utils/cluster.js"
import { type Cluster, startCluster } from "./utils/nodes.js"
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

  /** Every backend of the cluster's nodes (their pools' connections and LISTEN connections). */
  const backendsOf = async (cluster: Cluster) =>
    (
      await Promise.all(cluster.nodes.map((node) => backendCount(admin, node.applicationName)))
    ).reduce((a, b) => a + b, 0)

  it("leaves no handle of ours open and no LISTEN backend in PostgreSQL", async () => {
    const before = resources()

    const cluster = await startCluster("shutdown", { nodes: 2, options: fastOptions })
    // A second namespace: its adapter shares the runtime and the LISTEN connection.
    for (const node of cluster.nodes) node.io.of("/other")
    await cluster.waitForMembers()
    const clients = await cluster.connectEach()
    cluster.nodes[1]!.io.on("ping", (ack: (answer: string) => void) => ack("pong"))
    const got = collect(clients[1]!, "hello", 2)
    cluster.nodes[0]!.io.emit("hello", 1)
    cluster.nodes[0]!.io.emit("hello", Buffer.from([2]))
    expect((await got).length).toBe(2)
    expect(await cluster.nodes[0]!.io.serverSideEmitWithAck("ping")).toEqual(["pong"])
    expect(await cluster.nodes[0]!.io.fetchSockets()).toHaveLength(2)
    for (const node of cluster.nodes) {
      expect(await listenerPids(admin, node.applicationName)).toHaveLength(1)
    }

    // Closes every server, then ends every pool.
    await cluster.close()

    await eventually(async () => (await backendsOf(cluster)) === 0, {
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
    const settings: NodeSettings = { id, options: fastOptions }
    script = runFixture("two-servers.ts", {
      DATABASE_URL: databaseUrl(),
      NODE_SETTINGS: JSON.stringify(settings),
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
    const cluster = await startCluster("shutdown_busy", { nodes: 0, options: fastOptions })
    // The test's own pool, to end it itself.
    const pool = makePool({ max: 2, application_name: `${cluster.id}_busy` })
    try {
      const server = await cluster.addNode("ours", { pool })
      const client = await cluster.connect(server)
      // Publishes still in flight when close() starts.
      for (let n = 0; n < 50; n++) server.io.emit("burst", n)
      const disconnected = waitFor(client, "disconnect")
      await cluster.closeNode(server)
      await disconnected
      await pool.end()
      await eventually(async () => (await backendsOf(cluster)) === 0, {
        message: "no backend of ours is left",
      })
    } finally {
      await cluster.close()
    }
  })
})
