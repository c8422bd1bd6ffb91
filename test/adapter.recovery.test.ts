/**
 * Connection state recovery across the servers of a cluster, with real servers, real clients and
 * real PostgreSQL: a client whose transport closes comes back on any server with the same id,
 * rooms and data, and gets every stored packet it missed (and only those), in offset order.
 */
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import pg from "pg"
import type { ServerOptions } from "socket.io"
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { Emitter } from "../src/index.js"
import * as Metrics from "../src/Metrics.js"
import { killFixture } from "./fixtures/faults.js"
import { type ChildNode, startCluster, type Cluster } from "./utils/nodes.js"
import { collect, connectClient, eventually, waitFor } from "./utils/cluster.js"
import { databaseUrl, makePool } from "./utils/postgres.js"
import { startProxy } from "./utils/proxy.js"
import {
  assertIncreasingOffsets,
  bytesOf,
  dropTransport,
  emitStored,
  lastOffsetOf,
  offsetCounter,
  offsetOf,
  pidOf,
  recorder,
  recoveryTables,
  resume,
  sessionRow,
  waitForOffset,
  withoutOffset,
  type Received,
} from "./utils/recovery.js"

const recoveryOn = (maxDisconnectionDuration = 60_000): Partial<ServerOptions> => ({
  connectionStateRecovery: { maxDisconnectionDuration },
})

/** The restore counters of this process (the servers of a test run in it, on the default registry). */
const restoreCounts = () =>
  Effect.runPromise(
    Effect.all({
      restored: Metric.value(Metrics.sessionsRestored),
      notFound: Metric.value(
        Metric.withAttributes(Metrics.restoresFailed, { reason: "not_found" }),
      ),
      error: Metric.value(Metric.withAttributes(Metrics.restoresFailed, { reason: "error" })),
    }),
  ).then(({ restored, notFound, error }) => ({
    restored: restored.count,
    notFound: notFound.count,
    error: error.count,
  }))

/** A describe's own cluster (recovery on unless told), and the clients made by `resume`. */
const suite = (
  name: string,
  size: number,
  serverOptions: Partial<ServerOptions> = recoveryOn(),
) => {
  const state = {
    cluster: undefined as unknown as Cluster,
    /** Clients created by `resume`; disconnected after each test. */
    resumed: [] as Array<ClientSocket>,
  }
  beforeAll(async () => {
    state.cluster = await startCluster(name, { nodes: size, serverOptions })
  })
  afterEach(async () => {
    for (const client of state.resumed.splice(0)) client.disconnect()
    await state.cluster.disconnectClients()
  })
  afterAll(() => state.cluster?.close())
  return state
}

/** The server-side socket of a connected client, on whichever server holds it. */
const serverSocket = (cluster: Cluster, client: ClientSocket) => {
  for (const server of cluster.nodes) {
    const socket = server.io.of("/").sockets.get(client.id!)
    if (socket !== undefined) return socket
  }
  throw new Error(`no server holds socket ${client.id}`)
}

/** Emits a marker from `server` to everybody and waits until `client` has it. */
const barrier = async (cluster: Cluster, server: number, client: ClientSocket) => {
  const marker = waitFor(client, "marker", 10_000)
  cluster.nodes[server]!.io.emit("marker")
  await marker
}

/** The events of `received` other than the barriers' markers. */
const withoutMarkers = (received: ReadonlyArray<Received>) =>
  received.filter((packet) => packet.event !== "marker")

