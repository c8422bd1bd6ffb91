/**
 * The network fault proxy (test/utils/proxy.ts) against real PostgreSQL through node-postgres:
 * it forwards, and each fault does what it says — a black hole hangs open connections while new
 * ones pass, latency and loss delay but keep every byte in order, a reset is an ECONNRESET, and
 * `close()` leaves no socket, timer or backend behind.
 */
import { createHash, randomBytes } from "node:crypto"
import * as net from "node:net"
import pg from "pg"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { eventually } from "./utils/cluster.js"
import { databaseUrl, makePool, suiteId } from "./utils/postgres.js"
import { seededRandom, startProxy, type TcpProxy } from "./utils/proxy.js"

/** A promise's state, read without waiting: tells "still pending" from "settled". */
const track = <A>(promise: Promise<A>) => {
  const state: { settled: boolean; value?: A; error?: unknown } = { settled: false }
  promise.then(
    (value) => Object.assign(state, { settled: true, value }),
    (error: unknown) => Object.assign(state, { settled: true, error }),
  )
  return state
}

describe("the network fault proxy in front of PostgreSQL", () => {
  const application = suiteId("proxy")
  let admin: pg.Pool
  let proxy: TcpProxy
  const clients: Array<pg.Client> = []

  /** A connected client through the proxy; its errors are recorded, not thrown. */
  const connect = async (errors: Array<Error> = []) => {
    const client = new pg.Client({ connectionString: proxy.url, application_name: application })
    client.on("error", (error) => void errors.push(error))
    clients.push(client)
    await client.connect()
    return client
  }

  /** The proxy's connection of `client`. */
  const connectionOf = (client: pg.Client) => {
    const port = (client as unknown as { connection: { stream: net.Socket } }).connection.stream
      .localPort
    return proxy.connections().find((connection) => connection.clientPort === port)
  }

  const backends = async () => {
    const result = await admin.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1",
      [application],
    )
    return result.rows[0]!.n
  }

  /** Round trips of large payloads both ways: any lost, duplicated or reordered byte shows. */
  const bigRoundTrips = async (client: pg.Client) => {
    const upload = randomBytes(512 * 1024).toString("hex")
    const md5 = await client.query<{ md5: string }>("SELECT md5($1::text) AS md5", [upload])
    expect(md5.rows[0]!.md5).toBe(createHash("md5").update(upload).digest("hex"))
    const series = await client.query<{ s: string }>(
      "SELECT string_agg(i::text, ',' ORDER BY i) AS s FROM generate_series(1, 200000) AS i",
    )
    expect(series.rows[0]!.s).toBe(Array.from({ length: 200000 }, (_, i) => i + 1).join(","))
  }

  beforeAll(async () => {
    admin = makePool({ max: 2 })
  })

  afterEach(async () => {
    // Restored first, so that the clients' ends reach PostgreSQL, then destroyed for good.
    proxy?.restore()
    await Promise.all(clients.map((client) => client.end().catch(() => {})))
    clients.length = 0
    await proxy?.close()
    await eventually(async () => (await backends()) === 0, {
      message: "no backend of this suite left",
    })
  })

  afterAll(async () => {
    await admin?.end()
  })

  it("forwards queries and large payloads both ways, byte for byte", async () => {
    proxy = await startProxy({ target: databaseUrl() })
    const client = await connect()
    expect((await client.query("SELECT 1 AS one")).rows).toEqual([{ one: 1 }])
    await bigRoundTrips(client)
    expect(proxy.connections()).toHaveLength(1)
    expect(connectionOf(client)).toMatchObject({
      blackHoled: false,
      clientOpen: true,
      upstreamOpen: true,
    })
    expect(proxy.stats()).toMatchObject({ accepted: 1, open: 1, delayed: 0, stalls: 0 })
  })

  describe("black hole", () => {
    it("makes a query on an open connection hang while a new connection works", async () => {
      proxy = await startProxy({ target: databaseUrl() })
      const errors: Array<Error> = []
      const old = await connect(errors)
      expect(proxy.blackHole()).toBe(1)
      const hanging = track(old.query("SELECT 'through the black hole' AS v"))
      // A connection opened after the black hole goes through, while the old one hears nothing.
      const fresh = await connect()
      expect((await fresh.query("SELECT 2 AS two")).rows).toEqual([{ two: 2 }])
      expect(hanging.settled).toBe(false)
      expect(connectionOf(old)).toMatchObject({ blackHoled: true, clientOpen: true })
      expect(connectionOf(fresh)).toMatchObject({ blackHoled: false })
      // Neither end was told: no FIN, no RST, no error.
      expect(errors).toEqual([])
      expect(connectionOf(old)!.upstreamOpen).toBe(true)
      // Restored, what was held is delivered: a partition that healed.
      proxy.restore()
      await eventually(() => hanging.settled, { message: "the held query answered" })
      expect(hanging.value).toMatchObject({ rows: [{ v: "through the black hole" }] })
    })

    it("sees an owner let go of a black-holed connection, though its FIN is held", async () => {
      proxy = await startProxy({ target: databaseUrl() })
      const old = await connect()
      proxy.blackHole()
      // What a pool does with a connection it gives up on: destroy the socket.
      ;(old as unknown as { connection: { stream: net.Socket } }).connection.stream.destroy()
      await eventually(() => proxy.connections()[0]?.clientOpen === false, {
        message: "the proxy saw the client let go",
      })
      // PostgreSQL's side heard nothing: its backend is still there.
      expect(proxy.connections()[0]).toMatchObject({ blackHoled: true, upstreamOpen: true })
      expect(await backends()).toBe(1)
    })

    it("holds new connections too when asked, and lets them through once restored", async () => {
      proxy = await startProxy({ target: databaseUrl() })
      proxy.blackHole({ newConnections: true })
      const client = new pg.Client({ connectionString: proxy.url, application_name: application })
      client.on("error", () => {})
      clients.push(client)
      const connecting = track(client.connect())
      await eventually(() => proxy.connections().length === 1, {
        message: "the proxy accepted the connection",
      })
      await eventually(() => proxy.connections()[0]!.bytesFromClient > 0, {
        message: "the client sent its startup message",
      })
      // The startup message is held: PostgreSQL never saw the connection.
      expect(proxy.connections()[0]).toMatchObject({ blackHoled: true, upstreamOpen: false })
      expect(await backends()).toBe(0)
      expect(connecting.settled).toBe(false)
      proxy.restore()
      await eventually(() => connecting.settled, { message: "the held connection completed" })
      expect(connecting.error).toBeUndefined()
      expect((await client.query("SELECT 3 AS three")).rows).toEqual([{ three: 3 }])
    })
  })

  it("delays chunks with latency and jitter, keeping each direction's order", async () => {
    proxy = await startProxy({ target: databaseUrl(), random: seededRandom(11) })
    const client = await connect()
    // Jitter as large as the delay: without order keeping, chunks would overtake each other.
    proxy.latency({ delayMs: 5, jitterMs: 5 })
    await bigRoundTrips(client)
    expect((await client.query("SELECT 4 AS four")).rows).toEqual([{ four: 4 }])
    const { delayed } = proxy.stats()
    expect(delayed).toBeGreaterThan(10)
    proxy.restore()
    await client.query("SELECT 5")
    expect(proxy.stats().delayed).toBe(delayed)
  })

  it("turns packet loss into retransmission stalls, losing no byte", async () => {
    proxy = await startProxy({ target: databaseUrl(), random: seededRandom(7) })
    const client = await connect()
    proxy.drop({ rate: 0.2, rtoMs: 2, maxRtoMs: 16 })
    await bigRoundTrips(client)
    for (let n = 0; n < 20; n++) {
      expect((await client.query("SELECT $1::int AS n", [n])).rows).toEqual([{ n }])
    }
    expect(proxy.stats().stalls).toBeGreaterThan(0)
    expect(() => proxy.drop({ rate: 1 })).toThrow(/blackHole/)
  })

  it("resets connections: the client errors with ECONNRESET and the backend exits", async () => {
    proxy = await startProxy({ target: databaseUrl() })
    const idleErrors: Array<Error> = []
    const idle = await connect(idleErrors)
    const busyErrors: Array<Error> = []
    const busy = await connect(busyErrors)
    expect(await backends()).toBe(2)
    // A query in flight: held in a black hole so that it is surely unanswered at the reset.
    proxy.blackHole({ only: (connection) => connection.id === connectionOf(busy)!.id })
    const inFlight = busy.query("SELECT 'never answered'")
    inFlight.catch(() => {})
    expect(proxy.reset()).toBe(2)
    await expect(inFlight).rejects.toMatchObject({ code: "ECONNRESET" })
    await eventually(() => idleErrors.length > 0, { message: "the idle client saw the reset" })
    expect(idleErrors[0]).toMatchObject({ code: "ECONNRESET" })
    expect(busyErrors[0]).toMatchObject({ code: "ECONNRESET" })
    expect(idle).not.toBe(busy)
    await eventually(async () => (await backends()) === 0, { message: "both backends exited" })
    await eventually(() => proxy.connections().length === 0, {
      message: "the proxy forgot the reset connections",
    })
    expect(proxy.stats().resets).toBe(2)
  })

  it("closes leaving no socket, timer or backend behind", async () => {
    const tcpHandles = () =>
      process
        .getActiveResourcesInfo()
        .filter((kind) => kind === "TCPSocketWrap" || kind === "TCPServerWrap").length
    await admin.query("SELECT 1")
    const before = tcpHandles()
    proxy = await startProxy({ target: databaseUrl() })
    const errors: Array<Error> = []
    const client = await connect(errors)
    // Something in every state at once: a delayed chunk (a timer) on one connection, a held
    // one on another.
    const held = await connect()
    proxy.blackHole({ only: (connection) => connection.id === connectionOf(held)!.id })
    held.query("SELECT 'held'").catch(() => {})
    proxy.latency({ delayMs: 60_000 })
    const pending = client.query("SELECT 'delayed'")
    pending.catch(() => {})
    await eventually(() => proxy.stats().timers === 1, { message: "a delayed chunk waits" })
    await proxy.close()
    expect(proxy.connections()).toEqual([])
    expect(proxy.stats()).toMatchObject({ open: 0, timers: 0 })
    await expect(pending).rejects.toThrow(/terminated|ECONNRESET/)
    // Nothing listens on the port any more.
    await expect(
      new Promise((resolve, reject) => {
        const socket = net.connect(proxy.port, "127.0.0.1", () => {
          socket.destroy()
          resolve("connected")
        })
        socket.on("error", reject)
      }),
    ).rejects.toMatchObject({ code: "ECONNREFUSED" })
    await Promise.all(clients.map((c) => c.end().catch(() => {})))
    clients.length = 0
    await eventually(() => tcpHandles() <= before, { message: "no TCP handle left" })
    await eventually(async () => (await backends()) === 0, { message: "both backends exited" })
    await proxy.close()
  })
})
