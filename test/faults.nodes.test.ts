/**
 * Guarantee 3, a node goes away: one cluster node runs in a child process (`fixtures/node.ts`).
 * SIGKILLed, it is dropped after `heartbeatTimeout` and requests that waited for it end with the
 * survivors' answers; closed cleanly, it announces ADAPTER_CLOSE and is dropped at once.
 */
import type pg from "pg"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import type { Socket as ClientSocket } from "socket.io-client"
import { createAdapter } from "../src/index.js"
import {
  type ChildScript,
  clusterHasSize,
  exitWithin,
  killFixture,
  runFixture,
  settleWithin,
  watchProcessFaults,
} from "./fixtures/faults.js"
import { connectClient, startCluster, type TestCluster } from "./utils/cluster.js"
import { databaseUrl, dropTable, makePool, suiteId } from "./utils/postgres.js"

interface Timing {
  readonly heartbeatInterval: number
  readonly heartbeatTimeout: number
  readonly requestsTimeout: number
}

describe("when a node of the cluster goes away", () => {
  const watcher = watchProcessFaults()
  const tables: Array<string> = []
  let pool: pg.Pool
  let cluster: TestCluster | undefined
  let node: ChildScript | undefined
  let nodeClient: ClientSocket | undefined

  /** Two in-process survivors and one child-process node, all on fresh channels. */
  const startNodes = async (timing: Timing) => {
    const id = suiteId("faults_nodes")
    tables.push(id)
    node = runFixture("node.ts", {
      DATABASE_URL: databaseUrl(),
      CHANNEL_PREFIX: id,
      TABLE_NAME: id,
      HEARTBEAT_INTERVAL: String(timing.heartbeatInterval),
      HEARTBEAT_TIMEOUT: String(timing.heartbeatTimeout),
      REQUESTS_TIMEOUT: String(timing.requestsTimeout),
    })
    const ready = await node.waitForMessage("ready")
    cluster = await startCluster(2, () =>
      createAdapter(pool, { channelPrefix: id, tableName: id, ...timing }),
    )
    cluster.servers.forEach((server, i) => {
      server.io.on("ping", (ack: (answer: unknown) => void) => ack(`survivor-${i}`))
      server.io.on("hang", (ack: (answer: unknown) => void) => ack(`survivor-${i}`))
    })
    nodeClient = await connectClient(`http://127.0.0.1:${ready["port"]}`)
    await clusterHasSize(cluster.servers, 3)
    // The child answers too: it really is a member.
    const acks = await cluster.servers[0]!.io.serverSideEmitWithAck("ping")
    expect(acks).toContainEqual({ from: "child", pid: node.child.pid })
    expect(await cluster.servers[0]!.io.fetchSockets()).toHaveLength(3)
    return cluster
  }

  const survivorSocketIds = () => cluster!.clients.map((client) => client.id).sort()

  beforeAll(() => {
    pool = makePool({ max: 6 })
  })

  afterEach(async () => {
    nodeClient?.disconnect()
    await killFixture(node)
    await cluster?.close()
    node = undefined
    cluster = undefined
    expect(watcher.faults).toEqual([])
  })

  afterAll(async () => {
    watcher.stop()
    for (const table of tables) await dropTable(pool, table)
    await pool?.end()
  })

  it("ends pending requests with the survivors' answers once a SIGKILLed node is considered down", async () => {
    // requestsTimeout far above heartbeatTimeout: only the node's removal can end them in time.
    const { servers } = await startNodes({
      heartbeatInterval: 300,
      heartbeatTimeout: 1500,
      requestsTimeout: 20_000,
    })
    // The child never answers "hang": this request waits for it.
    const pendingAck = servers[0]!.io.serverSideEmitWithAck("hang")

    node!.child.kill("SIGKILL")
    expect((await node!.exited).signal).toBe("SIGKILL")
    const pendingFetch = servers[1]!.io.fetchSockets()

    const acks = await settleWithin(pendingAck, 10_000, "serverSideEmitWithAck")
    expect(acks).toEqual({ status: "fulfilled", value: ["survivor-1"] })
    const sockets = await settleWithin(pendingFetch, 10_000, "fetchSockets")
    expect(sockets.status).toBe("fulfilled")
    const ids = (sockets as { value: Array<{ id: string }> }).value.map((socket) => socket.id)
    expect(ids.sort()).toEqual(survivorSocketIds())

    await clusterHasSize(servers, 2)
    // Later requests only wait for the survivors.
    expect(await servers[1]!.io.serverSideEmitWithAck("ping")).toEqual(["survivor-0"])
  })

  it("removes a cleanly closed node at once (ADAPTER_CLOSE) and ends requests that waited for it", async () => {
    // heartbeatTimeout and requestsTimeout far above the test's budget: no timeout can explain it.
    const { servers } = await startNodes({
      heartbeatInterval: 300,
      heartbeatTimeout: 60_000,
      requestsTimeout: 60_000,
    })
    const pendingAck = servers[1]!.io.serverSideEmitWithAck("hang")

    node!.send("close")
    await node!.waitForMessage("closed")
    // It leaves nothing behind that keeps its process alive.
    expect(await exitWithin(node!, 10_000)).toEqual({ code: 0, signal: null })

    const acks = await settleWithin(pendingAck, 10_000, "serverSideEmitWithAck")
    expect(acks).toEqual({ status: "fulfilled", value: ["survivor-0"] })
    await clusterHasSize(servers, 2, 5_000)
    const sockets = await servers[0]!.io.fetchSockets()
    expect(sockets.map((socket) => socket.id).sort()).toEqual(survivorSocketIds())
  })
})