describe("recovery: same server and another server", () => {
  const s = suite("recovery_restore", 3)

  it.each([
    ["the same server", 0],
    ["another server", 1],
  ])(
    "restores on %s the id, rooms, data and every missed packet in offset order, filtered by rooms",
    async (_, target) => {
      const { cluster } = s
      const io = (i: number) => cluster.nodes[i]!.io
      const client = await cluster.connect(0)
      const bystander = await cluster.connect(2)
      const socket = serverSocket(cluster, client)
      socket.join(["red", "blue"])
      const data = {
        user: "alice",
        avatar: Buffer.from([0, 1, 2, 255]),
        nested: { tags: ["a", "b"], deep: { n: 1.5, none: null, list: [{ x: "y" }] } },
      }
      socket.data = data
      const log = recorder()
      log.attach(client)
      const first = await emitStored(cluster.admin, cluster.id, () => io(1).emit("ev", 0))
      await eventually(() => log.received.length === 1)
      expect(lastOffsetOf(client)).toBe(String(first))
      const sid = client.id
      const pid = pidOf(client)

      await dropTransport(client, cluster.admin, cluster.id)
      const other = serverSocket(cluster, bystander)
      // What it missed, one after the other from every server; `null`: not for this client.
      const missed: Array<[() => unknown, Array<unknown> | null]> = [
        [() => io(0).emit("ev", 1), ["ev", 1]],
        [() => io(1).to("red").emit("ev", 2), ["ev", 2]],
        [() => io(2).to("green").emit("ev", -1), null],
        [() => io(0).except("blue").emit("ev", -2), null],
        [() => io(1).to("red").except("blue").emit("ev", -3), null],
        [() => io(2).to(["green", "blue"]).emit("ev", 3), ["ev", 3]],
        [() => io(0).except("green").emit("bin", 4, Buffer.from("four")), ["bin", 4, "four"]],
        [() => other.broadcast.emit("ev", 5), ["ev", 5]],
        [() => io(1).to(sid!).emit("ev", 6), ["ev", 6]],
        [() => io(2).to(other.id).emit("ev", -4), null],
        [() => other.to("red").emit("ev", 7), ["ev", 7]],
        [
          () =>
            io(0)
              .to("blue")
              .except(other.id)
              .emit("obj", { a: [1, { b: "c" }] }),
          ["obj", { a: [1, { b: "c" }] }],
        ],
      ]
      const expected: Array<[Array<unknown>, bigint]> = [[["ev", 0], first]]
      for (const [emit, packet] of missed) {
        const offset = await emitStored(cluster.admin, cluster.id, emit)
        if (packet !== null) expected.push([packet, offset])
      }

      const before = await restoreCounts()
      const next = await resume(client, cluster.nodes[target]!.url, {
        attach: log.attach,
        track: s.resumed,
      })
      expect(next.recovered).toBe(true)
      expect(await restoreCounts()).toEqual({ ...before, restored: before.restored + 1 })
      expect(next.id).toBe(sid)
      expect(pidOf(next)).toBe(pid)
      const restored = cluster.nodes[target]!.io.of("/").sockets.get(sid!)!
      expect(restored).toBeDefined()
      expect(new Set(restored.rooms)).toEqual(new Set([sid, "red", "blue"]))
      expect(restored.data).toEqual(data)
      expect(Buffer.isBuffer(restored.data.avatar)).toBe(true)
      // Anything else (a duplicate, a packet of another room) would arrive before the marker.
      await barrier(cluster, 1, next)

      const got = withoutMarkers(log.received)
      expect(
        got.map(({ event, args }) => {
          const rest = withoutOffset(args)
          return [
            event,
            ...rest.map((arg) => (event === "bin" && arg !== 4 ? bytesOf(arg).toString() : arg)),
          ]
        }),
      ).toEqual(expected.map(([packet]) => packet))
      expect(got.map(({ args }) => offsetOf(args))).toEqual(
        expected.map(([, offset]) => String(offset)),
      )
      assertIncreasingOffsets(log.received)

      // The session was taken: presenting it again while the socket is connected gives a new one.
      const again = await resume(client, cluster.nodes[2]!.url, { track: s.resumed })
      expect(again.recovered).toBe(false)
      expect(await restoreCounts()).toEqual({
        ...before,
        restored: before.restored + 1,
        notFound: before.notFound + 1,
      })
      expect(again.id).not.toBe(sid)
      expect(next.connected).toBe(true)
    },
  )

  it("recovers again and again on other servers: nothing lost, nothing twice, offsets increasing", async () => {
    const { cluster } = s
    const io = (i: number) => cluster.nodes[i]!.io
    const log = recorder()
    const client = await cluster.connect(0)
    log.attach(client)
    serverSocket(cluster, client).join("red")
    const sid = client.id
    const expected: Array<[number, bigint]> = []
    let n = 0
    // One packet from each server in turn, each committed before the next is sent.
    const emitSome = async (count: number) => {
      for (let i = 0; i < count; i++) {
        const value = n++
        const from = value % 3
        const emit =
          value % 2 === 0
            ? () => io(from).emit("ev", value)
            : () => io(from).to("red").emit("ev", value)
        expected.push([value, await emitStored(cluster.admin, cluster.id, emit)])
      }
    }

    await emitSome(2)
    await eventually(() => log.received.length === 2)
    await dropTransport(client, cluster.admin, cluster.id)
    await emitSome(6)
    const second = await resume(client, cluster.nodes[1]!.url, {
      attach: log.attach,
      track: s.resumed,
    })
    expect(second.recovered).toBe(true)
    expect(second.id).toBe(sid)
    // Live again on server 1.
    await emitSome(3)
    await eventually(() => log.received.length === expected.length)
    await dropTransport(second, cluster.admin, cluster.id)
    await emitSome(5)
    const third = await resume(second, cluster.nodes[2]!.url, {
      attach: log.attach,
      track: s.resumed,
    })
    expect(third.recovered).toBe(true)
    expect(third.id).toBe(sid)
    expect(new Set(cluster.nodes[2]!.io.of("/").sockets.get(sid!)!.rooms)).toEqual(
      new Set([sid, "red"]),
    )
    await emitSome(3)
    await barrier(cluster, 0, third)

    const got = withoutMarkers(log.received)
    expect(got.map(({ args }) => withoutOffset(args))).toEqual(expected.map(([v]) => [v]))
    expect(got.map(({ args }) => offsetOf(args))).toEqual(expected.map(([, o]) => String(o)))
    for (const { args } of log.received) expect(offsetOf(args)).toMatch(/^[1-9]\d*$/)
    assertIncreasingOffsets(log.received)
  })
})

