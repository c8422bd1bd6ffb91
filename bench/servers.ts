/**
 * `npm run bench:servers`: one cluster over one PostgreSQL server against the same over two
 * (issue 14). Two embedded PostgreSQL servers are started (always: `DATABASE_URL` is not used),
 * then, for 1 and for 2 servers in turn, 3 Socket.IO servers in this process with `NAMESPACES`
 * namespaces, one client per namespace on the third server:
 *
 * - where the namespaces are placed, and the notifications and commits each PostgreSQL server got
 *   during the load (notifications counted by a LISTEN of our own on every channel, commits from
 *   `pg_stat_database`);
 * - the connections each node holds on each server (`pg_stat_activity` by `application_name`);
 * - idle notifications per minute on each server (heartbeats), over `--idle` seconds;
 * - broadcasts per second: the first server emits `--count` packets to every namespace, as fast as
 *   it can, until every client got them all.
 *
 * Then a room-heavy load, for 1 and for 2 servers: one namespace in `subscriptionMode: "dynamic"`
 * with `--rooms` rooms (placed by their own names over the servers, `roomPlacement: "room"`), a
 * member of each on the third server (`ROOM_CLIENTS` clients sharing them), the first server
 * emitting `--room-count` packets to every room: rooms, notifications and commits per server, and
 * broadcasts per second.
 *
 * All of it runs on this machine's 2 cores: the throughput of two servers is bounded by the CPU of
 * the Socket.IO servers, not by PostgreSQL; the counts are what the run shows reliably.
 *
 *   npm run bench:servers
 *   npm run bench:servers -- --namespaces 100 --count 200 --idle 10 --json
 */
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import { parseArgs } from "node:util"
import pg from "pg"
import { Server } from "socket.io"
import { io as ioClient, type Socket as ClientSocket } from "socket.io-client"
import { channelName, roomChannelName, serverChannelName } from "../src/Channel.js"
import { createAdapter } from "../src/index.js"
import * as Placement from "../src/Placement.js"
import { startEmbeddedPostgres } from "../test/setup/embedded.js"

const { values } = parseArgs({
  options: {
    namespaces: { type: "string", default: "60" },
    count: { type: "string", default: "200" },
    idle: { type: "string", default: "6" },
    rooms: { type: "string", default: "200" },
    "room-count": { type: "string", default: "300" },
    json: { type: "boolean", default: false },
  },
})
const NAMESPACES = Number(values.namespaces)
const COUNT = Number(values.count)
const IDLE_MS = Number(values.idle) * 1000
const ROOMS = Number(values.rooms)
const ROOM_COUNT = Number(values["room-count"])
const ROOM_CLIENTS = 20
const HEARTBEAT_MS = 1000
const NODES = 3

const log = (line: string) => process.stderr.write(`${line}\n`)
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

const waitUntil = async (what: string, f: () => boolean | Promise<boolean>, ms = 60_000) => {
  const deadline = Date.now() + ms
  while (!(await f())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`)
    await sleep(20)
  }
}

/** A LISTEN of our own on a server's channels, counting what arrives. */
const counter = async (url: string, channels: ReadonlyArray<string>) => {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  let count = 0
  client.on("notification", () => void count++)
  for (const channel of channels) await client.query(`LISTEN "${channel.replaceAll('"', '""')}"`)
  return { read: () => count, close: () => client.end() }
}

/**
 * A run's counts once PostgreSQL has them (pg_stat_database is flushed by the backends within
 * about a second): each server's commits and notifications; then the run's clients, Socket.IO
 * servers and pools are closed.
 */
const finish = async (
  urls: ReadonlyArray<string>,
  counters: ReadonlyArray<{ readonly read: () => number; readonly close: () => Promise<void> }>,
  run: {
    readonly clients: ReadonlyArray<ClientSocket>
    readonly nodes: ReadonlyArray<{ readonly io: Server }>
    readonly pools: ReadonlyArray<pg.Pool>
  },
) => {
  await sleep(1500)
  const after = await Promise.all(urls.map(commits))
  const notifications = counters.map((c) => c.read())
  await Promise.all(counters.map((c) => c.close()))
  for (const client of run.clients) client.disconnect()
  for (const node of run.nodes) await node.io.close()
  await Promise.all(run.pools.map((pool) => pool.end()))
  return { after, notifications }
}

const commits = async (url: string): Promise<number> => {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    const { rows } = await client.query(
      "SELECT xact_commit::bigint AS n FROM pg_stat_database WHERE datname = current_database()",
    )
    return Number(rows[0].n)
  } finally {
    await client.end()
  }
}

