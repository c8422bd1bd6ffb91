/**
 * Connection state recovery in the dynamic subscription modes (issue 13), on 3 real servers, real
 * clients and real PostgreSQL. A server hears only some of a namespace's offsets there: one-room
 * broadcasts travel on the room's channel, a socket's own packets on its node's private channel.
 * Clients must still get every packet once, in offset order, and restores must miss nothing, also
 * on a server that had no member of the restored socket's rooms.
 */
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { channelName, privateChannelName, roomChannelName } from "../src/Channel.js"
import { Emitter } from "../src/index.js"
import { eventually } from "./utils/cluster.js"
import { startCluster, type Cluster } from "./utils/nodes.js"
import { makePool, rawListener } from "./utils/postgres.js"
import {
  assertIncreasingOffsets,
  dropTransport,
  emitStored,
  offsetOf,
  recorder,
  resume,
} from "./utils/recovery.js"

/** The `n` values of the "seq" events received, in order. */
const seqs = (received: ReadonlyArray<{ event: string; args: Array<unknown> }>) =>
  received.filter((r) => r.event === "seq").map((r) => r.args[0] as number)

// Each mode unsigned, and "dynamic" in a signed cluster (own notifications on room and private
// channels are checked before they move the offsets).
describe.each([
  { mode: "dynamic", signed: false },
  { mode: "dynamic-private", signed: false },
  { mode: "dynamic", signed: true },
] as const)("recovery in subscriptionMode $mode (signed: $signed)", ({ mode, signed }) => {
  let cluster: Cluster
  const resumed: Array<ClientSocket> = []
  let rooms = 0
  // A colon: never taken for a socket id (20 characters of A-Z a-z 0-9 _ -), private in "dynamic".
  const freshRoom = () => `room:${mode}:${signed}:${rooms++}`

  beforeAll(async () => {
    cluster = await startCluster(`recdyn-${mode}${signed ? "-signed" : ""}`, {
      options: {
        subscriptionMode: mode,
        ...(signed ? { secret: "the-secret-of-recovery-dynamic!!" } : {}),
      },
      serverOptions: { connectionStateRecovery: { maxDisconnectionDuration: 60_000 } },
    })
  })
  afterEach(async () => {
    for (const client of resumed.splice(0)) client.disconnect()
    await cluster.disconnectClients()
  })
  afterAll(() => cluster?.close())

  const socketOf = (client: ClientSocket) => {
    for (const node of cluster.nodes) {
      const socket = node.io.of("/").sockets.get(client.id!)
      if (socket !== undefined) return socket
    }
    throw new Error(`no server holds ${client.id}`)
  }
  const roomChannel = (room: string) => roomChannelName(cluster.id, "/", room)
  const listensOn = (node: number, room: string) =>
    cluster.nodes[node]!.adapter().listenStatus().roomChannels?.includes(roomChannel(room)) ?? false

  /** A client of server `node` in `room`, recording what it receives. */
  const member = async (node: number, room: string) => {
    const log = recorder()
    const client = await cluster.connect(node)
    log.attach(client)
    socketOf(client).join(room)
    await eventually(() => listensOn(node, room), {
      message: `server ${node} listens on ${room}`,
    })
    // Every client needs an offset to present when it comes back.
    await emitStored(cluster.admin, cluster.id, () => cluster.nodes[0]!.io.emit("warm"))
    await eventually(() => log.received.some((r) => r.event === "warm"))
    return { client, log }
  }

  /**
   * The client loses its transport, `whileAway` sends "seq" 2, and it comes back on server
   * `node`, recovered, with "seq" 1 and 2 in order.
   */
  const awayAndBack = async (
    client: ClientSocket,
    log: ReturnType<typeof recorder>,
    node: number,
    whileAway: () => Promise<unknown>,
  ) => {
    await dropTransport(client, cluster.admin, cluster.id)
    await whileAway()
    const back = await resume(client, cluster.nodes[node]!.url, {
      attach: log.attach,
      track: resumed,
    })
    expect(back.recovered).toBe(true)
    await eventually(() => seqs(log.received).length === 2)
    expect(seqs(log.received)).toEqual([1, 2])
    assertIncreasingOffsets(log.received)
  }

  it("stores a one-room broadcast on the room's channel, with its offset, and replays it", async () => {
    const room = freshRoom()
    const { client, log } = await member(1, room)
    const raw = await rawListener([channelName(cluster.id, "/"), roomChannel(room)])
    try {
      await emitStored(cluster.admin, cluster.id, () =>
        cluster.nodes[0]!.io.to(room).emit("seq", 1),
      )
      await eventually(() => seqs(log.received).length === 1)
      const routed = raw.received.filter((n) => n.payload.includes('"seq"'))
      expect(routed.map((n) => n.channel)).toEqual([roomChannel(room)])
      expect(routed[0]!.payload).toMatch(/"offset":"\d+"}$/)
      expect(listensOn(0, room) || listensOn(2, room)).toBe(false)

      await awayAndBack(client, log, 2, () =>
        emitStored(cluster.admin, cluster.id, () => cluster.nodes[0]!.io.to(room).emit("seq", 2)),
      )
    } finally {
      await raw.close()
    }
  })

  it("restores on a server with no member of the room without missing what is sent to it meanwhile", async () => {
    const room = freshRoom()
    const { client, log } = await member(1, room)
    expect(listensOn(2, room)).toBe(false)
    // Server 0 emits to the room without pause while the client moves to server 2, which does
    // not listen on the room's channel until the restore.
    let sent = 0
    let stop = false
    const emitting = (async () => {
      while (!stop) {
        for (let i = 0; i < 5; i++) cluster.nodes[0]!.io.to(room).emit("seq", sent++)
        await new Promise<void>((resolve) => setImmediate(resolve))
      }
    })()
    try {
      await eventually(() => seqs(log.received).length >= 50, { timeout: 10_000 })
      await dropTransport(client, cluster.admin, cluster.id)
      const back = await resume(client, cluster.nodes[2]!.url, {
        attach: log.attach,
        track: resumed,
      })
      expect(back.recovered).toBe(true)
      const after = sent
      await eventually(() => seqs(log.received).includes(after + 100), {
        timeout: 15_000,
        message: `packet ${after + 100} after the restore`,
      })
    } finally {
      stop = true
      await emitting
    }
    const last = sent - 1
    await eventually(() => seqs(log.received).includes(last), {
      timeout: 15_000,
      message: `the last packet (${last})`,
    })
    expect(seqs(log.received)).toEqual(Array.from({ length: sent }, (_, n) => n))
    assertIncreasingOffsets(log.received.filter((r) => r.event === "seq"))
  })

  it("keeps socket.emit in offset order with room broadcasts of other servers, and replays both", async () => {
    const room = freshRoom()
    const { client, log } = await member(1, room)
    const socket = socketOf(client)
    const raw = await rawListener([
      privateChannelName(cluster.id, (cluster.nodes[1]!.adapter() as any).uid),
    ])
    let stop = false
    let sent = 0
    const filler = "x".repeat(6000)
    const emitting = (async () => {
      while (!stop) {
        // Large packets keep server 1's LISTEN connection behind the commits: its own packets'
        // statements return before the notifications committed just ahead of them arrive.
        for (let i = 0; i < 20; i++) {
          cluster.nodes[0]!.io.to(room).emit("seq", sent++, filler)
          socket.emit("own", sent)
        }
        await new Promise<void>((resolve) => setImmediate(resolve))
      }
    })()
    try {
      await eventually(() => seqs(log.received).length >= 1000, { timeout: 20_000 })
    } finally {
      stop = true
      await emitting
    }
    const total = sent
    await eventually(() => log.received.filter((r) => r.event === "own").length === total, {
      timeout: 15_000,
      message: "every socket.emit",
    })
    await eventually(() => seqs(log.received).length === total, { timeout: 15_000 })
    assertIncreasingOffsets(log.received.filter((r) => r.event !== "warm"))
    // The server's own packets went to its private channel, offsets only.
    expect(raw.received.length).toBeGreaterThan(0)
    expect(raw.received.every((n) => !n.payload.includes('"own"'))).toBe(true)
    await raw.close()

    // What it got is what a restore replays: a socket.emit while away comes back with the rest.
    await dropTransport(client, cluster.admin, cluster.id)
    await emitStored(cluster.admin, cluster.id, () =>
      cluster.nodes[0]!.io.to(room).emit("seq", total),
    )
    const back = await resume(client, cluster.nodes[0]!.url, {
      attach: log.attach,
      track: resumed,
    })
    expect(back.recovered).toBe(true)
    await eventually(() => seqs(log.received).length === total + 1)
    expect(seqs(log.received)).toEqual(Array.from({ length: total + 1 }, (_, n) => n))
    assertIncreasingOffsets(log.received.filter((r) => r.event !== "warm"))
    expect(offsetOf(log.received.at(-1)!.args)).toMatch(/^\d+$/)
  })

  it("delivers a socket.emit made right after a stored broadcast to a room it does not hear", async () => {
    const room = freshRoom()
    const elsewhere = freshRoom()
    const { client, log } = await member(1, room)
    // The last packet notified before the socket.emit goes to a channel server 1 never hears:
    // its socket's packet must not wait for it.
    await emitStored(cluster.admin, cluster.id, () =>
      cluster.nodes[0]!.io.to(elsewhere).emit("seq", -1),
    )
    socketOf(client).emit("own", 1)
    await eventually(() => log.received.some((r) => r.event === "own"), {
      message: "the socket.emit",
    })
    expect(seqs(log.received)).toEqual([])
    assertIncreasingOffsets(log.received)
  })

  it("an emitter stores a one-room broadcast on the room's channel; a client away gets it back", async () => {
    const room = freshRoom()
    const { client, log } = await member(1, room)
    const pool = makePool()
    const emitter = new Emitter(pool, "/", {
      ...(signed ? { secret: "the-secret-of-recovery-dynamic!!" } : {}),
      channelPrefix: cluster.id,
      recoveryTablePrefix: cluster.id,
      subscriptionMode: mode,
      connectionStateRecovery: true,
    })
    const raw = await rawListener([channelName(cluster.id, "/"), roomChannel(room)])
    try {
      await emitter.to(room).emit("seq", 1)
      await eventually(() => seqs(log.received).length === 1)
      await eventually(() => raw.received.some((n) => n.payload.includes('"seq"')))
      expect(raw.received.filter((n) => n.payload.includes('"seq"')).map((n) => n.channel)).toEqual(
        [roomChannel(room)],
      )
      await awayAndBack(client, log, 0, () => emitter.to(room).emit("seq", 2))
    } finally {
      await raw.close()
      await emitter.close()
      await pool.end()
    }
  })
})
