/**
 * The packed wire on real servers: when every node heard in a namespace is ours, binary and large
 * messages travel in the notifications (no attachment row written or read), JSON deflated when
 * every node speaks version 2 of our extensions; a node of ours that speaks version 1 brings
 * undeflated parts back, a 0.5.0 node in the namespace 0.5.0's format, and both get everything.
 */
import { afterAll, afterEach, describe, expect, it } from "vitest"
import { channelName, privateChannelName } from "../src/Channel.js"
import * as Protocol from "../src/Protocol.js"
import { resolveOptions } from "./utils/adapters.js"
import { eventually, waitFor } from "./utils/cluster.js"
import { type Cluster, startCluster } from "./utils/nodes.js"
import { rawListener } from "./utils/postgres.js"

const { MessageType } = Protocol

const SECRET = "the-secret-of-the-packed-suite!!"

/** 20 KB of structured JSON, as the benchmark's json20k. */
const records = Array.from({ length: 140 }, (_, i) => ({
  id: i,
  name: `user-${i}`,
  email: `user-${i}@example.com`,
  score: i * 3.5,
  status: i % 2 === 0 ? "active" : "idle",
}))

const rowsOf = async (cluster: Cluster): Promise<number> => {
  const table = resolveOptions(cluster.settings).tableName!
  const { rows } = await cluster.admin.query<{ n: string }>(`SELECT count(*) AS n FROM ${table}`)
  return Number(rows[0]!.n)
}

const suites = [
  { name: "unsigned", options: {} },
  { name: "signed", options: { secret: SECRET } },
] as const

describe.each(suites)("packed wire, every node ours ($name)", ({ options }) => {
  let cluster: Cluster
  afterAll(async () => {
    await cluster?.close()
  })

  it("delivers binary, 20 KB JSON and 60 KB binary broadcasts, in order, with no attachment row", async () => {
    cluster = await startCluster(`packed_${options === suites[0].options ? "u" : "s"}`, {
      options,
    })
    const [, , c] = await cluster.connectEach()
    const got: Array<unknown> = []
    const done = new Promise<void>((resolve) =>
      c!.on("m", (...args: Array<unknown>) => {
        got.push(args)
        if (got.length === 4) resolve()
      }),
    )
    const io = cluster.nodes[0]!.io
    io.emit("m", 1, Buffer.from([1, 2, 3]))
    io.emit("m", 2, records)
    io.emit("m", 3, { big: Buffer.alloc(60_000, 9), records })
    io.emit("m", 4, "small")
    await done
    expect(got[0]).toEqual([1, Buffer.from([1, 2, 3])])
    expect(got[1]).toEqual([2, records])
    expect(got[2]).toEqual([3, { big: Buffer.alloc(60_000, 9), records }])
    expect(got[3]).toEqual([4, "small"])
    expect(await rowsOf(cluster)).toBe(0)
  })

  it("answers fetchSockets with large socket data through parts, to the requester only", async () => {
    const data = { profile: records, avatar: Buffer.alloc(2_000, 5) }
    for (const node of cluster.nodes) {
      for (const socket of node.io.of("/").sockets.values()) socket.data = data
    }
    const sockets = await cluster.nodes[0]!.io.fetchSockets()
    expect(sockets).toHaveLength(3)
    for (const socket of sockets) expect(socket.data).toEqual(data)
    expect(await rowsOf(cluster)).toBe(0)
  })

  it("deflates JSON without binary: a 20 KB broadcast and each fetchSockets answer take one notification", async () => {
    const asker = cluster.nodes[0]!
    await eventually(() => cluster.nodes.every((n) => n.adapter().membershipStatus().wire === 2), {
      message: "every node sends deflated JSON",
    })
    const [, , c] = await cluster.connectEach()
    for (const node of cluster.nodes) {
      for (const socket of node.io.of("/").sockets.values()) socket.data = { profile: records }
    }
    const namespace = channelName(cluster.id, "/")
    const own = privateChannelName(cluster.id, asker.uid())
    const listener = await rawListener([namespace, own])
    try {
      const got = waitFor(c!, "z", 10_000)
      asker.io.emit("z", records)
      expect(await got).toEqual([records])
      const sockets = await asker.io.fetchSockets()
      // Each node's sockets: the first test's client and this one's.
      expect(sockets).toHaveLength(6)
      for (const socket of sockets) expect(socket.data).toEqual({ profile: records })
      const deflated = (channel: string) =>
        listener.received.filter((n) => n.channel === channel && n.payload.includes(',"mz":"'))
      await eventually(() => deflated(namespace).length === 1 && deflated(own).length === 2, {
        message: "the broadcast and 2 answers recorded",
      })
      // One notification each: no part of any message, on either channel.
      expect(listener.received.filter((n) => n.payload.includes('"mid":'))).toEqual([])
      for (const { payload } of deflated(own)) {
        expect(payload).toContain(`"type":${MessageType.FETCH_SOCKETS_RESPONSE}`)
        expect(payload.length).toBeLessThan(8000)
      }
      expect(await rowsOf(cluster)).toBe(0)
    } finally {
      await listener.close()
    }
  })
})

