/**
 * `subscriptionMode` (issue 13 part 1): rooms on channels of their own, with three real Socket.IO
 * servers, real clients and real PostgreSQL. In `"dynamic"` and `"dynamic-private"`: a broadcast to
 * one room reaches exactly its members on every server and travels on the room's channel only; a
 * server listens on a room's channel exactly while one of its sockets is in the room (checked in
 * PostgreSQL: junk sent on the channel reaches the servers that listen, and none once they left);
 * a reply to a room caused by a publish that followed a join reaches the joined socket (on fresh
 * rooms, and for a burst of rooms joined at once); fetchSockets, remote joins and leaves, and the
 * emitter work as in `"static"`.
 */
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import pg from "pg"
import type { Server } from "socket.io"
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { channelName, roomChannelName } from "../src/Channel.js"
import { createAdapter, Emitter, setupPrimary } from "../src/index.js"
import * as Metrics from "../src/Metrics.js"
import { collect, eventually, waitFor } from "./utils/cluster.js"
import { startCluster, type Cluster } from "./utils/nodes.js"
import { makePool, rawListener } from "./utils/postgres.js"

const skipped = () => Effect.runSync(Metric.value(Metrics.malformedNotifications)).count

describe.each(["dynamic", "dynamic-private"] as const)("subscriptionMode %s", (mode) => {
  let cluster: Cluster
  let io: Array<Server>
  // a[i] and b[i] are connected to server i; server 2's clients are never in the rooms below.
  let a: Array<ClientSocket>
  let b: Array<ClientSocket>
  let all: Array<ClientSocket>
  let rooms = 0
  let markers = 0
  // An emitter in "static" mode: its markers reach every client, on the namespace's channel.
  let emitter: Emitter
  let emitterPool: pg.Pool
  const freshRoom = () => `room-${mode}-${rooms++}`

  beforeAll(async () => {
    cluster = await startCluster(`dyn-${mode}`, { options: { subscriptionMode: mode } })
    io = cluster.nodes.map((node) => node.io)
    a = await cluster.connectEach()
    b = await cluster.connectEach()
    all = [0, 1, 2].flatMap((i) => [a[i]!, b[i]!])
    emitterPool = makePool()
    emitter = new Emitter(emitterPool, "/", { channelPrefix: cluster.id })
  })

  afterAll(async () => {
    await emitterPool?.end()
    await cluster?.close()
  })

  const socketOf = (client: ClientSocket) => {
    for (const server of io) {
      const socket = server.of("/").sockets.get(client.id!)
      if (socket !== undefined) return socket
    }
    throw new Error(`no server holds socket ${client.id}`)
  }
  const roomChannel = (room: string) => roomChannelName(cluster.id, "/", room)
  const nsChannel = () => channelName(cluster.id, "/")
  const listensOn = (node: number, room: string) =>
    cluster.nodes[node]!.adapter().listenStatus().roomChannels?.includes(roomChannel(room)) ?? false
  const waitListening = (nodes: ReadonlyArray<number>, room: string, listening = true) =>
    eventually(() => nodes.every((node) => listensOn(node, room) === listening), {
      message: `servers ${nodes.join(", ")} ${listening ? "" : "not "}listening on ${room}`,
    })

  /**
   * Runs `send`, then an `io.emit` of a marker from `from` (on the namespace's channel), and returns
   * how many `ev`s each client of `all` got before the marker: a server's notifications reach
   * another in commit order, whatever their channels, since one connection listens on them all.
   */
  const countDeliveries = async (from: Server, send: () => unknown) => {
    const counts = new Map(all.map((client) => [client, 0]))
    const offs = all.map((client) => {
      const listener = () => counts.set(client, counts.get(client)! + 1)
      client.on("ev", listener)
      return () => client.off("ev", listener)
    })
    try {
      const marker = `marker-${markers++}`
      const arrived = Promise.all(all.map((client) => waitFor(client, marker)))
      // An emitter's broadcast is committed once its promise resolves: the marker follows it.
      await send()
      from.emit(marker)
      await arrived
    } finally {
      for (const off of offs) off()
    }
    return all.map((client) => counts.get(client)!)
  }

  /**
   * How many servers received junk sent on `channel`: each server that hears it counts it as
   * malformed at once. A marker broadcast committed after it, once every client has it, tells that
   * every server got what was sent before.
   */
  const serversHearing = async (channel: string) => {
    const before = skipped()
    await cluster.admin.query("SELECT pg_notify($1, 'junk')", [channel])
    const marker = `marker-${markers++}`
    const arrived = Promise.all(all.map((client) => waitFor(client, marker)))
    await emitter.emit(marker)
    await arrived
    return skipped() - before
  }

  it("delivers a broadcast to one room to exactly its members, from members' and other servers", async () => {
    const room = freshRoom()
    socketOf(a[0]!).join(room)
    socketOf(a[1]!).join(room)
    // Server 2 publishes without any causal link to the joins: it waits until they listen.
    await waitListening([0, 1], room)
    const expected = [1, 0, 1, 0, 0, 0]
    expect(await countDeliveries(io[2]!, () => io[2]!.to(room).emit("ev"))).toEqual(expected)
    expect(await countDeliveries(io[0]!, () => io[0]!.to(room).emit("ev"))).toEqual(expected)
    expect(
      await countDeliveries(io[1]!, () => io[1]!.to(room).emit("ev", Buffer.from("b"))),
    ).toEqual(expected)
    const except = io[2]!.to(room).except(a[1]!.id!)
    expect(await countDeliveries(io[2]!, () => except.emit("ev"))).toEqual([1, 0, 0, 0, 0, 0])
    // Two rooms: the namespace's channel, every server.
    const other = freshRoom()
    socketOf(b[2]!).join(other)
    expect(await countDeliveries(io[1]!, () => io[1]!.to([room, other]).emit("ev"))).toEqual([
      1, 0, 1, 0, 0, 1,
    ])
    socketOf(b[2]!).leave(other)
  })

  it("collects every member's acknowledgement of a one-room broadcast (on the namespace's channel)", async () => {
    const room = freshRoom()
    socketOf(a[0]!).join(room)
    socketOf(a[1]!).join(room)
    await waitListening([0, 1], room)
    const answer = (client: ClientSocket) => (ack: (id: string) => void) => ack(client.id!)
    const handlers = [a[0]!, a[1]!].map((client) => {
      const handler = answer(client)
      client.on("ask", handler)
      return () => client.off("ask", handler)
    })
    try {
      const answers = await io[2]!.to(room).timeout(3000).emitWithAck("ask")
      expect([...answers].sort()).toEqual([a[0]!.id, a[1]!.id].sort())
    } finally {
      for (const off of handlers) off()
      socketOf(a[0]!).leave(room)
      socketOf(a[1]!).leave(room)
    }
  })

  it("sends a one-room broadcast on the room's channel only, and listens there only with a member", async () => {
    const room = freshRoom()
    socketOf(a[0]!).join(room)
    await waitListening([0], room)
    expect(listensOn(1, room)).toBe(false)
    expect(listensOn(2, room)).toBe(false)
    const raw = await rawListener([nsChannel(), roomChannel(room)])
    try {
      io[1]!.to(room).emit("ev", "routed")
      io[1]!.emit("after")
      await eventually(() => raw.received.some((n) => n.payload.includes('"after"')))
      const broadcasts = raw.received.filter((n) => n.payload.includes('"routed"'))
      expect(broadcasts.map((n) => n.channel)).toEqual([roomChannel(room)])
      // The servers that do not listen there never hear it.
      expect(await serversHearing(roomChannel(room))).toBe(1)
    } finally {
      await raw.close()
    }
  })

  it("stops listening on a room's channel when its last local member leaves (UNLISTEN)", async () => {
    const room = freshRoom()
    socketOf(a[0]!).join(room)
    socketOf(b[0]!).join(room)
    socketOf(a[1]!).join(room)
    await waitListening([0, 1], room)
    expect(await serversHearing(roomChannel(room))).toBe(2)
    socketOf(a[0]!).leave(room)
    // b0 is still in the room on server 0.
    expect(await serversHearing(roomChannel(room))).toBe(2)
    socketOf(b[0]!).leave(room)
    socketOf(a[1]!).leave(room)
    await waitListening([0, 1], room, false)
    expect(await serversHearing(roomChannel(room))).toBe(0)
    // And again, on the same room.
    socketOf(b[1]!).join(room)
    await waitListening([1], room)
    expect(await serversHearing(roomChannel(room))).toBe(1)
    socketOf(b[1]!).leave(room)
    await waitListening([1], room, false)
  })

  it("LISTENs on its room channels again after its LISTEN connection is killed", async () => {
    const room = freshRoom()
    socketOf(a[0]!).join(room)
    await waitListening([0], room)
    const adapter = cluster.nodes[0]!.adapter()
    const before = adapter.listenStatus().backendPid!
    await cluster.admin.query("SELECT pg_terminate_backend($1)", [before])
    await eventually(() => {
      const status = adapter.listenStatus()
      return (
        status.listening &&
        status.backendPid !== undefined &&
        status.backendPid !== before &&
        (status.roomChannels ?? []).includes(roomChannel(room))
      )
    })
    expect(await serversHearing(roomChannel(room))).toBe(1)
    expect(await countDeliveries(io[1]!, () => io[1]!.to(room).emit("ev"))).toEqual([
      1, 0, 0, 0, 0, 0,
    ])
    socketOf(a[0]!).leave(room)
  })

  it("routes a broadcast to one socket's own room by the mode", async () => {
    const target = a[0]!.id!
    const raw = await rawListener([nsChannel(), roomChannel(target)])
    try {
      expect(await countDeliveries(io[2]!, () => io[2]!.to(target).emit("ev", "private"))).toEqual([
        1, 0, 0, 0, 0, 0,
      ])
      await eventually(() => raw.received.some((n) => n.payload.includes('"private"')))
      const channels = raw.received.filter((n) => n.payload.includes('"private"'))
      if (mode === "dynamic-private") {
        expect(channels.map((n) => n.channel)).toEqual([roomChannel(target)])
        expect(listensOn(0, target)).toBe(true)
      } else {
        expect(channels.map((n) => n.channel)).toEqual([nsChannel()])
        expect(listensOn(0, target)).toBe(false)
      }
    } finally {
      await raw.close()
    }
  })

  it("delivers a reply to a room caused by a publish that followed the join (fresh rooms)", async () => {
    // Server 1 answers "joined" by emitting to the room at once: nothing but server 0's ordering
    // of its LISTEN before its publish makes the answer reach the socket that joined.
    const reply = (room: string) => io[1]!.to(room).emit("pong", room)
    io[1]!.on("joined", reply)
    try {
      for (let i = 0; i < 20; i++) {
        const room = freshRoom()
        const pong = waitFor(a[0]!, "pong")
        socketOf(a[0]!).join(room)
        io[0]!.serverSideEmit("joined", room)
        expect(await pong).toEqual([room])
        socketOf(a[0]!).leave(room)
      }
    } finally {
      io[1]!.off("joined", reply)
    }
  })

  it("delivers the replies to a burst of rooms joined at once (their LISTENs queue)", async () => {
    const replyAll = (rooms: Array<string>) => {
      for (const room of rooms) io[1]!.to(room).emit("pong", room)
    }
    io[1]!.on("joinedAll", replyAll)
    try {
      const burst = Array.from({ length: 40 }, () => freshRoom())
      const pongs = collect(a[0]!, "pong", burst.length)
      socketOf(a[0]!).join(burst)
      io[0]!.serverSideEmit("joinedAll", burst)
      const got = (await pongs).map(([room]) => room)
      expect(got.sort()).toEqual([...burst].sort())
      for (const room of burst) socketOf(a[0]!).leave(room)
    } finally {
      io[1]!.off("joinedAll", replyAll)
    }
  })

  it("answers fetchSockets of a room from every server, and follows remote joins and leaves", async () => {
    const room = freshRoom()
    socketOf(a[0]!).join(room)
    socketOf(b[1]!).join(room)
    const sockets = await io[2]!.in(room).fetchSockets()
    expect(sockets.map((s) => s.id).sort()).toEqual([a[0]!.id, b[1]!.id].sort())
    // A remote join (SOCKETS_JOIN on the namespace's channel): the joined socket's server listens.
    const joined = freshRoom()
    io[2]!.in(b[0]!.id!).socketsJoin(joined)
    await waitListening([0], joined)
    expect(listensOn(1, joined)).toBe(false)
    expect(await countDeliveries(io[2]!, () => io[2]!.to(joined).emit("ev"))).toEqual([
      0, 1, 0, 0, 0, 0,
    ])
    io[2]!.in(b[0]!.id!).socketsLeave(joined)
    await waitListening([0], joined, false)
    socketOf(a[0]!).leave(room)
    socketOf(b[1]!).leave(room)
  })

  it("sends the emitter's one-room broadcasts on the room's channel when told the mode", async () => {
    const room = freshRoom()
    socketOf(a[1]!).join(room)
    socketOf(b[2]!).join(room)
    await waitListening([1, 2], room)
    const pool = makePool()
    const dynamic = new Emitter(pool, "/", { channelPrefix: cluster.id, subscriptionMode: mode })
    // An emitter left in "static" still reaches them, on the namespace's channel.
    const fixed = emitter
    const raw = await rawListener([nsChannel(), roomChannel(room)])
    try {
      const expected = [0, 0, 1, 0, 0, 1]
      expect(await countDeliveries(io[0]!, () => dynamic.to(room).emit("ev", "e1"))).toEqual(
        expected,
      )
      expect(await countDeliveries(io[0]!, () => fixed.to(room).emit("ev", "e2"))).toEqual(expected)
      await eventually(() => raw.received.some((n) => n.payload.includes('"e2"')))
      const channelOf = (text: string) =>
        raw.received.filter((n) => n.payload.includes(text)).map((n) => n.channel)
      expect(channelOf('"e1"')).toEqual([roomChannel(room)])
      expect(channelOf('"e2"')).toEqual([nsChannel()])
    } finally {
      await raw.close()
      await pool.end()
    }
  })
})