describe("recovery: when a session cannot be restored", () => {
  const MAX_DISCONNECTION = 1500
  const s = suite("recovery_expiry", 2, recoveryOn(MAX_DISCONNECTION))

  /** A client of server 0 that received one packet, then lost its transport. */
  const disconnectedClient = async () => {
    const { cluster } = s
    const client = await cluster.connect(0)
    serverSocket(cluster, client).join("red")
    const got = waitFor(client, "ev")
    await emitStored(cluster.admin, cluster.id, () => cluster.nodes[1]!.io.emit("ev", 1))
    await got
    const sid = client.id!
    await dropTransport(client, cluster.admin, cluster.id)
    return { client, sid }
  }

  /** Connects with `old`'s session and checks it is a new socket, promptly and without error. */
  const expectNewSocket = async (
    old: { readonly client: ClientSocket; readonly sid: string } | undefined,
    options: { readonly pid?: string; readonly offset?: string } = {},
  ) => {
    const { cluster } = s
    const log = recorder()
    const next = await resume(old?.client, cluster.nodes[1]!.url, {
      ...options,
      attach: log.attach,
      track: s.resumed,
      timeoutMs: 5000,
    })
    expect(next.recovered).toBe(false)
    if (old !== undefined) expect(next.id).not.toBe(old.sid)
    // A new socket: a new private id, no room but its own, nothing replayed.
    expect(pidOf(next)).not.toBe(options.pid ?? (old === undefined ? undefined : pidOf(old.client)))
    expect(typeof pidOf(next)).toBe("string")
    const socket = cluster.nodes[1]!.io.of("/").sockets.get(next.id!)!
    expect([...socket.rooms]).toEqual([next.id])
    expect(socket.data).toEqual({})
    await barrier(cluster, 0, next)
    expect(withoutMarkers(log.received)).toEqual([])
    return next
  }

  it("an expired session gives a new socket, with nothing replayed", async () => {
    const { cluster } = s
    const old = await disconnectedClient()
    await emitStored(cluster.admin, cluster.id, () => cluster.nodes[0]!.io.emit("ev", 2))
    await eventually(
      async () => {
        const row = await sessionRow(cluster.admin, cluster.id, pidOf(old.client))
        return row === undefined || row.expired
      },
      { timeout: MAX_DISCONNECTION + 10_000, interval: 100, message: "the session expired" },
    )
    await expectNewSocket(old)
  })

  it("an unknown private id gives a new socket", async () => {
    const { cluster } = s
    const { last } = await offsetCounter(cluster.admin, cluster.id)
    await expectNewSocket(undefined, { pid: "no-such-session-id", offset: String(last) })
  })

  it("a restore that PostgreSQL fails gives a new socket, and is counted as failed", async () => {
    const { cluster } = s
    const old = await disconnectedClient()
    const { sessions } = recoveryTables(cluster.id)
    const before = await restoreCounts()
    // The restore's statement fails: its table is not there.
    await cluster.admin.query(`ALTER TABLE ${sessions} RENAME TO ${cluster.id}_elsewhere`)
    try {
      await expectNewSocket(old)
    } finally {
      await cluster.admin.query(`ALTER TABLE ${cluster.id}_elsewhere RENAME TO ${sessions}`)
    }
    expect(await restoreCounts()).toEqual({ ...before, error: before.error + 1 })
  })

  it.each(["abc", "-1", "1.5", ""])(
    "an offset that is not one (%j) gives a new socket",
    async (offset) => {
      const old = await disconnectedClient()
      await expectNewSocket(old, { offset })
    },
  )

  it("an offset above the namespace's counter gives a new socket", async () => {
    const { cluster } = s
    const old = await disconnectedClient()
    const { last } = await offsetCounter(cluster.admin, cluster.id)
    await expectNewSocket(old, { offset: String(last + 1000n) })
  })

  it("an offset below what the cleanup kept gives a new socket", async () => {
    const { cluster } = s
    const old = await disconnectedClient()
    const offset = BigInt(lastOffsetOf(old.client)!)
    await emitStored(cluster.admin, cluster.id, () => cluster.nodes[1]!.io.emit("ev", 2))
    await emitStored(cluster.admin, cluster.id, () => cluster.nodes[1]!.io.emit("ev", 3))
    const { offsets } = recoveryTables(cluster.id)
    const before = await offsetCounter(cluster.admin, cluster.id)
    // As if the cleanup had deleted the packets up to `offset + 1`: the client may miss some.
    await cluster.admin.query(`UPDATE ${offsets} SET cleaned = $1 WHERE nsp = '/'`, [
      String(offset + 1n),
    ])
    try {
      await expectNewSocket(old)
    } finally {
      await cluster.admin.query(`UPDATE ${offsets} SET cleaned = $1 WHERE nsp = '/'`, [
        String(before.cleaned),
      ])
    }
  })
})