const connectionsByNode = async (url: string, prefix: string): Promise<Array<number>> => {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    const { rows } = await client.query(
      "SELECT application_name AS app, count(*)::int AS n FROM pg_stat_activity " +
        "WHERE application_name LIKE $1 GROUP BY 1",
      [`${prefix}-%`],
    )
    return Array.from(
      { length: NODES },
      (_, i) => rows.find((r) => r.app === `${prefix}-${i}`)?.n ?? 0,
    )
  } finally {
    await client.end()
  }
}

interface RunResult {
  readonly servers: number
  readonly namespacesPerServer: Array<number>
  readonly notificationsPerServer: Array<number>
  readonly commitsPerServer: Array<number>
  readonly connectionsPerNodePerServer: Array<Array<number>>
  readonly idleNotificationsPerMinutePerServer: Array<number>
  readonly broadcastsPerSecond: number
}

const run = async (urls: ReadonlyArray<string>, label: string): Promise<RunResult> => {
  const prefix = `srv${urls.length}_${Date.now().toString(36)}`
  const nsps = Array.from({ length: NAMESPACES }, (_, i) => `/t${i}`)
  const pools: Array<pg.Pool> = []
  const nodes: Array<{ io: Server; http: http.Server; port: number }> = []
  for (let i = 0; i < NODES; i++) {
    const own = urls.map((url) => {
      const pool = new pg.Pool({
        connectionString: url,
        max: 4,
        application_name: `${prefix}-${i}`,
      })
      pool.on("error", () => {})
      pools.push(pool)
      return pool
    })
    const httpServer = http.createServer()
    const io = new Server(httpServer, {
      adapter: createAdapter(own, {
        channelPrefix: prefix,
        heartbeatInterval: HEARTBEAT_MS,
        errorHandler: (error) => log(`  adapter error: ${error.message}`),
      }),
    })
    await new Promise<void>((resolve) => httpServer.listen(0, "127.0.0.1", resolve))
    nodes.push({ io, http: httpServer, port: (httpServer.address() as AddressInfo).port })
  }
  const names = Placement.decodeServersSync(pools.slice(0, urls.length), Placement.poolSettings)
  const placement = Placement.make(names.map((s) => s.name))
  const home = (nsp: string) => placement.indexOf(channelName(prefix, nsp))
  const namespacesPerServer = urls.map((_, s) => nsps.filter((nsp) => home(nsp) === s).length)

  const clients: Array<ClientSocket> = []
  const received = new Map<string, number>()
  for (const nsp of nsps) {
    for (const node of nodes) node.io.of(nsp)
    const client = ioClient(`http://127.0.0.1:${nodes[NODES - 1]!.port}${nsp}`, {
      transports: ["websocket"],
      forceNew: true,
    })
    received.set(nsp, 0)
    client.on("p", () => received.set(nsp, received.get(nsp)! + 1))
    clients.push(client)
  }
  await waitUntil("clients connected", () => clients.every((c) => c.connected))
  await waitUntil("members formed", async () => {
    const counts = await Promise.all(
      nodes.flatMap((node) => nsps.map((nsp) => node.io.of(nsp).adapter.serverCount())),
    )
    return counts.every((n) => n === NODES)
  })
  const channels = urls.map((_, s) => [
    serverChannelName(prefix),
    ...nsps.filter((nsp) => home(nsp) === s).map((nsp) => channelName(prefix, nsp)),
  ])

  // Idle: heartbeats only.
  const idleCounters = await Promise.all(urls.map((url, s) => counter(url, channels[s]!)))
  await sleep(IDLE_MS)
  const idle = idleCounters.map((c) => Math.round((c.read() * 60_000) / IDLE_MS))
  await Promise.all(idleCounters.map((c) => c.close()))

  // Load: COUNT packets to every namespace from the first server, as fast as it takes them.
  const loadCounters = await Promise.all(urls.map((url, s) => counter(url, channels[s]!)))
  const before = await Promise.all(urls.map(commits))
  const started = performance.now()
  const emitter = nodes[0]!.io
  for (let k = 0; k < COUNT; k++) {
    for (const nsp of nsps) emitter.of(nsp).emit("p", k, label)
    if (k % 10 === 9) await new Promise<void>((resolve) => setImmediate(resolve))
  }
  await waitUntil(
    "every packet delivered",
    () => [...received.values()].every((n) => n >= COUNT),
    120_000,
  )
  const elapsed = (performance.now() - started) / 1000
  const connections = await Promise.all(urls.map((url) => connectionsByNode(url, prefix)))
  const { after, notifications } = await finish(urls, loadCounters, { clients, nodes, pools })
  return {
    servers: urls.length,
    namespacesPerServer,
    notificationsPerServer: notifications,
    commitsPerServer: after.map((n, s) => n - before[s]!),
    connectionsPerNodePerServer: Array.from({ length: NODES }, (_, i) =>
      connections.map((byNode) => byNode[i]!),
    ),
    idleNotificationsPerMinutePerServer: idle,
    broadcastsPerSecond: Math.round((COUNT * NAMESPACES) / elapsed),
  }
}

