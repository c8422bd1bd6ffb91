/**
 * Guarantee 3, a node goes away: one cluster node runs in a child process (`fixtures/node.ts`).
 * SIGKILLed, it is dropped after `heartbeatTimeout` and requests that waited for it end with the
 * survivors' answers; closed cleanly, it announces ADAPTER_CLOSE and is dropped at once.
 */
import { afterAll, afterEach, describe, expect, it } from "vitest"
import type { Socket as ClientSocket } from "socket.io-client"
import { exitWithin, killFixture, settleWithin, watchProcessFaults } from "./fixtures/faults.js"
import { type ChildNode, type Cluster, startCluster } from "./utils/nodes.js"

interface Timing {
  readonly heartbeatInterval: number
  readonly heartbeatTimeout: number
  readonly requestsTimeout: number
}

describe("when a node of the cluster goes away", () => {
  const watcher = watchProcessFaults()
  let cluster: Cluster | undefined
  let node: ChildNode | undefined
  let survivorClients: Array<ClientSocket> = []

  /** Two in-process survivors and one child-process node, all on fresh channels. */
  const startNodes = async (timing: Timing) => {
    cluster = await startCluster("faults_nodes", { nodes: 2, options: timing })
    node = await cluster.spawnNode()
    cluster.nodes.forEach((survivor, i) => {
      survivor.io.on("ping", (ack: (answer: unknown) => void) => ack(`survivor-${i}`))
      survivor.io.on("hang", (ack: (answer: unknown) => void) => ack(`survivor-${i}`))
    })
    survivorClients = await cluster.connectEach()
    await cluster.connect(node)
    await cluster.waitForMembers("/", 3)
    // The child answers too: it really is a member.
    const acks = await cluster.nodes[0]!.io.serverSideEmitWithAck("ping")
    expect(acks).toContainEqual({ from: "child", pid: node.child.pid })
    expect(await cluster.nodes[0]!.io.fetchSockets()).toHaveLength(3)
    return { servers: cluster.nodes }
  }

  const survivorSocketIds = () => survivorClients.map((client) => client.id).sort()

  afterEach(async () => {
    await killFixture(node)
    await cluster?.close()
    node = undefined
    cluster = undefined
    expect(watcher.faults).toEqual([])
  })

  afterAll(() => {
    watcher.stop()
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

    await cluster!.waitForMembers("/", 2)
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
    await cluster!.waitForMembers("/", 2, 5_000)
    const sockets = await servers[0]!.io.fetchSockets()
    expect(sockets.map((socket) => socket.id).sort()).toEqual(survivorSocketIds())
  })
})