describe("recovery: a burst missed while disconnected", () => {
  const s = suite("recovery_burst", 3)

  it("replays 3000 packets from two servers, binary and large ones included, in order and intact", async () => {
    const { cluster } = s
    const client = await cluster.connect(0)
    const log = recorder()
    log.attach(client)
    await emitStored(cluster.admin, cluster.id, () => cluster.nodes[1]!.io.emit("warm"))
    await eventually(() => log.received.length === 1)
    await dropTransport(client, cluster.admin, cluster.id)

    const perServer = 1500
    // Binary every 10th, a JSON argument of more than 8000 bytes (multi-byte text) every 100th.
    const payload = (from: number, seq: number): unknown =>
      seq % 10 === 0
        ? Buffer.from(`${from}:${seq}:${"\u0000\u00ff".repeat(seq % 7)}`, "latin1")
        : seq % 100 === 55
          ? { from, seq, text: `é€😀`.repeat(1000) + seq }
          : { from, seq }
    const { last: base } = await offsetCounter(cluster.admin, cluster.id)
    const emitting = [1, 2].map(async (from) => {
      for (let seq = 0; seq < perServer;) {
        for (let i = 0; i < 50 && seq < perServer; i++, seq++) {
          cluster.nodes[from]!.io.emit("burst", from, seq, payload(from, seq))
        }
        await new Promise<void>((resolve) => setImmediate(resolve))
      }
    })
    await Promise.all(emitting)
    await waitForOffset(cluster.admin, cluster.id, base + BigInt(2 * perServer), {
      timeout: 30_000,
    })

    const next = await resume(client, cluster.nodes[2]!.url, {
      attach: log.attach,
      track: s.resumed,
      timeoutMs: 30_000,
    })
    expect(next.recovered).toBe(true)
    await eventually(() => log.received.length >= 1 + 2 * perServer, { timeout: 30_000 })
    await barrier(cluster, 1, next)

    const burst = withoutMarkers(log.received).slice(1)
    expect(burst).toHaveLength(2 * perServer)
    assertIncreasingOffsets(log.received)
    expect(offsetOf(burst[0]!.args)).toBe(String(base + 1n))
    expect(offsetOf(burst[burst.length - 1]!.args)).toBe(String(base + BigInt(2 * perServer)))
    const next_ = new Map([
      [1, 0],
      [2, 0],
    ])
    for (const { event, args } of burst) {
      expect(event).toBe("burst")
      const [from, seq, value] = withoutOffset(args) as [number, number, unknown]
      expect(seq).toBe(next_.get(from))
      next_.set(from, seq + 1)
      const sent = payload(from, seq)
      if (Buffer.isBuffer(sent)) expect(bytesOf(value).equals(sent)).toBe(true)
      else expect(value).toEqual(sent)
    }
    expect([...next_.values()]).toEqual([perServer, perServer])
  })
})

describe("recovery: private emits", () => {
  const s = suite("recovery_private", 2)
  let listener: pg.Client

  beforeAll(async () => {
    listener = new pg.Client({ connectionString: databaseUrl() })
    listener.on("error", () => {})
    await listener.connect()
  })
  afterAll(async () => {
    await listener?.end().catch(() => {})
  })

  it("socket.emit reaches the client with an offset and is stored, but is not notified", async () => {
    const { cluster } = s
    const client = await cluster.connect(0)
    const socket = serverSocket(cluster, client)
    const notified: Array<{ type: number; data?: { packet?: { data?: Array<unknown> } } }> = []
    listener.on("notification", (message) => {
      const parsed = JSON.parse(message.payload ?? "null")
      if (parsed?.type === 3) notified.push(parsed)
    })
    await listener.query(`LISTEN "${cluster.id}#/"`)

    const got = waitFor(client, "p")
    socket.emit("p", 1)
    const args = await got
    expect(withoutOffset(args)).toEqual([1])
    const offset = offsetOf(args)
    const { packets } = recoveryTables(cluster.id)
    const rows = await cluster.admin.query<{ rooms: Array<string>; excepts: Array<string> }>(
      `SELECT rooms, excepts FROM ${packets} WHERE nsp = '/' AND "offset" = $1`,
      [offset],
    )
    expect(rows.rows).toEqual([{ rooms: [client.id], excepts: [] }])

    // The broadcast is stored after the private emit: if that one had been notified, it would
    // come first.
    const pub = waitFor(client, "pub")
    cluster.nodes[0]!.io.emit("pub", 2)
    expect(BigInt(offsetOf(await pub))).toBeGreaterThan(BigInt(offset))
    await eventually(() => notified.length >= 1, { message: "the broadcast is notified" })
    expect(notified[0]!.data?.packet?.data?.[0]).toBe("pub")
    expect(notified.some((n) => n.data?.packet?.data?.[0] === "p")).toBe(false)
    await listener.query(`UNLISTEN "${cluster.id}#/"`)
  })

  it("a private emit while the socket is disconnected is replayed on recovery", async () => {
    const { cluster } = s
    const client = await cluster.connect(0)
    const socket = serverSocket(cluster, client)
    const log = recorder()
    log.attach(client)
    const sid = client.id!
    const first = await emitStored(cluster.admin, cluster.id, () => socket.emit("p", 1))
    await eventually(() => log.received.length === 1)
    await dropTransport(client, cluster.admin, cluster.id)
    // The server still holds the socket object, e.g. a job that finishes later.
    const second = await emitStored(cluster.admin, cluster.id, () => socket.emit("p", 2))
    const third = await emitStored(cluster.admin, cluster.id, () =>
      cluster.nodes[1]!.io.to(sid).emit("p", 3),
    )
    const next = await resume(client, cluster.nodes[1]!.url, {
      attach: log.attach,
      track: s.resumed,
    })
    expect(next.recovered).toBe(true)
    const fourth = await emitStored(cluster.admin, cluster.id, () =>
      serverSocket(cluster, next).emit("p", 4),
    )
    await barrier(cluster, 0, next)
    expect(withoutMarkers(log.received)).toEqual([
      { event: "p", args: [1, String(first)] },
      { event: "p", args: [2, String(second)] },
      { event: "p", args: [3, String(third)] },
      { event: "p", args: [4, String(fourth)] },
    ])
  })
})