interface RoomsResult {
  readonly servers: number
  /** The server of the namespace (its heartbeats, and rooms placed with it). */
  readonly namespaceServer: number
  readonly roomsPerServer: Array<number>
  readonly notificationsPerServer: Array<number>
  readonly commitsPerServer: Array<number>
  readonly broadcastsPerSecond: number
}

/** One namespace, many rooms, in "dynamic": each room's channel on the server its name picks. */
const runRooms = async (urls: ReadonlyArray<string>): Promise<RoomsResult> => {
  const prefix = `rms${urls.length}_${Date.now().toString(36)}`
  const rooms = Array.from({ length: ROOMS }, (_, i) => `r${i}`)
  const pools: Array<pg.Pool> = []
  const nodes: Array<{ io: Server; port: number }> = []
  for (let i = 0; i < NODES; i++) {
    const own = urls.map((url) => {
      const pool = new pg.Pool({ connectionString: url, max: 4 })
      pool.on("error", () => {})
      pools.push(pool)
      return pool
    })
    const httpServer = http.createServer()
    const io = new Server(httpServer, {
      adapter: createAdapter(own, {
        channelPrefix: prefix,
        subscriptionMode: "dynamic",
        heartbeatInterval: HEARTBEAT_MS,
        errorHandler: (error) => log(`  adapter error: ${error.message}`),
      }),
    })
    io.on("connection", (socket) => socket.join(String(socket.handshake.query.rooms).split(",")))
    await new Promise<void>((resolve) => httpServer.listen(0, "127.0.0.1", resolve))
    nodes.push({ io, port: (httpServer.address() as AddressInfo).port })
  }
  const names = Placement.decodeServersSync(pools.slice(0, urls.length), Placement.poolSettings)
  const placement = Placement.make(names.map((s) => s.name))
  const home = (room: string) => placement.indexOf(roomChannelName(prefix, "/", room))
  const roomsPerServer = urls.map((_, s) => rooms.filter((room) => home(room) === s).length)

  let received = 0
  const clients = Array.from({ length: ROOM_CLIENTS }, (_, c) => {
    const mine = rooms.filter((_, r) => r % ROOM_CLIENTS === c)
    const client = ioClient(`http://127.0.0.1:${nodes[NODES - 1]!.port}/`, {
      transports: ["websocket"],
      forceNew: true,
      query: { rooms: mine.join(",") },
    })
    client.on("p", () => void received++)
    return client
  })
  await waitUntil("clients connected", () => clients.every((c) => c.connected))
  await waitUntil("members formed", async () => {
    const counts = await Promise.all(nodes.map((node) => node.io.of("/").adapter.serverCount()))
    return counts.every((n) => n === NODES)
  })
  // The last node listens on every room (the publishes of the first wait for no LISTEN of its).
  const listened = () =>
    (nodes[NODES - 1]!.io.of("/").adapter as any).listenStatus().roomChannels?.length ?? 0
  await waitUntil("rooms listened on", () => listened() >= ROOMS)

  const channels = urls.map((_, s) =>
    rooms.filter((room) => home(room) === s).map((room) => roomChannelName(prefix, "/", room)),
  )
  const counters = await Promise.all(urls.map((url, s) => counter(url, channels[s]!)))
  const before = await Promise.all(urls.map(commits))
  const started = performance.now()
  const io = nodes[0]!.io
  for (let k = 0; k < ROOM_COUNT; k++) {
    for (const room of rooms) io.to(room).emit("p", k)
    if (k % 5 === 4) await new Promise<void>((resolve) => setImmediate(resolve))
  }
  await waitUntil("every room packet delivered", () => received >= ROOM_COUNT * ROOMS, 180_000)
  const elapsed = (performance.now() - started) / 1000
  const { after, notifications } = await finish(urls, counters, { clients, nodes, pools })
  return {
    servers: urls.length,
    namespaceServer: placement.indexOf(channelName(prefix, "/")),
    roomsPerServer,
    notificationsPerServer: notifications,
    commitsPerServer: after.map((n, s) => n - before[s]!),
    broadcastsPerSecond: Math.round((ROOM_COUNT * ROOMS) / elapsed),
  }
}

