/**
 * The Emitter facade against three real Socket.IO servers on our adapter, with real clients,
 * through real PostgreSQL: targeting, payloads of every kind and size around the NOTIFY limit,
 * socket management, server-side events and requests, namespaces and options, interop with
 * `@socket.io/postgres-emitter` 0.1.1, and failures when PostgreSQL is down.
 */
import { Emitter as UpstreamEmitter } from "@socket.io/postgres-emitter"
import pg from "pg"
import type { Server } from "socket.io"
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { Emitter, PublishError } from "../src/index.js"
import { watchProcessFaults } from "./fixtures/faults.js"
import { startCluster, type Cluster } from "./utils/nodes.js"
import { collect, eventually, waitFor } from "./utils/cluster.js"
import {
  databaseUrl,
  makePool,
  type PrivatePostgres,
  startPrivatePostgres,
  suiteId,
} from "./utils/postgres.js"

const bytesOf = (value: unknown): Buffer => {
  if (Buffer.isBuffer(value)) return value
  if (value instanceof ArrayBuffer) return Buffer.from(value)
  if (ArrayBuffer.isView(value))
    return Buffer.from(value.buffer, value.byteOffset, value.byteLength)
  throw new Error(`not binary: ${typeof value}`)
}

/** A string of `length` characters that is not a single repeated letter. */
const text = (length: number, seed = 0): string =>
  Array.from({ length }, (_, i) => String.fromCharCode(97 + ((i + seed) % 26))).join("")