describe("recovery: what is not replayed", () => {
  const s = suite("recovery_not_stored", 2)

  it("volatile emits and emits with acknowledgement are not stored nor replayed; local emits still work", async () => {
    const { cluster } = s
    const io0 = cluster.nodes[0]!.io
    const io1 = cluster.nodes[1]!.io
    const client = await cluster.connect(0)
    const local = await cluster.connect(0)
    const remote = await cluster.connect(1)
    remote.on("x", (n: number, ack: (answer: number) => void) => ack(n * 2))
    local.on("x", (n: number, ack: (answer: number) => void) => ack(n * 3))
    const log = recorder()
    log.attach(client)
    await emitStored(cluster.admin, cluster.id, () => io1.emit("ev", 0))
    await eventually(() => log.received.length === 1)
    await dropTransport(client, cluster.admin, cluster.id)
    const before = await offsetCounter(cluster.admin, cluster.id)

    const volatile = Promise.all([waitFor(remote, "v"), waitFor(local, "v")])
    io0.volatile.emit("v", 1)
    expect(await volatile).toEqual([[1], [1]])
    const answers = await io1.timeout(5000).emitWithAck("x", 2)
    expect([...answers].sort()).toEqual([4, 6])
    const localOnly = waitFor(local, "l")
    io0.local.emit("l", 3)
    expect(await localOnly).toEqual([3])
    const stored = await emitStored(cluster.admin, cluster.id, () => io1.emit("ev", 4))
    expect(stored).toBe(before.last + 1n)

    const next = await resume(client, cluster.nodes[1]!.url, {
      attach: log.attach,
      track: s.resumed,
    })
    expect(next.recovered).toBe(true)
    await barrier(cluster, 0, next)
    expect(withoutMarkers(log.received).map(({ event, args }) => [event, ...args])).toEqual([
      ["ev", 0, String(before.last)],
      ["ev", 4, String(stored)],
    ])
  })
})

