/**
 * Broadcasts across three real Socket.IO servers on our adapter, with real clients, through real
 * PostgreSQL: targeting (rooms, except, broadcast, local, volatile), payloads of every kind and
 * size around the NOTIFY limit, and acknowledgements.
 */
import pg from "pg"
import type { Server } from "socket.io"
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { startCluster, type Cluster } from "./utils/nodes.js"
import { collect, eventually, waitFor } from "./utils/cluster.js"
import { databaseUrl } from "./utils/postgres.js"

describe("adapter broadcasts across 3 servers", () => {
  let cluster: Cluster
  let io: Array<Server>
  // Two clients per server: a[i] and b[i] are connected to server i.
  let a: Array<ClientSocket>
  let b: Array<ClientSocket>
  // In the order a0, b0, a1, b1, a2, b2.
  let all: Array<ClientSocket>
  let markers = 0

  beforeAll(async () => {
    cluster = await startCluster("broadcast")
    io = cluster.nodes.map((server) => server.io)
    a = await cluster.connectEach()
    b = await cluster.connectEach()
    all = [0, 1, 2].flatMap((i) => [a[i]!, b[i]!])
    await cluster.waitForMembers()
  })

  afterAll(async () => {
    await cluster?.close()
  })

  /** The server-side socket of a client. */
  const serverSocket = (client: ClientSocket) => {
    for (const server of io) {
      const socket = server.of("/").sockets.get(client.id!)
      if (socket !== undefined) return socket
    }
    throw new Error(`no server holds socket ${client.id}`)
  }

  /**
   * Runs `send` (which emits `event` from `from`), then a normal `io.emit` of a marker from the same
   * server, and returns how many `event`s each client of `all` got before the marker. Notifications
   * from one server arrive in commit order and a connection keeps packet order, so anything `send`
   * delivers arrives before the marker.
   */
  const countDeliveries = async (from: Server, send: () => void, event = "ev") => {
    const counts = new Map(all.map((client) => [client, 0]))
    const listeners = all.map((client) => {
      const listener = () => counts.set(client, counts.get(client)! + 1)
      client.on(event, listener)
      return () => client.off(event, listener)
    })
    try {
      const marker = `marker-${markers++}`
      const arrived = Promise.all(all.map((client) => waitFor(client, marker)))
      send()
      from.emit(marker)
      await arrived
    } finally {
      for (const off of listeners) off()
    }
    return all.map((client) => counts.get(client)!)
  }

  /** Emits `event` with `args` from server 0 and returns what each client of `all` received. */
  const deliverToAll = async (args: ReadonlyArray<unknown>, event = "p") => {
    const received = Promise.all(all.map((client) => waitFor(client, event)))
    io[0]!.emit(event, ...args)
    return received
  }

  const bytesOf = (value: unknown): Buffer => {
    if (Buffer.isBuffer(value)) return value
    if (value instanceof ArrayBuffer) return Buffer.from(value)
    if (ArrayBuffer.isView(value))
      return Buffer.from(value.buffer, value.byteOffset, value.byteLength)
    throw new Error(`not binary: ${typeof value}`)
  }

  it("io.emit from server 0 reaches the clients of servers 0, 1 and 2", async () => {
    const received = await deliverToAll(["hello", 1], "hello")
    expect(received).toEqual(all.map(() => ["hello", 1]))
  })

  it("io.to(room) reaches the room's members on every server and nobody else", async () => {
    for (const client of [b[0]!, a[1]!, a[2]!]) serverSocket(client).join("to-room")
    const counts = await countDeliveries(io[0]!, () => io[0]!.to("to-room").emit("ev", 1))
    expect(counts).toEqual([0, 1, 1, 0, 1, 0])
  })

  it("io.in(room) reaches the room's members on every server and nobody else", async () => {
    for (const client of [a[0]!, b[1]!, b[2]!]) serverSocket(client).join("in-room")
    const counts = await countDeliveries(io[1]!, () => io[1]!.in("in-room").emit("ev", 1))
    expect(counts).toEqual([1, 0, 0, 1, 0, 1])
  })

  it("to([a, b]) reaches members of either room once each, a client in both rooms included", async () => {
    serverSocket(a[0]!).join("many-a")
    serverSocket(a[1]!).join(["many-a", "many-b"])
    serverSocket(b[2]!).join("many-b")
    serverSocket(a[2]!).join(["many-a", "many-b"])
    const counts = await countDeliveries(io[0]!, () => io[0]!.to(["many-a", "many-b"]).emit("ev"))
    expect(counts).toEqual([1, 0, 1, 0, 1, 1])
  })

  it("except(room) reaches every client of the cluster outside the room", async () => {
    for (const client of [a[0]!, b[1]!, a[2]!]) serverSocket(client).join("except-room")
    const counts = await countDeliveries(io[2]!, () => io[2]!.except("except-room").emit("ev"))
    expect(counts).toEqual([0, 1, 1, 0, 0, 1])
  })

  it("to(a).except(b) reaches members of a that are not in b, on every server", async () => {
    for (const client of all) serverSocket(client).join("inc-room")
    for (const client of [b[0]!, a[1]!, b[2]!]) serverSocket(client).join("exc-room")
    const counts = await countDeliveries(io[0]!, () =>
      io[0]!.to("inc-room").except("exc-room").emit("ev"),
    )
    expect(counts).toEqual([1, 0, 0, 1, 1, 0])
  })

  it("socket.broadcast.emit reaches every other client of every server, not the sender", async () => {
    const sender = serverSocket(a[1]!)
    const counts = await countDeliveries(io[1]!, () => sender.broadcast.emit("ev", "from a1"))
    expect(counts).toEqual([1, 1, 0, 1, 1, 1])
  })

  it("socket.to(room).emit reaches the room's other members on every server, not the sender", async () => {
    for (const client of [b[0]!, a[1]!, a[2]!, b[2]!]) serverSocket(client).join("sock-room")
    const sender = serverSocket(a[2]!)
    const counts = await countDeliveries(io[2]!, () => sender.to("sock-room").emit("ev"))
    expect(counts).toEqual([0, 1, 1, 0, 0, 1])
  })

  it("io.local.emit reaches only the clients of the emitting server", async () => {
    const counts = await countDeliveries(io[1]!, () => io[1]!.local.emit("ev", "local"))
    expect(counts).toEqual([0, 0, 1, 1, 0, 0])
  })

  it("io.volatile.emit reaches the clients of every server", async () => {
    const counts = await countDeliveries(io[0]!, () => io[0]!.volatile.emit("ev", "volatile"))
    expect(counts).toEqual([1, 1, 1, 1, 1, 1])
  })

  it("a small payload with several arguments arrives intact on every server", async () => {
    const args = [1, "two", { three: [3, true, null] }, -4.5]
    expect(await deliverToAll(args)).toEqual(all.map(() => args))
  })

  it("a 20 KB payload arrives intact on every server", async () => {
    const big = Array.from({ length: 20_000 }, (_, i) => String.fromCharCode(97 + (i % 26))).join(
      "",
    )
    const args = [big, { big }]
    expect(await deliverToAll(args)).toEqual(all.map(() => args))
  })

  it("messages whose NOTIFY payload is 7998, 7999, 8000 and 8001 bytes arrive intact (inline up to 7999, packed above: every node is ours)", async () => {
    // Measure the payload overhead of this event on the wire with a LISTEN of our own.
    const channel = cluster.nodes[0]!.adapter().channel
    const listener = new pg.Client({ connectionString: databaseUrl() })
    await listener.connect()
    try {
      const payloads: Array<string> = []
      listener.on("notification", (n) => {
        // A part of a packed message is a JSON header line, then a slice: one entry per message.
        const head = (n.payload ?? "{}").split("\n", 1)[0]!
        const message = JSON.parse(head) as { type?: number; part?: number }
        if (message.type === 3 && (message.part ?? 0) === 0) payloads.push(n.payload!)
      })
      await listener.query(`LISTEN "${channel.replaceAll('"', '""')}"`)
      await deliverToAll(["x".repeat(100)], "edge")
      await eventually(() => payloads.length === 1)
      const overhead = Buffer.byteLength(payloads[0]!) - 100
      payloads.length = 0

      const targets = [7990, 7997, 7998, 7999, 8000, 8001, 8002, 8010]
      const strings = targets.map((target) => "x".repeat(target - overhead))
      const received = Promise.all(all.map((client) => collect(client, "edge", targets.length)))
      for (const s of strings) io[0]!.emit("edge", s)
      const got = await received
      for (const events of got) expect(events).toEqual(strings.map((s) => [s]))

      await eventually(() => payloads.length === targets.length)
      const inline = payloads.map(
        (p) => !p.includes('"attachmentId"') && !p.includes("\n") && !p.includes('"mz":"'),
      )
      // Inline iff shorter than 8000 bytes: those are exactly the sizes we aimed at.
      expect(inline).toEqual(targets.map((t) => t <= 7999))
      // Above, packed (deflated: a run of x is a few bytes), not through the table (0.5.0's
      // format: see the interop suite).
      for (const [i, payload] of payloads.entries()) {
        if (!inline[i]) expect(payload).toContain('"mz":"')
      }
      targets.forEach((target, i) => {
        if (inline[i]) expect(Buffer.byteLength(payloads[i]!)).toBe(target)
      })
    } finally {
      await listener.end()
    }
  })

  it("strings of every 7th length from 7800 to 8100 characters arrive intact and in order", async () => {
    const strings: Array<string> = []
    for (let length = 7800; length <= 8100; length += 7) {
      strings.push(
        Array.from({ length }, (_, i) => String.fromCharCode(65 + ((i + length) % 26))).join(""),
      )
    }
    const received = Promise.all(all.map((client) => collect(client, "len", strings.length)))
    for (const s of strings) io[0]!.emit("len", s)
    for (const events of await received) expect(events).toEqual(strings.map((s) => [s]))
  })

  it("multi-byte text (accents, CJK, emoji) arrives intact, short and around the byte limit", async () => {
    const short = "héllo wörld — 名前 😀 ✓"
    // 2-, 3- and 4-byte characters, every byte length from 7,860 to 7,900: with the message around
    // them, the NOTIFY payloads cross the 8,000-byte limit.
    const around: Array<string> = []
    for (let bytes = 7860; bytes <= 7900; bytes++) {
      const k = Math.floor(bytes / 9)
      const rest = bytes - 9 * k
      around.push("é名😀".repeat(k) + "é".repeat(Math.floor(rest / 2)) + "a".repeat(rest % 2))
    }
    const strings = [short, ...around]
    const received = Promise.all(all.map((client) => collect(client, "mb", strings.length)))
    for (const s of strings) io[0]!.emit("mb", s)
    for (const events of await received) expect(events).toEqual(strings.map((s) => [s]))
  })

  it("a Buffer as a top-level argument arrives as the same bytes on every server", async () => {
    const buffer = Buffer.from([0, 1, 2, 250, 255, 128, 7])
    const received = await deliverToAll([buffer, "after"])
    for (const [bin, after] of received) {
      expect(bytesOf(bin).equals(buffer)).toBe(true)
      expect(after).toBe("after")
    }
  })

  it("Buffers nested in objects and arrays arrive intact on every server", async () => {
    const inner = Buffer.from("nested bytes \u00ff", "utf8")
    const large = Buffer.alloc(20_000, 7)
    const received = await deliverToAll([
      { level1: { level2: { bin: inner, n: 42 } }, list: ["x", large] },
    ])
    for (const [value] of received) {
      const v = value as {
        level1: { level2: { bin: unknown; n: number } }
        list: [string, unknown]
      }
      expect(bytesOf(v.level1.level2.bin).equals(inner)).toBe(true)
      expect(v.level1.level2.n).toBe(42)
      expect(v.list[0]).toBe("x")
      expect(bytesOf(v.list[1]).equals(large)).toBe(true)
    }
  })

  it("undefined fields are dropped and undefined arguments become null, as for local clients", async () => {
    const plain = await deliverToAll([{ a: 1, gone: undefined }, undefined, 2])
    const withBinary = await deliverToAll([{ bin: Buffer.from([1]), gone: undefined }, undefined])
    // The local client (a0) shows what Socket.IO itself does; remote clients see the same.
    expect(plain[0]).toEqual([{ a: 1 }, null, 2])
    for (const [object, nothing, two] of plain) {
      expect(object).toStrictEqual({ a: 1 })
      expect(nothing).toBeNull()
      expect(two).toBe(2)
    }
    for (const [object, nothing] of withBinary) {
      expect(Object.keys(object as object)).toEqual(["bin"])
      expect(bytesOf((object as { bin: unknown }).bin).equals(Buffer.from([1]))).toBe(true)
      expect(nothing).toBeNull()
    }
  })

  it("io.timeout(2000).emitWithAck collects one answer from every client of the cluster", async () => {
    const handlers = all.map((client, i) => {
      const handler = (question: string, ack: (answer: string) => void) => ack(`${question}:${i}`)
      client.on("q", handler)
      return () => client.off("q", handler)
    })
    try {
      const answers = (await io[0]!.timeout(2000).emitWithAck("q", "who")) as Array<string>
      expect([...answers].sort()).toEqual(all.map((_, i) => `who:${i}`))
    } finally {
      for (const off of handlers) off()
    }
  })
})