describe("Emitter sending to 3 servers on our adapter", () => {
  let cluster: Cluster
  let io: Array<Server>
  let emitterPool: pg.Pool
  let emitter: Emitter
  // Fresh for every test: a[i] and b[i] are connected to server i.
  let a: Array<ClientSocket>
  let b: Array<ClientSocket>
  // In the order a0, b0, a1, b1, a2, b2.
  let all: Array<ClientSocket>
  let markers = 0

  beforeAll(async () => {
    cluster = await startCluster("emitter")
    io = cluster.nodes.map((server) => server.io)
    for (const server of io) server.of("/admin")
    await cluster.waitForMembers()
    await cluster.waitForMembers("/admin")
    emitterPool = makePool({ max: 4 })
    emitter = new Emitter(emitterPool, "/", { channelPrefix: cluster.id, tableName: cluster.id })
  })

  afterAll(async () => {
    await emitter?.close()
    await emitterPool?.end()
    await cluster?.close()
  })

  beforeEach(async () => {
    a = await cluster.connectEach()
    b = await cluster.connectEach()
    all = [0, 1, 2].flatMap((i) => [a[i]!, b[i]!])
  })

  afterEach(async () => {
    await cluster.disconnectClients(["/", "/admin"])
  })

  /** The server-side socket of a client. */
  const serverSocket = (client: ClientSocket, nsp = "/") => {
    for (const server of io) {
      const socket = server.of(nsp).sockets.get(client.id!)
      if (socket !== undefined) return socket
    }
    throw new Error(`no server holds socket ${client.id}`)
  }

  /** The rooms of a client's server-side socket. */
  const roomsOf = (client: ClientSocket) => serverSocket(client).rooms

  /**
   * Runs `send`, then emits a marker to everyone with the same emitter, and returns how many
   * `event`s each client of `all` got before the marker. Each server handles the emitter's
   * notifications in commit order and a connection keeps packet order, so whatever `send`
   * delivers arrives before the marker.
   */
  const countDeliveries = async (send: () => Promise<unknown>, event = "ev") => {
    const counts = new Map(all.map((client) => [client, 0]))
    const listeners = all.map((client) => {
      const listener = () => counts.set(client, counts.get(client)! + 1)
      client.on(event, listener)
      return () => client.off(event, listener)
    })
    try {
      const marker = `marker-${markers++}`
      const arrived = Promise.all(all.map((client) => waitFor(client, marker)))
      await send()
      await emitter.emit(marker)
      await arrived
    } finally {
      for (const off of listeners) off()
    }
    return all.map((client) => counts.get(client)!)
  }

  /** Emits `event` with `args` through `from` and returns what each client of `all` received. */
  const deliverToAll = async (args: ReadonlyArray<unknown>, event = "p", from = emitter) => {
    const received = Promise.all(all.map((client) => waitFor(client, event)))
    await from.emit(event, ...args)
    return received
  }

  /** Captures the emitter's notifications on `channel` with a LISTEN of our own. */
  const listenTo = async (channel: string) => {
    const client = new pg.Client({ connectionString: databaseUrl() })
    await client.connect()
    const payloads: Array<string> = []
    client.on("notification", (n) => {
      const message = JSON.parse(n.payload ?? "{}") as { uid?: string }
      if (message.uid === "emitter") payloads.push(n.payload!)
    })
    await client.query(`LISTEN "${channel.replaceAll('"', '""')}"`)
    return { payloads, end: () => client.end() }
  }

  describe("targeting", () => {
    it("emit reaches every client on every server", async () => {
      const received = await deliverToAll(["hello", 1], "hello")
      expect(received).toEqual(all.map(() => ["hello", 1]))
    })

    it("to(room) reaches the room's members on every server and nobody else", async () => {
      for (const client of [b[0]!, a[1]!, a[2]!]) serverSocket(client).join("to-room")
      const counts = await countDeliveries(() => emitter.to("to-room").emit("ev", 1))
      expect(counts).toEqual([0, 1, 1, 0, 1, 0])
    })

    it("in(room) reaches the room's members on every server and nobody else", async () => {
      for (const client of [a[0]!, b[1]!, b[2]!]) serverSocket(client).join("in-room")
      const counts = await countDeliveries(() => emitter.in("in-room").emit("ev", 1))
      expect(counts).toEqual([1, 0, 0, 1, 0, 1])
    })

    it("to([a, b]) reaches members of either room once each, a client in both included", async () => {
      serverSocket(a[0]!).join("many-a")
      serverSocket(a[1]!).join(["many-a", "many-b"])
      serverSocket(b[2]!).join("many-b")
      serverSocket(a[2]!).join(["many-a", "many-b"])
      const counts = await countDeliveries(() => emitter.to(["many-a", "many-b"]).emit("ev"))
      expect(counts).toEqual([1, 0, 1, 0, 1, 1])
    })

    it("except(room) reaches every client of the cluster outside the room", async () => {
      for (const client of [a[0]!, b[1]!, a[2]!]) serverSocket(client).join("except-room")
      const counts = await countDeliveries(() => emitter.except("except-room").emit("ev"))
      expect(counts).toEqual([0, 1, 1, 0, 0, 1])
    })

    it("to(a).except(b) reaches members of a that are not in b, on every server", async () => {
      for (const client of all) serverSocket(client).join("inc-room")
      for (const client of [b[0]!, a[1]!, b[2]!]) serverSocket(client).join("exc-room")
      const counts = await countDeliveries(() =>
        emitter.to("inc-room").except("exc-room").emit("ev"),
      )
      expect(counts).toEqual([1, 0, 0, 1, 1, 0])
    })

    it("chaining is immutable: an operator reused after to/except/volatile/compress is unchanged", async () => {
      for (const client of [a[0]!, a[1]!]) serverSocket(client).join("imm-a")
      serverSocket(b[2]!).join("imm-b")
      serverSocket(a[1]!).join("imm-x")
      const base = emitter.to("imm-a")
      const widened = base.to("imm-b")
      const narrowed = base.except("imm-x")
      void base.volatile
      base.compress(false)
      emitter.to("imm-b")
      emitter.except("imm-a")

      expect(await countDeliveries(() => base.emit("ev"))).toEqual([1, 0, 1, 0, 0, 0])
      expect(await countDeliveries(() => widened.emit("ev"))).toEqual([1, 0, 1, 0, 0, 1])
      expect(await countDeliveries(() => narrowed.emit("ev"))).toEqual([1, 0, 0, 0, 0, 0])
      expect(await countDeliveries(() => base.emit("ev"))).toEqual([1, 0, 1, 0, 0, 0])
      expect(await countDeliveries(() => emitter.emit("ev"))).toEqual([1, 1, 1, 1, 1, 1])
    })

    it("volatile still delivers to every client of every server", async () => {
      const counts = await countDeliveries(() => emitter.volatile.emit("ev", "volatile"))
      expect(counts).toEqual([1, 1, 1, 1, 1, 1])
    })

    it("to(room) of a room nobody joined reaches nobody", async () => {
      const counts = await countDeliveries(() => emitter.to("empty-room").emit("ev"))
      expect(counts).toEqual([0, 0, 0, 0, 0, 0])
    })

    it("compress(false) still delivers to every client of every server", async () => {
      const counts = await countDeliveries(() => emitter.compress(false).emit("ev", "plain"))
      expect(counts).toEqual([1, 1, 1, 1, 1, 1])
    })
  })

  describe("payloads", () => {
    it("a small payload with several arguments arrives intact on every server", async () => {
      const args = [1, "two", { three: [3, true, null] }, -4.5]
      expect(await deliverToAll(args)).toEqual(all.map(() => args))
    })

    it("a 20 KB payload arrives intact on every server", async () => {
      const big = text(20_000)
      const args = [big, { big }]
      expect(await deliverToAll(args)).toEqual(all.map(() => args))
    })

    it("a Buffer as a top-level argument arrives as the same bytes on every server", async () => {
      const buffer = Buffer.from([0, 1, 2, 250, 255, 128, 7])
      const received = await deliverToAll([buffer, "after"])
      for (const [bin, after] of received) {
        expect(bytesOf(bin).equals(buffer)).toBe(true)
        expect(after).toBe("after")
      }
    })

    it("Buffers and typed arrays nested in objects and arrays arrive intact on every server", async () => {
      const inner = Buffer.from("nested bytes \u00ff", "utf8")
      const typed = new Uint8Array([9, 8, 7])
      const large = Buffer.alloc(20_000, 7)
      const received = await deliverToAll([
        { level1: { level2: { bin: inner, n: 42 } }, list: ["x", large, { typed }] },
      ])
      for (const [value] of received) {
        const v = value as {
          level1: { level2: { bin: unknown; n: number } }
          list: [string, unknown, { typed: unknown }]
        }
        expect(bytesOf(v.level1.level2.bin).equals(inner)).toBe(true)
        expect(v.level1.level2.n).toBe(42)
        expect(v.list[0]).toBe("x")
        expect(bytesOf(v.list[1]).equals(large)).toBe(true)
        expect([...bytesOf(v.list[2].typed)]).toEqual([9, 8, 7])
      }
    })

    it("messages whose notification JSON is every length from 7990 to 8010 bytes arrive intact", async () => {
      const capture = await listenTo(emitter.channel)
      try {
        // Measure this event's overhead on the wire.
        await deliverToAll(["x".repeat(100)], "edge")
        await eventually(() => capture.payloads.length === 1)
        const overhead = Buffer.byteLength(capture.payloads[0]!) - 100
        capture.payloads.length = 0

        const targets = Array.from({ length: 21 }, (_, i) => 7990 + i)
        const strings = targets.map((target, i) => text(target - overhead, i))
        const received = Promise.all(all.map((client) => collect(client, "edge", targets.length)))
        for (const s of strings) await emitter.emit("edge", s)
        for (const events of await received) expect(events).toEqual(strings.map((s) => [s]))

        await eventually(() => capture.payloads.length === targets.length)
        const inline = capture.payloads.map((p) => !p.includes('"attachmentId"'))
        // Inline iff shorter than 8000 bytes, at exactly the sizes aimed at.
        expect(inline).toEqual(targets.map((t) => t <= 7999))
        targets.forEach((target, i) => {
          if (inline[i]) expect(Buffer.byteLength(capture.payloads[i]!)).toBe(target)
        })
      } finally {
        await capture.end()
      }
    })

    it("multi-byte text (accents, CJK, emoji) arrives intact, short and around the byte limit", async () => {
      const short = "héllo wörld — 名前 😀 ✓"
      // 2-, 3- and 4-byte characters at every byte length from 7,860 to 7,900: with the message
      // around them, the notifications cross the 8,000-byte limit.
      const around: Array<string> = []
      for (let bytes = 7860; bytes <= 7900; bytes++) {
        const k = Math.floor(bytes / 9)
        const rest = bytes - 9 * k
        around.push("é名😀".repeat(k) + "é".repeat(Math.floor(rest / 2)) + "a".repeat(rest % 2))
      }
      const strings = [short, ...around]
      const received = Promise.all(all.map((client) => collect(client, "mb", strings.length)))
      for (const s of strings) await emitter.emit("mb", s)
      for (const events of await received) expect(events).toEqual(strings.map((s) => [s]))
    })
  })

  describe("socket management", () => {
    it("socketsJoin makes every socket of every server join the rooms", async () => {
      await emitter.socketsJoin(["join-all-1", "join-all-2"])
      await eventually(() =>
        all.every(
          (client) => roomsOf(client).has("join-all-1") && roomsOf(client).has("join-all-2"),
        ),
      )
      for (const server of io) {
        expect(server.of("/").adapter.rooms.get("join-all-1")?.size).toBe(2)
      }
    })

    it("in(room).socketsJoin makes only the room's members join, on every server", async () => {
      const members = [a[0]!, b[1]!, a[2]!]
      for (const client of members) serverSocket(client).join("join-src")
      await emitter.in("join-src").socketsJoin("join-dst")
      // Every server holds a member: once each member joined, every server handled the message.
      await eventually(() => members.every((client) => roomsOf(client).has("join-dst")))
      expect(all.map((client) => roomsOf(client).has("join-dst"))).toEqual([
        true,
        false,
        false,
        true,
        true,
        false,
      ])
    })

    it("socketsLeave makes every socket of every server leave the room", async () => {
      for (const client of all) serverSocket(client).join(["leave-all", "stay"])
      await emitter.socketsLeave("leave-all")
      await eventually(() => all.every((client) => !roomsOf(client).has("leave-all")))
      expect(all.every((client) => roomsOf(client).has("stay"))).toBe(true)
    })

    it("except(room).socketsLeave makes only sockets outside the room leave, on every server", async () => {
      for (const client of all) serverSocket(client).join("leave-some")
      for (const client of [a[1]!, b[2]!]) serverSocket(client).join("keep")
      const leaving = [a[0]!, b[0]!, b[1]!, a[2]!]
      await emitter.except("keep").socketsLeave("leave-some")
      await eventually(() => leaving.every((client) => !roomsOf(client).has("leave-some")))
      expect(all.map((client) => roomsOf(client).has("leave-some"))).toEqual([
        false,
        false,
        true,
        false,
        false,
        true,
      ])
    })

    /**
     * Opens an `/admin` socket on the connection of each client: it lives as long as that
     * connection, so it tells `disconnectSockets()` (socket only) from `disconnectSockets(true)`.
     */
    const withAdminSockets = async (
      test: (admins: Array<ClientSocket>) => Promise<void>,
    ): Promise<void> => {
      const admins = all.map((client) => client.io.socket("/admin"))
      try {
        await Promise.all(
          admins.map((admin) => (admin.connected ? undefined : waitFor(admin, "connect"))),
        )
        await test(admins)
      } finally {
        for (const admin of admins) admin.disconnect()
      }
    }

    /** Resolves once every one of `admins` received an `/admin` broadcast: they are connected. */
    const stillConnected = async (admins: ReadonlyArray<ClientSocket>) => {
      const event = `still-${markers++}`
      const arrived = Promise.all(admins.map((admin) => waitFor(admin, event)))
      await emitter.of("/admin").emit(event)
      await arrived
    }

    it("disconnectSockets() disconnects every socket of the namespace on every server, keeping their connections", async () => {
      await withAdminSockets(async (admins) => {
        const reasons = Promise.all(all.map((client) => waitFor(client, "disconnect")))
        await emitter.disconnectSockets()
        for (const [reason] of await reasons) expect(reason).toBe("io server disconnect")
        await eventually(() => io.every((server) => server.of("/").sockets.size === 0))
        // The connections stay: the /admin sockets on them still receive.
        await stillConnected(admins)
        expect(io.map((server) => server.of("/admin").sockets.size)).toEqual([2, 2, 2])
      })
    })

    it("to(room).disconnectSockets(true) closes the connections of the room's members only", async () => {
      await withAdminSockets(async (admins) => {
        const members = [1, 2, 5]
        const others = [0, 3, 4]
        for (const i of members) serverSocket(all[i]!).join("dc-room")
        const closed = Promise.all(members.map((i) => waitFor(admins[i]!, "disconnect")))
        await emitter.to("dc-room").disconnectSockets(true)
        // The whole connection went: the member's /admin socket with it.
        await closed
        for (const i of members) expect(admins[i]!.connected).toBe(false)
        for (const i of members) expect(all[i]!.connected).toBe(false)
        await eventually(() =>
          members.every((i) => io.every((server) => !server.of("/").sockets.has(all[i]!.id!))),
        )
        // Each server had a member, so each handled the message; the others are all there.
        await stillConnected(others.map((i) => admins[i]!))
        const stillThere = Promise.all(others.map((i) => waitFor(all[i]!, "still")))
        await emitter.emit("still")
        await stillThere
      })
    })

    it("disconnectSockets(true) closes the underlying connection of every socket of every server", async () => {
      await withAdminSockets(async (admins) => {
        const closed = Promise.all(admins.map((admin) => waitFor(admin, "disconnect")))
        await emitter.disconnectSockets(true)
        // Every /admin socket went with its connection, though only "/" was targeted.
        await closed
        await eventually(() => io.every((server) => server.engine.clientsCount === 0))
      })
    })
  })

  describe("server-side events and requests", () => {
    it("serverSideEmit reaches io.on(ev) on all 3 servers with the arguments intact", async () => {
      const bin = Buffer.from([5, 6, 7])
      const received = Promise.all(io.map((server) => waitFor(server, "sse")))
      await emitter.serverSideEmit("sse", 1, "two", { three: [3] }, bin)
      for (const [one, two, three, binary] of await received) {
        expect([one, two, three]).toEqual([1, "two", { three: [3] }])
        expect(bytesOf(binary).equals(bin)).toBe(true)
      }
    })

    it("serverSideEmitWithAck resolves with one answer from each of the 3 servers", async () => {
      const handlers = io.map((server, i) => {
        const handler = (question: string, ack: (answer: string) => void) => ack(`${question}:${i}`)
        server.on("ask", handler)
        return () => server.off("ask", handler)
      })
      try {
        const answers = await emitter.serverSideEmitWithAck("ask", "who")
        expect([...answers].sort()).toEqual(["who:0", "who:1", "who:2"])
      } finally {
        for (const off of handlers) off()
      }
    })

    it("fetchSockets returns every socket of the cluster with its id, rooms and data", async () => {
      all.forEach((client, i) => {
        const socket = serverSocket(client)
        socket.data = i === 0 ? { index: i, bin: Buffer.from([1, 2, 3]) } : { index: i }
      })
      serverSocket(a[1]!).join("fetch-room")
      const sockets = await emitter.fetchSockets()
      expect(sockets.map((s) => s.id).sort()).toEqual(all.map((client) => client.id).sort())
      for (const [i, client] of all.entries()) {
        const socket = sockets.find((s) => s.id === client.id)!
        expect(new Set(socket.rooms)).toEqual(roomsOf(client))
        const data = socket.data as { index: number; bin?: unknown }
        expect(data.index).toBe(i)
        if (i === 0) expect(bytesOf(data.bin).equals(Buffer.from([1, 2, 3]))).toBe(true)
        expect(socket.handshake).toMatchObject({ query: expect.any(Object) })
      }
      expect(new Set(sockets.find((s) => s.id === a[1]!.id)!.rooms)).toContain("fetch-room")
    })

    it("to(room).fetchSockets returns only the room's members, from every server", async () => {
      const members = [b[0]!, a[1]!, a[2]!]
      for (const client of members) serverSocket(client).join("fs-room")
      const sockets = await emitter.to("fs-room").fetchSockets()
      expect(sockets.map((s) => s.id).sort()).toEqual(members.map((client) => client.id).sort())
      const rest = await emitter.except("fs-room").fetchSockets()
      expect(rest.map((s) => s.id).sort()).toEqual(
        [a[0]!, b[1]!, b[2]!].map((client) => client.id).sort(),
      )
    })

    it("the first request of a new emitter waits for every server's answer to its heartbeat", async () => {
      for (let i = 0; i < 5; i++) {
        const fresh = new Emitter(emitterPool, "/", {
          channelPrefix: cluster.id,
          tableName: cluster.id,
        })
        try {
          expect(await fresh.fetchSockets()).toHaveLength(all.length)
        } finally {
          await fresh.close()
        }
      }
    })

    it("the emitter (uid 'emitter') is never counted: serverCount stays 3 after it sends and asks", async () => {
      const fresh = new Emitter(emitterPool, "/", {
        channelPrefix: cluster.id,
        tableName: cluster.id,
      })
      try {
        await deliverToAll(["counted?"], "uid", fresh)
        // A request watches the namespace: INITIAL_HEARTBEAT as "emitter", handled by every
        // server before the FETCH_SOCKETS it answered.
        expect(await fresh.fetchSockets()).toHaveLength(all.length)
        const handlers = io.map((server) => {
          const handler = (ack: (answer: string) => void) => ack("here")
          server.on("count-me", handler)
          return () => server.off("count-me", handler)
        })
        try {
          expect(await fresh.serverSideEmitWithAck("count-me")).toEqual(["here", "here", "here"])
        } finally {
          for (const off of handlers) off()
        }
        const counts = await Promise.all(io.map((server) => server.of("/").adapter.serverCount()))
        expect(counts).toEqual([3, 3, 3])
      } finally {
        await fresh.close()
      }
    })
  })

  describe("namespaces and options", () => {
    it("of('/admin') targets that namespace and keeps channelPrefix, tableName and payloadThreshold", async () => {
      const small = new Emitter(emitterPool, "/", {
        channelPrefix: cluster.id,
        tableName: cluster.id,
        payloadThreshold: 100,
      })
      const admins = await cluster.connectEach({ nsp: "/admin" })
      try {
        const admin = small.of("/admin")
        expect(admin.nsp).toBe("/admin")
        expect(admin.channel).toBe(cluster.nodes[0]!.adapter("/admin").channel)
        expect(small.of("admin").nsp).toBe("/admin")

        const maxId = async () =>
          Number(
            (await cluster.admin.query(`SELECT coalesce(max(id), 0) AS id FROM ${cluster.id}`))
              .rows[0].id,
          )
        const before = await maxId()
        const payload = text(500)
        const onRoot = all.map(() => 0)
        const listeners = all.map((client, i) => {
          const listener = () => onRoot[i]!++
          client.on("adm", listener)
          return () => client.off("adm", listener)
        })
        try {
          const received = Promise.all(admins.map((client) => waitFor(client, "adm")))
          await admin.emit("adm", payload)
          expect(await received).toEqual(admins.map(() => [payload]))
          // Above the 100-byte threshold: it went through the attachments table.
          expect(await maxId()).toBeGreaterThan(before)
          // The default namespace's clients got nothing (checked after a marker there).
          expect(await countDeliveries(async () => {}, "adm")).toEqual(all.map(() => 0))
          expect(onRoot).toEqual(all.map(() => 0))
        } finally {
          for (const off of listeners) off()
        }

        // Requests on the other namespace: only its sockets.
        const sockets = await admin.fetchSockets()
        expect(sockets.map((s) => s.id).sort()).toEqual(admins.map((client) => client.id).sort())
      } finally {
        await small.close()
      }
    })
  })

  describe("without a namespace", () => {
    it("an Emitter constructed without one targets / and names it on the wire, as 0.5.0 servers need", async () => {
      const bare = new Emitter(emitterPool, undefined, {
        channelPrefix: cluster.id,
        tableName: cluster.id,
      })
      const wire = await listenTo(cluster.nodes[0]!.adapter().channel)
      try {
        expect(bare.nsp).toBe("/")
        expect(await deliverToAll(["no nsp given"], "bare", bare)).toEqual(
          all.map(() => ["no nsp given"]),
        )
        // Our servers take the namespace from the channel; 0.5.0 servers drop a message without it.
        await eventually(() => wire.payloads.some((payload) => payload.includes('"bare"')), {
          message: "the emitter's notification seen on the channel",
        })
        const message = JSON.parse(wire.payloads.find((payload) => payload.includes('"bare"'))!)
        expect(message).toMatchObject({ uid: "emitter", nsp: "/" })
      } finally {
        await wire.end()
        await bare.close()
      }
    })
  })

  describe("@socket.io/postgres-emitter 0.1.1 sending to our adapters", () => {
    let upstream: InstanceType<typeof UpstreamEmitter>

    beforeAll(() => {
      // A lowercase table name: 0.1.1 pastes it unquoted into its INSERT.
      expect(cluster.id).toMatch(/^[a-z0-9_]+$/)
      upstream = new UpstreamEmitter(emitterPool, "/", {
        channelPrefix: cluster.id,
        tableName: cluster.id,
      })
    })

    const upstreamDeliver = async (args: ReadonlyArray<unknown>, event: string) => {
      const received = Promise.all(all.map((client) => waitFor(client, event)))
      upstream.emit(event, ...args)
      return received
    }

    it("its emit (no nsp in the message) reaches every client on every server", async () => {
      const received = await upstreamDeliver(["from", "upstream"], "up")
      expect(received).toEqual(all.map(() => ["from", "upstream"]))
    })

    it("its to(room).emit reaches the room's members on every server and nobody else", async () => {
      for (const client of [a[0]!, b[1]!, b[2]!]) serverSocket(client).join("up-room")
      const members = [a[0]!, b[1]!, b[2]!]
      const received = Promise.all(members.map((client) => waitFor(client, "up-to")))
      const others = [b[0]!, a[1]!, a[2]!]
      const seen = others.map(() => 0)
      const offs = others.map((client, i) => {
        const listener = () => seen[i]!++
        client.on("up-to", listener)
        return () => client.off("up-to", listener)
      })
      try {
        upstream.to("up-room").emit("up-to", 1)
        await received
        // Same sender, same channel: once the marker is in, "up-to" would have been too.
        const marker = Promise.all(all.map((client) => waitFor(client, "up-marker")))
        upstream.emit("up-marker")
        await marker
      } finally {
        for (const off of offs) off()
      }
      expect(seen).toEqual([0, 0, 0])
    })

    it("its large payload through the attachments table arrives intact on every server", async () => {
      const big = text(20_000, 3)
      const received = await upstreamDeliver([big, { big }], "up-big")
      expect(received).toEqual(all.map(() => [big, { big }]))
    })

    it("its binary payload arrives as the same bytes on every server", async () => {
      const bin = Buffer.from([0, 255, 1, 254, 2])
      const received = await upstreamDeliver([{ bin }, "tail"], "up-bin")
      for (const [value, tail] of received) {
        expect(bytesOf((value as { bin: unknown }).bin).equals(bin)).toBe(true)
        expect(tail).toBe("tail")
      }
    })
  })

  it("emit with a reserved event name throws at once", () => {
    expect(() => emitter.emit("connect")).toThrow(/reserved/)
    expect(() => emitter.to("r").emit("disconnect")).toThrow(/reserved/)
    expect(() => emitter.serverSideEmit("newListener")).toThrow(/reserved/)
    expect(() => emitter.serverSideEmitWithAck("connect_error")).toThrow(/reserved/)
    expect(() => emitter.serverSideEmit("ev", () => {})).toThrow(/serverSideEmitWithAck/)
  })
})