describe("recovery: concurrent emission while clients move", () => {
  const s = suite("recovery_race", 3)

  it("each client gets every packet exactly once, in offset order, while recovering mid-stream", async () => {
    const { cluster } = s
    const N = 400
    const ROUNDS = 4
    const WINDOW = 40
    const total = 3 * N
    const logs = [0, 1, 2].map(() => recorder(["warm"]))
    const current: Array<ClientSocket> = []
    for (const k of [0, 1, 2]) {
      current[k] = await cluster.connect(k)
      logs[k]!.attach(current[k]!)
    }
    // Keeps the emission going while the clients move: a server is at most WINDOW packets ahead
    // of what this client (which never moves) received from it.
    const pacer = await cluster.connect(0)
    const paced = [0, 0, 0]
    pacer.on("ev", (from: number) => void paced[from]!++)
    // Every client needs an offset to present.
    const warm = Promise.all(current.map((client) => waitFor(client, "warm")))
    await emitStored(cluster.admin, cluster.id, () => cluster.nodes[0]!.io.emit("warm"))
    await warm
    const { last: base } = await offsetCounter(cluster.admin, cluster.id)
    let emitted = 0
    const emitting = cluster.nodes.map(async (server, from) => {
      for (let seq = 0; seq < N;) {
        while (seq - paced[from]! >= WINDOW) {
          await eventually(() => seq - paced[from]! < WINDOW, {
            timeout: 30_000,
            interval: 2,
            message: `the pacer got server ${from}'s packets up to ${seq - WINDOW}`,
          })
        }
        for (let i = 0; i < 5 && seq < N; i++, seq++, emitted++) server.io.emit("ev", from, seq)
        await new Promise<void>((resolve) => setImmediate(resolve))
      }
    })
    const moves: Array<{ client: number; recovered: boolean; midStream: boolean }> = []
    const moving = [0, 1, 2].map(async (k) => {
      for (let round = 0; round < ROUNDS; round++) {
        // Each move starts once the client has seen its share of the stream.
        await eventually(
          () => logs[k]!.received.length >= Math.floor(((round + 1) * total) / (ROUNDS + 2)),
          { timeout: 30_000, interval: 2, message: `client ${k} round ${round}` },
        )
        await dropTransport(current[k]!, cluster.admin, cluster.id, 20_000)
        const midStream = emitted < total || paced.some((n) => n < N)
        const target = (k + round + 1) % 3
        current[k] = await resume(current[k], cluster.nodes[target]!.url, {
          attach: logs[k]!.attach,
          track: s.resumed,
          timeoutMs: 20_000,
        })
        moves.push({ client: k, recovered: current[k]!.recovered, midStream })
      }
    })
    // Where each client is, what it got from each server, and what the pacer got: for failures.
    const progress = () =>
      JSON.stringify({
        emitted,
        paced,
        moves: moves.length,
        received: logs.map(({ received }) => {
          const last = [-1, -1, -1]
          for (const { event, args } of received) {
            if (event === "ev") last[args[0] as number] = args[1] as number
          }
          return { count: received.length, last }
        }),
        on: current.map((client) =>
          cluster.nodes.findIndex((server) => server.io.of("/").sockets.has(client.id!)),
        ),
      })
    try {
      await Promise.all([...emitting, ...moving])
      await waitForOffset(cluster.admin, cluster.id, base + BigInt(total), { timeout: 30_000 })
      await eventually(() => logs.every((log) => log.received.length >= total), {
        timeout: 30_000,
        message: "every client received every packet",
      })
      await Promise.all(current.map((client) => barrier(cluster, 2, client)))
    } catch (error) {
      throw new Error(`${(error as Error).message}; progress: ${progress()}`, { cause: error })
    }

    expect(moves).toHaveLength(3 * ROUNDS)
    expect(moves.filter((move) => !move.recovered)).toEqual([])
    // Not an assertion on the code: says whether the race was really run.
    console.info(
      `recovery race: ${moves.filter((move) => move.midStream).length} of ${moves.length} moves during the emission`,
    )
    for (const [k, log] of logs.entries()) {
      const got = withoutMarkers(log.received)
      expect(got, `client ${k}`).toHaveLength(total)
      assertIncreasingOffsets(got)
      const seqs = [[], [], []] as Array<Array<number>>
      for (const { args } of got) {
        const [from, seq] = withoutOffset(args) as [number, number]
        seqs[from]!.push(seq)
      }
      const all = Array.from({ length: N }, (_, i) => i)
      expect(seqs, `client ${k}`).toEqual([all, all, all])
    }
  }, 120_000)
})

describe("recovery: packets delivered while a restore runs", () => {
  const s = suite("recovery_during_restore", 2)

  it("reach the restored socket only if they match its rooms", async () => {
    const { cluster } = s
    const io = (i: number) => cluster.nodes[i]!.io
    const client = await cluster.connect(0)
    serverSocket(cluster, client).join("blue")
    // On the restoring server, in every room: it shows what that server delivered meanwhile.
    const witness = await cluster.connect(1)
    serverSocket(cluster, witness).join(["blue", "red"])
    const log = recorder()
    log.attach(client)
    const witnessed = waitFor(witness, "ev")
    const first = await emitStored(cluster.admin, cluster.id, () => io(1).emit("ev", 0))
    await eventually(() => log.received.length === 1)
    await witnessed
    const pid = pidOf(client)
    await dropTransport(client, cluster.admin, cluster.id)

    // The restore's one statement waits for this lock on its session row, its snapshot taken
    // before: what is published meanwhile reaches it only as packets delivered during the restore.
    const { sessions } = recoveryTables(cluster.id)
    const locker = await cluster.admin.connect()
    let restoring: Promise<ClientSocket> | undefined
    try {
      await locker.query("BEGIN")
      await locker.query(`SELECT 1 FROM ${sessions} WHERE pid = $1 FOR UPDATE`, [pid])
      const lockerPid = (await locker.query<{ pid: number }>("SELECT pg_backend_pid() AS pid"))
        .rows[0]!.pid
      restoring = resume(client, cluster.nodes[1]!.url, { attach: log.attach, track: s.resumed })
      await eventually(
        async () =>
          (
            await cluster.admin.query(
              "SELECT 1 FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
              [lockerPid],
            )
          ).rowCount! > 0,
        { message: "the restore waits for the session row" },
      )
      const seen = collect(witness, "ev", 3)
      const blue = await emitStored(cluster.admin, cluster.id, () => io(1).to("blue").emit("ev", 1))
      await emitStored(cluster.admin, cluster.id, () => io(0).to("red").emit("ev", -1))
      const all = await emitStored(cluster.admin, cluster.id, () => io(0).emit("ev", 2))
      // Delivered on the restoring server while the restore still waits.
      expect((await seen).map(([n]) => n)).toEqual([1, -1, 2])
      await locker.query("ROLLBACK")

      const next = await restoring
      expect(next.recovered).toBe(true)
      await barrier(cluster, 0, next)
      expect(withoutMarkers(log.received)).toEqual([
        { event: "ev", args: [0, String(first)] },
        { event: "ev", args: [1, String(blue)] },
        { event: "ev", args: [2, String(all)] },
      ])
    } finally {
      await locker.query("ROLLBACK").catch(() => {})
      locker.release()
      await restoring?.catch(() => {})
    }
  })
})

