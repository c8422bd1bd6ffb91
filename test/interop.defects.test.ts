/**
 * Defects of `@socket.io/postgres-adapter` 0.5.0 (and of `@socket.io/postgres-emitter` 0.1.1) that
 * our adapter fixes. Each test asserts our behaviour; where it is cheap and deterministic, it also
 * shows the 0.5.0 defect, with an assertion labelled `DEFECT (0.5.0)`. Those labelled assertions
 * document upstream behaviour: should a later 0.5.x fix one, drop that assertion, not ours.
 */
import { encode as msgpackEncode } from "@msgpack/msgpack"
import { Emitter as UpstreamEmitter } from "@socket.io/postgres-emitter"
import type pg from "pg"
import type { Server } from "socket.io"
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { Emitter, type PostgresAdapter } from "../src/index.js"
import {
  deliveredEventually,
  killFixture,
  listenerPids,
  watchProcessFaults,
} from "./fixtures/faults.js"
import { collect, eventually, expectNoEvent, waitFor } from "./utils/cluster.js"
import { argumentForNotificationBytes, broadcastNotificationBytes } from "./utils/interop.js"
import { type ChildNode, type Cluster, type Node, startCluster } from "./utils/nodes.js"
import { makePool, type PrivatePostgres, startPrivatePostgres } from "./utils/postgres.js"

const LARGE = "x".repeat(20_000)

/** Connections a pool has handed out and not taken back. */
const checkedOut = (pool: pg.Pool) => pool.totalCount - pool.idleCount