describe("subscriptionMode dynamic and membership", () => {
  let cluster: Cluster

  beforeAll(async () => {
    cluster = await startCluster("dyn-members", {
      nodes: 2,
      options: { subscriptionMode: "dynamic", heartbeatInterval: 200, heartbeatTimeout: 1000 },
    })
  })

  afterAll(async () => {
    await cluster?.close()
  })

  it("keeps heartbeating while it publishes only on room channels the others do not hear", async () => {
    const [sender, other] = cluster.nodes.map((node) => node.io)
    // Three heartbeat timeouts of publishing to a room without members elsewhere: those
    // notifications reach no other server, so they must not stand in for heartbeats.
    const until = Date.now() + 3000
    let lowest = 2
    while (Date.now() < until) {
      sender!.to("nobody-else").emit("ev")
      lowest = Math.min(lowest, await other!.of("/").adapter.serverCount())
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
    expect(lowest).toBe(2)
  })
})

describe("subscriptionMode dynamic in a signed cluster", () => {
  let cluster: Cluster

  beforeAll(async () => {
    cluster = await startCluster("dyn-signed", {
      nodes: 2,
      options: { subscriptionMode: "dynamic", secret: "a secret of the dynamic cluster" },
    })
  })

  afterAll(async () => {
    await cluster?.close()
  })

  it("signs and checks room channel notifications, inline and through attachments", async () => {
    const [client] = await Promise.all([cluster.connect(0)])
    const room = "signed-room"
    cluster.nodes[0]!.io.of("/").sockets.get(client!.id!)!.join(room)
    const channel = roomChannelName(cluster.id, "/", room)
    await eventually(
      () => cluster.nodes[0]!.adapter().listenStatus().roomChannels?.includes(channel) ?? false,
    )
    const received = collect(client!, "signed", 3)
    const io = cluster.nodes[1]!.io
    io.to(room).emit("signed", "inline")
    io.to(room).emit("signed", Buffer.from("binary"))
    io.to(room).emit("signed", "x".repeat(9000))
    const [inline, binary, long] = await received
    expect(inline).toEqual(["inline"])
    expect(Buffer.from(binary![0] as Uint8Array).toString()).toBe("binary")
    expect((long![0] as string).length).toBe(9000)
    expect(cluster.nodes.flatMap((node) => node.errors)).toEqual([])
  })
})

describe("subscriptionMode at construction", () => {
  it('is "static" unless told, and refuses other values naming the option', () => {
    const pool = makePool()
    try {
      expect(() => createAdapter(pool, { subscriptionMode: "sharded" as any })).toThrow(
        /subscriptionMode must be "static", "dynamic" or "dynamic-private"/,
      )
      expect(() => new Emitter(pool, "/", { subscriptionMode: "x" as any })).toThrow(
        /subscriptionMode/,
      )
    } finally {
      void pool.end()
    }
  })

  it("refuses setupPrimary in a dynamic mode, naming the option", async () => {
    const pool = makePool()
    try {
      expect(() => setupPrimary(pool, { subscriptionMode: "dynamic-private" })).toThrow(
        /subscriptionMode/,
      )
    } finally {
      void pool.end()
    }
  })
})