const main = async () => {
  log("starting two embedded PostgreSQL servers…")
  const databases = await Promise.all([startEmbeddedPostgres(), startEmbeddedPostgres()])
  try {
    const urls = databases.map((db) => db.url)
    const results: Array<RunResult> = []
    for (const servers of [1, 2]) {
      log(`${servers} server(s): ${NAMESPACES} namespaces, ${COUNT} packets each…`)
      results.push(await run(urls.slice(0, servers), `${servers}`))
    }
    const roomResults: Array<RoomsResult> = []
    for (const servers of [1, 2]) {
      log(`${servers} server(s): one namespace, ${ROOMS} rooms, ${ROOM_COUNT} packets each…`)
      roomResults.push(await runRooms(urls.slice(0, servers)))
    }
    if (values.json) {
      const all = {
        namespaces: NAMESPACES,
        count: COUNT,
        results,
        rooms: { rooms: ROOMS, count: ROOM_COUNT, results: roomResults },
      }
      process.stdout.write(`${JSON.stringify(all, null, 2)}\n`)
      return
    }
    const spread = (xs: ReadonlyArray<number>) => {
      const mean = xs.reduce((a, b) => a + b, 0) / xs.length
      const dev = Math.max(...xs.map((x) => Math.abs(x - mean) / mean))
      return `${xs.join(" / ")} (max ${(dev * 100).toFixed(1)}% from the mean)`
    }
    for (const r of results) {
      console.log(`\n${r.servers} PostgreSQL server(s), ${NAMESPACES} namespaces, 3 nodes:`)
      console.log(`  namespaces per server:        ${spread(r.namespacesPerServer)}`)
      console.log(`  notifications per server:     ${spread(r.notificationsPerServer)}`)
      console.log(`  commits per server:           ${spread(r.commitsPerServer)}`)
      console.log(
        `  connections per node:         ${r.connectionsPerNodePerServer.map((c) => c.join("+")).join(", ")} (per server)`,
      )
      console.log(
        `  idle notifications/min:       ${r.idleNotificationsPerMinutePerServer.join(" / ")}`,
      )
      console.log(`  broadcasts/s (CPU-bound here): ${r.broadcastsPerSecond}`)
    }
    for (const r of roomResults) {
      console.log(`\n${r.servers} PostgreSQL server(s), one namespace, ${ROOMS} rooms, 3 nodes:`)
      console.log(`  namespace on server:          ${r.namespaceServer}`)
      console.log(`  rooms per server:             ${spread(r.roomsPerServer)}`)
      console.log(`  notifications per server:     ${spread(r.notificationsPerServer)}`)
      console.log(`  commits per server:           ${spread(r.commitsPerServer)}`)
      console.log(`  broadcasts/s (CPU-bound here): ${r.broadcastsPerSecond}`)
    }
  } finally {
    await Promise.all(databases.map((db) => db.stop()))
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    log(String(error?.stack ?? error))
    process.exit(1)
  },
)