describe("0.5.0 defects fixed by ours, in the mixed cluster [ours, 0.5.0, ours]", () => {
  const watcher = watchProcessFaults()
  let cluster: Cluster
  let io: Array<Server>
  let clients: Array<ClientSocket>

  beforeAll(async () => {
    cluster = await startCluster("interop_defects", { nodes: ["ours", "0.5.0", "ours"] })
    io = cluster.nodes.map((node) => node.io)
  })

  afterAll(async () => {
    watcher.stop()
    await cluster?.close()
  })

  beforeEach(async () => {
    clients = await Promise.all(io.map((_, i) => cluster.connect(i)))
  })

  afterEach(async () => {
    await cluster.disconnectClients()
    expect(watcher.faults).toEqual([])
  })

  it("delivers a broadcast whose notification JSON is exactly 8000 bytes (0.5.0 loses it: payload string too long)", async () => {
    const ours = cluster.nodes[0]!
    const arg = argumentForNotificationBytes(8000, ours.uid(), "exact")
    expect(broadcastNotificationBytes(ours.uid(), "exact", arg)).toBe(8000)
    const arrivals = clients.map((client) => waitFor(client, "exact"))
    io[0]!.emit("exact", arg)
    for (const arrival of arrivals) expect((await arrival)[0] === arg).toBe(true)
    expect(ours.errors).toEqual([])

    // DEFECT (0.5.0): it sends 8000 bytes inline; PostgreSQL rejects it and the message is lost.
    const upstream = cluster.nodes[1]!
    const lost = argumentForNotificationBytes(8000, upstream.uid(), "exact")
    const quiet = [0, 2].map((i) =>
      expectNoEvent(clients[i]!, "exact", () => waitFor(clients[i]!, "after-exact")),
    )
    io[1]!.emit("exact", lost)
    io[1]!.emit("after-exact")
    await Promise.all(quiet)
    expect(upstream.errors.map((error) => error.message)).toContainEqual(
      expect.stringMatching(/payload string too long/),
    )
  })

  it("delivers packets in send order when small and large ones interleave (0.5.0 delivers an attachment after the inline packet sent behind it)", async () => {
    const N = 40
    const received = collect(clients[2]!, "seq", N, 15_000)
    for (let i = 0; i < N; i++) io[0]!.emit("seq", i, i % 3 === 0 ? LARGE : "small")
    expect((await received).map(([i]) => i)).toEqual(Array.from({ length: N }, (_, i) => i))

    // The same two notifications for every receiver, committed together as our Publisher does
    // when messages queue up: an attachment's header, then a small inline packet.
    const channel = `${cluster.id}#/`
    const packet = (data: Array<unknown>) => ({
      type: 3,
      data: { packet: { type: 2, data, nsp: "/" }, opts: { rooms: [], except: [], flags: {} } },
      uid: "emitter",
      nsp: "/",
    })
    const order = clients.map((client) => collect(client, "order", 2))
    const { rows } = await cluster.admin.query<{ id: string }>(
      `INSERT INTO ${cluster.id} (payload) VALUES ($1) RETURNING id`,
      [msgpackEncode(packet(["order", "first", LARGE]))],
    )
    const header = { uid: "emitter", type: 3, nsp: "/", attachmentId: rows[0]!.id }
    await cluster.admin.query("SELECT pg_notify($1, $2), pg_notify($1, $3)", [
      channel,
      JSON.stringify(header),
      JSON.stringify(packet(["order", "second"])),
    ])
    const [ours0, upstream, ours2] = await Promise.all(order)
    expect(ours0!.map(([name]) => name)).toEqual(["first", "second"])
    expect(ours2!.map(([name]) => name)).toEqual(["first", "second"])
    // DEFECT (0.5.0): the inline packet overtakes the attachment sent before it.
    expect(upstream!.map(([name]) => name)).toEqual(["second", "first"])
  })

  it("works with namespace names longer than 63 bytes and with quotes (0.5.0 cannot publish on a long one)", async () => {
    const long = `/${"long-namespace-".repeat(5)}é名😀`
    const quoted = `/say "hi"; --`
    const ours = [0, 2]
    for (const nsp of [long, quoted]) {
      for (const i of ours) io[i]!.of(nsp).on("connection", () => {})
      await Promise.all(ours.map((i) => (io[i]!.of(nsp).adapter as PostgresAdapter).ready))
      const [a, b] = await Promise.all(ours.map((i) => cluster.connect(i, { nsp })))
      const toB = waitFor(b!, "hello")
      io[0]!.of(nsp).emit("hello", nsp)
      expect(await toB).toEqual([nsp])
      const toA = waitFor(a!, "hello")
      io[2]!.of(nsp).emit("hello", nsp)
      expect(await toA).toEqual([nsp])
    }
    await cluster.disconnectClients(["/", long, quoted])

    // DEFECT (0.5.0): the channel name is too long for pg_notify (and LISTEN truncates it).
    io[1]!.of(long)
    await eventually(
      () => cluster.nodes[1]!.errors.some((error) => /channel name too long/.test(error.message)),
      { message: "0.5.0 reports a channel name too long" },
    )
  })

  it("returns binary socket.data intact from fetchSockets (0.5.0 JSON-mangles it)", async () => {
    const blob = (i: number) => Buffer.from([i, 0, 127, 128, 255])
    clients.forEach((client, i) => {
      io[i]!.of("/").sockets.get(client.id!)!.data = { blob: blob(i), nested: [{ deep: blob(i) }] }
    })
    const byId = async (server: Server) =>
      new Map((await server.fetchSockets()).map((socket) => [socket.id, socket.data]))

    const seenByOurs = await byId(io[0]!)
    const fromOurs = seenByOurs.get(clients[2]!.id!)
    expect(Buffer.isBuffer(fromOurs.blob) && fromOurs.blob.equals(blob(2))).toBe(true)
    expect(Buffer.from(fromOurs.nested[0].deep).equals(blob(2))).toBe(true)

    // A 0.5.0 requester gets our answer intact too (as Uint8Array: its msgpack decoder's type).
    const seenByUpstream = await byId(io[1]!)
    expect(Buffer.from(seenByUpstream.get(clients[0]!.id!).blob).equals(blob(0))).toBe(true)

    // DEFECT (0.5.0): its answer goes through JSON, the Buffer comes back as a plain object.
    const fromUpstream = seenByOurs.get(clients[1]!.id!)
    expect(fromUpstream.blob).toEqual({ type: "Buffer", data: [1, 0, 127, 128, 255] })
  })

  it("delivers messages of the @socket.io/postgres-emitter 0.1.1 emitter, which carry no nsp (0.5.0 drops them)", async () => {
    const pool = makePool({ max: 1 })
    const ourEmitter = new Emitter(pool, "/", { channelPrefix: cluster.id, tableName: cluster.id })
    try {
      const old = new UpstreamEmitter(pool, "/", {
        channelPrefix: cluster.id,
        tableName: cluster.id,
      })
      const arrivals = [0, 2].map((i) => waitFor(clients[i]!, "from-0.1.1"))
      const quiet = expectNoEvent(clients[1]!, "from-0.1.1", async () => {
        for (const arrival of arrivals) expect(await arrival).toEqual(["hi"])
        // Committed after the 0.1.1 message (ours got that one already), on the same channel.
        const marker = waitFor(clients[1]!, "marker")
        await ourEmitter.emit("marker")
        await marker
      })
      old.emit("from-0.1.1", "hi")
      // DEFECT (0.5.0): the 0.5.0 server's client never gets it.
      await quiet
    } finally {
      await ourEmitter.close()
      await pool.end()
    }
  })
})