describe("packed wire with a node of ours that speaks version 1", () => {
  let cluster: Cluster
  afterEach(async () => {
    await cluster?.close()
  })

  it("sends long JSON undeflated, in parts, while that node is a member", async () => {
    cluster = await startCluster("packed_v1")
    const [, b] = await cluster.connectEach()
    const [a] = cluster.nodes
    await eventually(() => a!.adapter().membershipStatus().wire === 2)
    const namespace = channelName(cluster.id, "/")
    const listener = await rawListener([namespace])
    try {
      // A node of an earlier version of ours: its heartbeat carries version 1 of our extensions.
      const heartbeat = { uid: "v1-node", type: MessageType.HEARTBEAT, nsp: "/" }
      const marker = { v: 1, server: "v1-server" }
      await cluster.admin.query("SELECT pg_notify($1, $2)", [
        namespace,
        JSON.stringify({ ...heartbeat, ours: marker }),
      ])
      await eventually(() => a!.adapter().membershipStatus().wire === 1)
      const got = waitFor(b!, "z", 10_000)
      a!.io.emit("z", records)
      expect(await got).toEqual([records])
      const parts = () => listener.received.filter((n) => n.payload.includes('"mid":'))
      await eventually(() => parts().length >= 2, { message: "the parts recorded" })
      for (const { payload } of parts()) expect(payload).toContain('"enc":"j"')
      expect(listener.received.filter((n) => n.payload.includes('"mz":'))).toEqual([])
    } finally {
      await listener.close()
    }
  })
})

describe("packed wire with a 0.5.0 node in the namespace", () => {
  let cluster: Cluster
  afterEach(async () => {
    await cluster?.close()
  })

  it("sends 0.5.0's format (attachments) while the 0.5.0 node is a member, and the 0.5.0 node's client gets it", async () => {
    cluster = await startCluster("packed_mixed", { nodes: ["ours", "0.5.0", "ours"] })
    const clients = await cluster.connectEach()
    const received = Promise.all(clients.slice(1).map((client) => waitFor(client, "m", 10_000)))
    cluster.nodes[0]!.io.emit("m", Buffer.from([7, 7]), records)
    const [fromOld, fromOurs] = await received
    // 0.5.0 decodes binary from the table as a Uint8Array.
    expect(Buffer.from(fromOld![0] as Uint8Array)).toEqual(Buffer.from([7, 7]))
    expect(fromOurs).toEqual([Buffer.from([7, 7]), records])
    // The rows commit with their notifications: they are there once a client got the packet.
    expect(await rowsOf(cluster)).toBeGreaterThan(0)
  })
})
