/**
 * With connection state recovery on, a server whose LISTEN connection is lost reads back the
 * stored packets it missed and delivers them, in order, before the live ones: nothing is lost. And
 * each namespace has offsets of its own.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { startCluster, type Cluster } from "./utils/nodes.js"
import { eventually } from "./utils/cluster.js"
import { terminateListeners } from "./utils/postgres.js"
import {
  assertIncreasingOffsets,
  dropTransport,
  offsetOf,
  recorder,
  resume,
  withoutOffset,
} from "./utils/recovery.js"

describe("recovery: a lost LISTEN connection", () => {
  let cluster: Cluster

  beforeAll(async () => {
    cluster = await startCluster("recovery_listener", {
      nodes: 2,
      serverOptions: { connectionStateRecovery: { maxDisconnectionDuration: 60_000 } },
    })
    await cluster.waitForMembers()
  })
  afterAll(() => cluster?.close())

  it("delivers what was sent while it was down, in order, once", async () => {
    const [, remote] = await cluster.connectEach()
    const received: Array<number> = []
    const offsets: Array<bigint> = []
    remote!.on("n", (n: number, offset: string) => {
      received.push(n)
      offsets.push(BigInt(offset))
    })
    const total = 3000
    let sent = 0
    let killed = 0
    // Emits in slices, one per turn of the event loop, and kills the listeners a third of the way.
    await new Promise<void>((resolve, reject) => {
      const tick = () => {
        for (let i = 0; i < 50 && sent < total; i++) cluster.nodes[0]!.io.emit("n", sent++)
        if (sent === 1000) {
          terminateListeners(cluster.admin, { queryContains: cluster.id })
            .then((n) => void (killed = n))
            .catch(reject)
        }
        if (sent < total) setImmediate(tick)
        else resolve()
      }
      tick()
    })
    await eventually(() => received.length >= total, {
      timeout: 20_000,
      message: "every packet received",
    })
    expect(killed).toBeGreaterThan(0)
    expect(received).toEqual(Array.from({ length: total }, (_, i) => i))
    for (let i = 1; i < offsets.length; i++) expect(offsets[i]! > offsets[i - 1]!).toBe(true)
  })
})

describe("recovery: several namespaces", () => {
  let cluster: Cluster

  beforeAll(async () => {
    cluster = await startCluster("recovery_namespaces", {
      nodes: 2,
      serverOptions: { connectionStateRecovery: { maxDisconnectionDuration: 60_000 } },
    })
    for (const server of cluster.nodes) {
      server.io.of("/a")
      server.io.of("/b")
    }
    await cluster.waitForMembers("/a")
    await cluster.waitForMembers("/b")
  })
  afterAll(() => cluster?.close())

  it("keeps each namespace's offsets and replays only its own packets", async () => {
    const { received, attach } = recorder()
    const client = await cluster.connect(0, { nsp: "/a" })
    attach(client)
    const other = await cluster.connect(1, { nsp: "/b" })
    const inB: Array<unknown> = []
    other.on("n", (n: unknown) => inB.push(n))
    const [s0, s1] = cluster.nodes
    s1!.io.of("/a").emit("n", "a1")
    s1!.io.of("/b").emit("n", "b1")
    await eventually(() => received.length === 1 && inB.length === 1)
    await dropTransport(client, cluster.admin, cluster.id)
    s0!.io.of("/b").emit("n", "b2")
    s0!.io.of("/a").emit("n", "a2")
    s1!.io.of("/b").emit("n", "b3")
    s1!.io.of("/a").emit("n", "a3")
    await eventually(() => inB.length === 3)
    const next = await resume(client, s1!.url, { nsp: "/a", attach, track: [] })
    expect(next.recovered).toBe(true)
    await eventually(() => received.length === 3)
    const values = received.map((packet) => withoutOffset(packet.args)[0])
    expect(values.slice(0, 1)).toEqual(["a1"])
    expect([...values.slice(1)].sort()).toEqual(["a2", "a3"])
    // Offsets of "/a" alone: 1, then the two others (commit order of two servers).
    expect(received.map((packet) => offsetOf(packet.args))).toEqual(["1", "2", "3"])
    assertIncreasingOffsets(received)
    next.disconnect()
  })
})