describe("recovery: a client of a killed server", () => {
  const s = suite("recovery_killed", 2)
  let node: ChildNode | undefined

  afterAll(async () => {
    await killFixture(node)
  })

  it("connects promptly to a survivor and, once the killed server's backend is gone, is restored", async () => {
    const { cluster } = s
    node = await cluster.spawnNode("ours", { recovery: 60_000 })
    await cluster.waitForMembers("/", 3)
    const client = await connectClient(node.url, { query: { room: "blue", tag: "k" } })
    s.resumed.push(client)
    const log = recorder()
    log.attach(client)
    const first = await emitStored(cluster.admin, cluster.id, () =>
      cluster.nodes[0]!.io.to("blue").emit("ev", 1),
    )
    await eventually(() => log.received.length === 1)
    expect(log.received[0]!.args).toEqual([1, String(first)])
    const pid = pidOf(client)
    const sid = client.id
    await eventually(async () => (await sessionRow(cluster.admin, cluster.id, pid)) !== undefined, {
      message: "the live session is written",
    })
    const { sessions } = recoveryTables(cluster.id)
    const owner = (
      await cluster.admin.query<{ owner_pid: number }>(
        `SELECT owner_pid FROM ${sessions} WHERE pid = $1`,
        [pid],
      )
    ).rows[0]!.owner_pid

    node.child.kill("SIGKILL")
    await node.exited
    await eventually(
      async () =>
        (await cluster.admin.query(`SELECT 1 FROM pg_stat_activity WHERE pid = $1`, [owner]))
          .rowCount === 0,
      { message: "the killed server's LISTEN backend is gone" },
    )
    const missed = [
      await emitStored(cluster.admin, cluster.id, () =>
        cluster.nodes[0]!.io.to("blue").emit("ev", 2),
      ),
      await emitStored(cluster.admin, cluster.id, () =>
        cluster.nodes[1]!.io.to("red").emit("ev", -1),
      ),
      await emitStored(cluster.admin, cluster.id, () => cluster.nodes[1]!.io.emit("ev", 3)),
    ]

    const next = await resume(client, cluster.nodes[1]!.url, {
      attach: log.attach,
      track: s.resumed,
      timeoutMs: 5000,
    })
    expect(next.recovered).toBe(true)
    expect(next.id).toBe(sid)
    const socket = cluster.nodes[1]!.io.of("/").sockets.get(sid!)!
    expect(socket.rooms.has("blue")).toBe(true)
    expect(socket.data).toEqual({ from: "child", at: "k" })
    await barrier(cluster, 0, next)
    expect(withoutMarkers(log.received)).toEqual([
      { event: "ev", args: [1, String(first)] },
      { event: "ev", args: [2, String(missed[0])] },
      { event: "ev", args: [3, String(missed[2])] },
    ])
  })
})

describe("recovery off", () => {
  const s = suite("recovery_off", 2, {})

  it("clients receive exactly the arguments sent, and no recovery table is created", async () => {
    const { cluster } = s
    const client = await cluster.connect(0)
    expect(pidOf(client)).toBeUndefined()
    const a = waitFor(client, "a")
    cluster.nodes[1]!.io.emit("a", "a string last")
    expect(await a).toEqual(["a string last"])
    const b = waitFor(client, "b")
    cluster.nodes[1]!.io.emit("b", 1, { c: [2] })
    expect(await b).toEqual([1, { c: [2] }])
    const c = waitFor(client, "c")
    serverSocket(cluster, client).emit("c")
    expect(await c).toEqual([])
    const d = waitFor(client, "d")
    cluster.nodes[0]!.io.to(client.id!).emit("d", "x")
    expect(await d).toEqual(["x"])
    expect(lastOffsetOf(client)).toBeUndefined()

    const tables = Object.values(recoveryTables(cluster.id))
    const { rows } = await cluster.admin.query<{ name: string | null }>(
      `SELECT to_regclass(t) AS name FROM unnest($1::text[]) AS t`,
      [tables],
    )
    expect(rows).toEqual(tables.map(() => ({ name: null })))
  })
})