describe("Emitter when PostgreSQL is down", () => {
  const faults = watchProcessFaults()
  const id = suiteId("emitter_down")
  const errors: Array<Error> = []
  let postgres: PrivatePostgres
  let pool: pg.Pool
  let emitter: Emitter
  // The Listener's reconnection errors go to the errorHandler too, once a request listened.
  const publishErrors = () =>
    errors.filter((error) => (error as { _tag?: string })._tag === "PublishError")

  beforeAll(async () => {
    postgres = await startPrivatePostgres()
    pool = makePool({ connectionString: postgres.url, max: 2 })
    emitter = new Emitter(pool, "/", {
      channelPrefix: id,
      tableName: id,
      publishTimeout: 1000,
      requestsTimeout: 1000,
      errorHandler: (error) => void errors.push(error),
    })
  })

  afterAll(async () => {
    faults.stop()
    await emitter?.close()
    await pool?.end()
    await postgres?.destroy()
  })

  it("rejects with a PublishError, reports to errorHandler, never crashes, and recovers", async () => {
    await expect(emitter.emit("x", "before")).resolves.toBeUndefined()
    expect(errors).toEqual([])

    await postgres.stop()

    const awaited = emitter.emit("x", "down")
    await expect(awaited).rejects.toBeInstanceOf(PublishError)
    await expect(awaited).rejects.toMatchObject({ _tag: "PublishError" })
    await eventually(() => publishErrors().length === 1)

    // Fire and forget: no unhandled rejection, the error handler still hears about it.
    void emitter.emit("x", "forgotten")
    await eventually(() => publishErrors().length === 2)
    // Socket management and server-side events fail the same way.
    await expect(emitter.to("r").socketsJoin("s")).rejects.toMatchObject({ _tag: "PublishError" })
    await eventually(() => publishErrors().length === 3)

    await postgres.start()
    await expect(emitter.emit("x", "after")).resolves.toBeUndefined()
    await expect(emitter.serverSideEmit("y")).resolves.toBeUndefined()
    // One report per failed publish, and nothing else: no loop of errors.
    expect(publishErrors()).toHaveLength(3)
    expect(errors).toHaveLength(3)
    expect(faults.faults).toEqual([])
  })

  it("requests reject with an error, ignored ones included, and work again once it is back", async () => {
    await postgres.stop()
    errors.length = 0
    // Ignored on purpose: must not become unhandled rejections.
    void emitter.fetchSockets()
    void emitter.serverSideEmitWithAck("ignored")
    await expect(emitter.fetchSockets()).rejects.toBeInstanceOf(Error)
    await expect(emitter.to("r").fetchSockets()).rejects.toBeInstanceOf(Error)
    await eventually(() => publishErrors().length === 4)
    expect(faults.faults).toEqual([])

    await postgres.start()
    // No server runs on this database: no one to ask, an empty answer.
    await eventually(async () => (await emitter.fetchSockets()).length === 0, { timeout: 10_000 })
    expect(await emitter.serverSideEmitWithAck("nobody")).toEqual([])
    expect(faults.faults).toEqual([])
  })
})
