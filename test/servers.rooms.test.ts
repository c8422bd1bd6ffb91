/**
 * Room channels placed by their own name over several PostgreSQL servers (issue 14): in the
 * dynamic subscription modes, with `roomPlacement: "room"` (the default), one namespace's rooms
 * spread over every server. 3 Socket.IO servers, each given the pools of the same two (then three)
 * embedded PostgreSQL servers; one namespace, many rooms, a client of every node in every room.
 */
import pg from "pg"
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import type { PostgresAdapter } from "../src/Adapter.js"
import { channelName, roomChannelName } from "../src/Channel.js"
import { createAdapter, Emitter } from "../src/index.js"
import * as Placement from "../src/Placement.js"
import {
  collect,
  connectClient,
  eventually,
  startServer,
  type TestServer,
} from "./utils/cluster.js"
import {
  startPrivatePostgres,
  type PrivatePostgres,
  openPools,
  listenOn,
} from "./utils/privatePostgres.js"

const ROOMS = Array.from({ length: 24 }, (_, i) => `room-${i}`)
const MODE =
  process.env.TEST_SUBSCRIPTION_MODE === "dynamic-private" ? "dynamic-private" : "dynamic"

// Our own LISTEN on every room channel of each server: where each broadcast travelled.
// The backends of a server whose last statement was a LISTEN or UNLISTEN of ours: our LISTEN
// connections (the liveness ping is a LISTEN too), not the pools'.
const listenConnections = async (pool: pg.Pool, prefix: string): Promise<number> => {
  const { rows } = await pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_stat_activity
      WHERE pid <> pg_backend_pid() AND query ~* '^\\s*(UN)?LISTEN' AND strpos(query, $1) > 0`,
    [prefix],
  )
  return rows[0]!.n
}

describe.each([
  { count: 2, named: false },
  { count: 3, named: true },
])("$count PostgreSQL servers, rooms placed by their own name", ({ count, named }) => {
  const PREFIX = `rooms${count}`
  let databases: Array<PrivatePostgres>
  let nodes: Array<TestServer>
  const pools: Array<pg.Pool> = []
  const clients: Array<ClientSocket> = []
  let placement: Placement.Placement
  const roomChannel = (room: string) => roomChannelName(PREFIX, "/", room)
  const roomHome = (room: string) => placement.indexOf(roomChannel(room))
  let nspHome: number

  const poolsOf = () =>
    openPools(databases, pools).map((pool, i) => (named ? { pool, name: `pg-${"abc"[i]}` } : pool))

  const options = {
    channelPrefix: PREFIX,
    subscriptionMode: MODE,
    heartbeatInterval: 300,
    heartbeatTimeout: 2000,
    requestsTimeout: 3000,
    publishTimeout: 1000,
    reconnectMaxDelay: 300,
    errorHandler: () => {},
  } as const

  beforeAll(async () => {
    databases = await Promise.all(Array.from({ length: count }, () => startPrivatePostgres()))
    const names = Placement.decodeServersSync(poolsOf(), Placement.poolSettings).map((s) => s.name)
    placement = Placement.make(names)
    nspHome = placement.indexOf(channelName(PREFIX, "/"))
    nodes = await Promise.all(
      [0, 1, 2].map(() => startServer({ adapter: createAdapter(poolsOf(), options) })),
    )
    for (const node of nodes) {
      node.io.on("connection", (socket) => {
        socket.on("join", (rooms: Array<string>, ack: () => void) => {
          socket.join(rooms)
          ack()
        })
        socket.on("leave", (room: string, ack: () => void) => {
          socket.leave(room)
          ack()
        })
      })
    }
    await eventually(
      async () =>
        (await Promise.all(nodes.map((node) => node.io.of("/").adapter.serverCount()))).every(
          (n) => n === 3,
        ),
      { timeout: 15_000, message: "every node counts 3 servers" },
    )
  }, 60_000)

  afterEach(() => {
    for (const client of clients.splice(0)) client.disconnect()
  })

  afterAll(async () => {
    await Promise.all((nodes ?? []).map((node) => node.close()))
    await Promise.all(pools.map((pool) => pool.end()))
    await Promise.all((databases ?? []).map((db) => db.destroy()))
  })

  const adapterOf = (node: TestServer) => node.io.of("/").adapter as unknown as PostgresAdapter

  /** A client of every node, each in every room; resolves once every node listens on them. */
  const joinEverywhere = async (rooms: ReadonlyArray<string> = ROOMS) => {
    const each = await Promise.all(nodes.map((node) => connectClient(node.url)))
    clients.push(...each)
    await Promise.all(each.map((client) => client.emitWithAck("join", rooms)))
    await eventually(
      () =>
        nodes.every((node) => {
          const listened = adapterOf(node).listenStatus().roomChannels ?? []
          return rooms.every((room) => listened.includes(roomChannel(room)))
        }),
      { timeout: 10_000, message: "every node listens on every room" },
    )
    return each
  }

  it("spreads one namespace's rooms over every server: each room's broadcast travels on its own server only", async () => {
    const homes = ROOMS.map(roomHome)
    expect(new Set(homes).size).toBe(count)
    expect(homes.some((home) => home !== nspHome)).toBe(true)
    const listeners = await Promise.all(databases.map((db) => listenOn(db, ROOMS.map(roomChannel))))
    try {
      const each = await joinEverywhere()
      for (const room of ROOMS) {
        const got = each.map((client) => collect(client, "hello", 1))
        nodes[ROOMS.indexOf(room) % 3]!.io.to(room).emit("hello", room)
        for (const g of got) expect((await g)[0]![0]).toBe(room)
      }
      const heardOn = (s: number, room: string) => listeners[s]!.heard.includes(roomChannel(room))
      await eventually(() => ROOMS.every((room) => heardOn(roomHome(room), room)), {
        message: "every room's broadcast heard on its own server",
      })
      for (const room of ROOMS) {
        expect(databases.map((_, s) => heardOn(s, room))).toEqual(
          databases.map((_, s) => roomHome(room) === s),
        )
      }
    } finally {
      await Promise.all(listeners.map(({ client }) => client.end()))
    }
  })

  it("delivers binary to rooms of every server, several senders' parts interleaving from several servers", async () => {
    const each = await joinEverywhere()
    // One room per server, several large binary broadcasts to each at once from every node:
    // packed parts of one sender reach a node from several servers at the same time.
    const rooms = databases.map((_, s) => ROOMS.find((room) => roomHome(room) === s)!)
    const TIMES = 4
    const got = each.map((client) => collect(client, "bin", rooms.length * TIMES * 3, 15_000))
    for (let i = 0; i < TIMES; i++) {
      for (const node of nodes) {
        for (const room of rooms) node.io.to(room).emit("bin", room, Buffer.alloc(60_000, i))
      }
    }
    for (const g of got) {
      const all = await g
      for (const room of rooms) {
        const mine = all.filter(([r]) => r === room)
        expect(mine.length).toBe(TIMES * 3)
        for (const [, bytes] of mine) expect(Buffer.from(bytes as ArrayBuffer).length).toBe(60_000)
      }
    }
  })

  it("an emitter given the same pools reaches every room on its own server, attachments included", async () => {
    const emitter = new Emitter(poolsOf(), "/", { channelPrefix: PREFIX, subscriptionMode: MODE })
    const listeners = await Promise.all(databases.map((db) => listenOn(db, ROOMS.map(roomChannel))))
    try {
      const each = await joinEverywhere()
      for (const room of ROOMS) {
        const got = each.map((client) => collect(client, "from-emitter", 1))
        await emitter.to(room).emit("from-emitter", room)
        for (const g of got) expect((await g)[0]![0]).toBe(room)
      }
      // The emitter writes 0.5.0's wire: binary goes through the attachments table of the room's
      // server, and every node fetches it there.
      for (const s of databases.keys()) {
        const room = ROOMS.find((r) => roomHome(r) === s)!
        const got = each.map((client) => collect(client, "emitted-bin", 1))
        await emitter.to(room).emit("emitted-bin", Buffer.alloc(10_000, 3))
        for (const g of got)
          expect(Buffer.from((await g)[0]![0] as ArrayBuffer).length).toBe(10_000)
      }
      await eventually(
        () => ROOMS.every((room) => listeners[roomHome(room)]!.heard.includes(roomChannel(room))),
        { message: "every emitted broadcast heard on its room's server" },
      )
      for (const room of ROOMS) {
        expect(databases.map((_, s) => listeners[s]!.heard.includes(roomChannel(room)))).toEqual(
          databases.map((_, s) => roomHome(room) === s),
        )
      }
    } finally {
      await Promise.all(listeners.map(({ client }) => client.end()))
      await emitter.close()
    }
  })

  it("keeps a LISTEN connection to a server only while a node has rooms there", async () => {
    // A server that holds none of the nodes' namespaces: only rooms bring them there.
    const other = databases.findIndex((_, s) => s !== nspHome)
    const rooms = ROOMS.filter((room) => roomHome(room) === other)
    const admin = new pg.Pool({ connectionString: databases[other]!.url, max: 1 })
    try {
      const each = await joinEverywhere(rooms)
      await eventually(async () => (await listenConnections(admin, PREFIX)) === 3, {
        message: "one LISTEN connection per node on that server",
      })
      const got = collect(each[0]!, "there", 1)
      nodes[1]!.io.to(rooms[0]!).emit("there", 1)
      await got
      for (const client of clients.splice(0)) client.disconnect()
      // Rooms left, publishes idle for heartbeatTimeout: each node lets go of that server.
      await eventually(async () => (await listenConnections(admin, PREFIX)) === 0, {
        timeout: 15_000,
        message: "no LISTEN connection left on that server",
      })
    } finally {
      await admin.end()
    }
  }, 30_000)

  it("with a secret: broadcasts to a room on another server are verified for that room's channel and reach each client once", async () => {
    const prefix = `signed${count}`
    const signed = { ...options, channelPrefix: prefix, secret: "a secret of 32 bytes, or nearly." }
    const home = placement.indexOf(channelName(prefix, "/"))
    const room = ROOMS.find((r) => placement.indexOf(roomChannelName(prefix, "/", r)) !== home)!
    const [a, b] = await Promise.all(
      [0, 1].map(() => startServer({ adapter: createAdapter(poolsOf(), signed) })),
    )
    try {
      for (const node of [a!, b!]) node.io.on("connection", (socket) => socket.join(room))
      const [ca, cb] = await Promise.all([connectClient(a!.url), connectClient(b!.url)])
      clients.push(ca!, cb!)
      await eventually(
        () =>
          [a!, b!].every((node) =>
            (adapterOf(node).listenStatus().roomChannels ?? []).includes(
              roomChannelName(prefix, "/", room),
            ),
          ),
        { timeout: 10_000 },
      )
      const N = 5
      const seenByA: Array<unknown> = []
      ca!.on("signed", (n: unknown) => seenByA.push(n))
      const gotB = collect(cb!, "signed", N)
      for (let i = 0; i < N; i++) a!.io.to(room).emit("signed", i)
      expect((await gotB).map(([n]) => n)).toEqual([0, 1, 2, 3, 4])
      // B's marker is committed on the room's server after A's broadcasts: once A delivered it,
      // any copy of A's own broadcasts coming back through that server would have been too.
      const marker = collect(ca!, "marker", 1)
      b!.io.to(room).emit("marker")
      await marker
      expect(seenByA).toEqual([0, 1, 2, 3, 4])
    } finally {
      await Promise.all([a!.close(), b!.close()])
    }
  })

  it("io.close() right after a room there was left leaves no LISTEN connection on that server", async () => {
    const prefix = `solo${count}`
    const solo = { ...options, channelPrefix: prefix }
    const other = databases.findIndex((_, s) => s !== placement.indexOf(channelName(prefix, "/")))
    const rooms = ROOMS.filter(
      (room) => placement.indexOf(roomChannelName(prefix, "/", room)) === other,
    )
    const admin = new pg.Pool({ connectionString: databases[other]!.url, max: 1 })
    const node = await startServer({ adapter: createAdapter(poolsOf(), solo) })
    try {
      node.io.on("connection", (socket) => socket.join(rooms))
      const client = await connectClient(node.url)
      await eventually(
        () => (adapterOf(node).listenStatus().roomChannels ?? []).length >= rooms.length,
      )
      expect(await listenConnections(admin, prefix)).toBe(1)
      // The rooms' UNLISTENs are under way when the server closes: close waits for them.
      clients.push(client)
      node.io.disconnectSockets(true)
      await node.close()
      expect(await listenConnections(admin, prefix)).toBe(0)
    } finally {
      await node.close()
      await admin.end()
    }
  })

  it("one server stopped: rooms on the others still deliver, and its own rooms deliver again after its restart", async () => {
    const down = (nspHome + 1) % count
    const upRooms = ROOMS.filter((room) => roomHome(room) !== down)
    const downRooms = ROOMS.filter((room) => roomHome(room) === down)
    const each = await joinEverywhere()
    await databases[down]!.stop()
    try {
      for (const room of upRooms) {
        const got = each.map((client) => collect(client, "still", 1))
        nodes[2]!.io.to(room).emit("still", room)
        for (const g of got) expect((await g)[0]![0]).toBe(room)
      }
    } finally {
      await databases[down]!.start()
    }
    // Its rooms come back by themselves: LISTENed again, published again.
    for (const room of downRooms) {
      await eventually(
        async () => {
          const got = Promise.all(each.map((client) => collect(client, "back", 1, 500))).then(
            () => true,
            () => false,
          )
          nodes[0]!.io.to(room).emit("back", room)
          return got
        },
        { timeout: 15_000, message: `a broadcast to ${room} after the restart` },
      )
    }
  }, 60_000)

  it("refuses connection state recovery with rooms placed apart, naming roomPlacement; keeps rooms with their namespace when asked", async () => {
    const recovery = { connectionStateRecovery: { maxDisconnectionDuration: 10_000 } }
    await expect(
      startServer({ adapter: createAdapter(poolsOf(), options), serverOptions: recovery }),
    ).rejects.toThrow(/roomPlacement/)
    expect(
      () => new Emitter(poolsOf(), "/", { ...options, connectionStateRecovery: true }),
    ).toThrow(/roomPlacement: "namespace"/)
    expect(() => createAdapter(poolsOf(), { ...options, roomPlacement: "nope" as never })).toThrow(
      /Invalid option roomPlacement/,
    )
    // With "namespace" on every node: recovery works, and every room travels on the namespace's
    // server.
    const prefix = `${PREFIX}ns`
    const together = { ...options, channelPrefix: prefix, roomPlacement: "namespace" } as const
    const servers = await Promise.all(
      [0, 1].map(() =>
        startServer({ adapter: createAdapter(poolsOf(), together), serverOptions: recovery }),
      ),
    )
    const home = placement.indexOf(channelName(prefix, "/"))
    const channels = ROOMS.map((room) => roomChannelName(prefix, "/", room))
    const listeners = await Promise.all(databases.map((db) => listenOn(db, channels)))
    try {
      for (const server of servers) {
        server.io.on("connection", (socket) => socket.join(ROOMS))
      }
      const client = await connectClient(servers[0]!.url)
      clients.push(client)
      await eventually(async () => (await servers[1]!.io.of("/").adapter.serverCount()) === 2, {
        timeout: 10_000,
      })
      for (const room of ROOMS.slice(0, 8)) {
        const got = collect(client, "together", 1)
        servers[1]!.io.to(room).emit("together", room)
        expect((await got)[0]![0]).toBe(room)
      }
      await eventually(() =>
        ROOMS.slice(0, 8).every((room) =>
          listeners[home]!.heard.includes(roomChannelName(prefix, "/", room)),
        ),
      )
      for (const [s, listener] of listeners.entries()) {
        if (s !== home) expect(listener.heard).toEqual([])
      }
    } finally {
      await Promise.all(listeners.map(({ client }) => client.end()))
      await Promise.all(servers.map((server) => server.close()))
    }
  }, 30_000)
})