describe("after its LISTEN backend is terminated (pg_terminate_backend)", () => {
  let cluster: Cluster

  beforeAll(async () => {
    cluster = await startCluster("interop_defects_kill", {
      nodes: ["ours", "ours"],
      options: { reconnectMaxDelay: 500 },
    })
  })

  afterAll(async () => {
    await cluster?.close()
  })

  const terminateListener = async (node: Node) => {
    const name = `${node.kind} node ${node.index}`
    const [pid] = await listenerPids(cluster.admin, node.applicationName)
    expect(pid, `${name} has a LISTEN backend`).toBeDefined()
    await cluster.admin.query("SELECT pg_terminate_backend($1)", [pid])
    await eventually(
      async () => {
        const pids = await listenerPids(cluster.admin, node.applicationName)
        return pids.length === 1 && pids[0] !== pid
      },
      { timeout: 10_000, message: `${name} listens again on a new backend` },
    )
  }

  it("ours resumes delivery and holds no slot of its pool (0.5.0 keeps the dead connection checked out)", async () => {
    const clients = await Promise.all([0, 1].map((i) => cluster.connect(i)))
    const [ours0, ours1] = cluster.nodes
    await terminateListener(ours1!)
    await deliveredEventually(ours0!.io, clients[1]!, "to-the-victim")
    await deliveredEventually(ours1!.io, clients[0]!, "from-the-victim")
    // The LISTEN connection is not the pool's: nothing stays checked out once publishing is done.
    await eventually(() => checkedOut(ours1!.pool) === 0, {
      message: "no connection of ours1's pool stays checked out",
    })
    await cluster.disconnectClients()

    // DEFECT (0.5.0): its LISTEN connection is a pool client it never releases when it dies.
    // (Without an "error" listener on the pool's clients the process even crashes; the usual
    // `pool.on("connect", (client) => client.on("error", …))` keeps it alive.)
    const pool = makePool({ max: 3, application_name: `${cluster.id}_upstream` })
    pool.on("connect", (client) => client.on("error", () => {}))
    const upstream = await cluster.addNode("0.5.0", { pool })
    try {
      await eventually(
        async () => (await listenerPids(cluster.admin, upstream.applicationName)).length === 1,
      )
      await eventually(() => checkedOut(pool) === 1, { message: "0.5.0 holds its LISTEN client" })
      await terminateListener(upstream)
      await eventually(() => checkedOut(pool) === 2, {
        message: "0.5.0 holds the dead client and the new one",
      })
    } finally {
      await cluster.closeNode(upstream)
      // Release what 0.5.0 leaked, or pool.end() would wait for it forever.
      await eventually(() => checkedOut(pool) <= 1)
      const idle = new Set((pool as any)._idle.map((item: { client: unknown }) => item.client))
      for (const client of [...(pool as any)._clients]) {
        if (!idle.has(client)) client.release(new Error("leaked by 0.5.0"))
      }
      await pool.end()
    }
  })
})

describe("with a PostgreSQL server that stops or freezes", () => {
  const watcher = watchProcessFaults()
  let postgres: PrivatePostgres

  beforeAll(async () => {
    postgres = await startPrivatePostgres()
  })

  afterEach(() => {
    expect(watcher.faults).toEqual([])
  })

  afterAll(async () => {
    watcher.stop()
    await postgres?.destroy()
  })

  it("delivers to local clients at once while PostgreSQL is frozen (0.5.0 holds them until it answers)", async () => {
    const cluster = await startCluster("interop_defects_pause", {
      nodes: ["ours", "0.5.0"],
      connectionString: postgres.url,
    })
    try {
      const [ours, upstream] = await Promise.all([0, 1].map((i) => cluster.connect(i)))
      await postgres.pause()
      const local = waitFor(ours!, "while-frozen")
      cluster.nodes[0]!.io.emit("while-frozen")
      await local

      // DEFECT (0.5.0): the local client waits for the NOTIFY to complete.
      const held = waitFor(upstream!, "held", 10_000)
      await expectNoEvent(upstream!, "held", async () => {
        cluster.nodes[1]!.io.emit("held")
        // Sent after, locally only (no PostgreSQL): once it is in, "held" would have been too.
        const marker = waitFor(upstream!, "local-marker")
        cluster.nodes[1]!.io.local.emit("local-marker")
        await marker
      })
      await postgres.resume()
      await held
    } finally {
      await postgres.resume()
      await cluster.close()
    }
  })

  it("ours survives a PostgreSQL restart and resumes cross-server delivery (a 0.5.0 process crashes)", async () => {
    const cluster = await startCluster("interop_defects_restart", {
      nodes: ["ours", "ours"],
      connectionString: postgres.url,
      // The crashed 0.5.0 node is dropped after heartbeatTimeout.
      options: { heartbeatTimeout: 2000, reconnectMaxDelay: 500, publishTimeout: 1000 },
    })
    let child: ChildNode | undefined
    try {
      child = await cluster.spawnNode("0.5.0")
      await cluster.waitForMembers("/", 3)
      const clients = await Promise.all([0, 1].map((i) => cluster.connect(i)))

      await postgres.stop()
      await postgres.start()

      const [a, b] = cluster.nodes
      await deliveredEventually(a!.io, clients[1]!, "after-restart-0-to-1")
      await deliveredEventually(b!.io, clients[0]!, "after-restart-1-to-0")
      await cluster.waitForMembers("/", 2)

      // DEFECT (0.5.0): its LISTEN client has no "error" listener: the process dies.
      const exit = await child.exited
      expect(exit.code).toBe(1)
      expect(child.stderr()).toMatch(/Unhandled 'error' event/)
      expect(child.stderr()).toMatch(/terminating connection due to administrator command/)
    } finally {
      await killFixture(child)
      await cluster.close()
    }
  })
})