describe("recovery: an emitter's broadcasts", () => {
  const s = suite("recovery_emitter", 2)
  let pool: pg.Pool
  let emitter: Emitter

  beforeAll(() => {
    pool = makePool({ max: 2 })
    emitter = new Emitter(pool, "/", {
      channelPrefix: s.cluster.id,
      tableName: s.cluster.id,
      recoveryTablePrefix: s.cluster.id,
      connectionStateRecovery: true,
    })
  })
  afterAll(async () => {
    await emitter?.close()
    await pool?.end()
  })

  it("carry an offset and are replayed to a client that missed them", async () => {
    const { cluster } = s
    const client = await cluster.connect(0)
    const witness = await cluster.connect(1)
    serverSocket(cluster, client).join("red")
    const log = recorder()
    log.attach(client)
    const seen = [waitFor(client, "e"), waitFor(witness, "e")]
    await emitter.emit("e", 0)
    const [{ last: first }] = [await offsetCounter(cluster.admin, cluster.id)]
    expect(await Promise.all(seen)).toEqual([
      [0, String(first)],
      [0, String(first)],
    ])

    await dropTransport(client, cluster.admin, cluster.id)
    await emitter.emit("e", 1)
    const second = (await offsetCounter(cluster.admin, cluster.id)).last
    await emitter.to("red").emit("e", 2)
    const third = (await offsetCounter(cluster.admin, cluster.id)).last
    await emitter.to("green").emit("e", -1)
    await emitter.except("red").emit("e", -2)
    await emitter.volatile.emit("e", -3)
    const fourth = await emitStored(cluster.admin, cluster.id, () => emitter.emit("e", 4))

    const next = await resume(client, cluster.nodes[1]!.url, {
      attach: log.attach,
      track: s.resumed,
    })
    expect(next.recovered).toBe(true)
    await barrier(cluster, 0, next)
    expect(withoutMarkers(log.received)).toEqual([
      { event: "e", args: [0, String(first)] },
      { event: "e", args: [1, String(second)] },
      { event: "e", args: [2, String(third)] },
      { event: "e", args: [4, String(fourth)] },
    ])
  })
})

describe("recovery: a server that does not listen yet", () => {
  const s = suite("recovery_not_listening", 2)

  // A server restarted in a rolling deploy gets its clients back at once, while its LISTEN
  // connection may still be on its way. A restore's snapshot taken then would miss the packets
  // stored until the LISTEN holds: they reach neither the snapshot nor this server.
  it("restores only once its namespace listens, so the packets stored meanwhile are not missed", async () => {
    const { cluster } = s
    const client = await cluster.connect(0)
    const log = recorder()
    log.attach(client)
    await emitStored(cluster.admin, cluster.id, () => cluster.nodes[1]!.io.emit("ev", 1))
    await eventually(() => log.received.length === 1)
    await dropTransport(client, cluster.admin, cluster.id)
    await emitStored(cluster.admin, cluster.id, () => cluster.nodes[1]!.io.emit("ev", 2))

    // A new server whose pool holds two open connections, and whose new connections (its LISTEN
    // connection among them) are held by a proxy until released.
    const proxy = await startProxy({ target: databaseUrl() })
    const pool = makePool({ connectionString: proxy.url, max: 4, idleTimeoutMillis: 0 })
    try {
      const warm = await Promise.all([pool.connect(), pool.connect()])
      for (const connection of warm) connection.release()
      proxy.blackHole({ only: () => false, newConnections: true })
      const late = await cluster.addNode("ours", { pool })
      const adapter = late.adapter() as unknown as {
        restoreSession: (...args: Array<unknown>) => Promise<unknown>
      }
      const restoreCalled = new Promise<void>((resolve) => {
        const restore = adapter.restoreSession.bind(adapter)
        adapter.restoreSession = (...args) => {
          resolve()
          return restore(...args)
        }
      })
      const resumed = resume(client, late.url, { attach: log.attach, track: s.resumed })
      await restoreCalled
      // Stored while the new server restores but does not listen yet.
      await emitStored(cluster.admin, cluster.id, () => cluster.nodes[1]!.io.emit("ev", 3))
      proxy.restore()
      const back = await resumed
      expect(back.recovered).toBe(true)
      await barrier(cluster, 1, back)
      const values = withoutMarkers(log.received).map(({ args }) => withoutOffset(args))
      expect(values).toEqual([[1], [2], [3]])
    } finally {
      await cluster.closeNode(cluster.running().at(-1)!)
      await proxy.close()
      await pool.end()
    }
  })
})
