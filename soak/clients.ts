/**
 * The soak's socket.io-client clients, all in this process, driven by `soak.ts` over IPC. For each
 * server slot and cluster it keeps `perServer` clients (every other one in the room) that come and
 * go: each lives a random while, may close its transport once on purpose (it reconnects by itself,
 * restored on the "rec" cluster), then leaves and a new one takes its place. The first of each
 * (a room member) is a witness that stays for the whole run and never closes its transport: the
 * accounting learns from it when a packet reached its server. Each client logs its
 * connections and every packet it receives; `drain` hands over the clients that left.
 */
import { io, type Socket } from "socket.io-client"
import { serve } from "../bench/ipc.js"
import { seededRandom } from "../test/utils/proxy.js"
import { type ClientLog, type ClusterName, type Connection, type Receipt } from "./accounting.js"

/** Arguments of `start`. */
export interface ClientsArgs {
  /** Client URLs by server slot. */
  readonly urls: ReadonlyArray<Readonly<Record<ClusterName, string>>>
  readonly perServer: number
  /** A client lives between these (ms). */
  readonly lifeMs: readonly [number, number]
  /** Chance that a client closes its transport once during its life. */
  readonly blipChance: number
  readonly seed: number
}

interface Live {
  readonly id: string
  readonly cluster: ClusterName
  readonly server: number
  readonly inRoom: boolean
  readonly socket: Socket
  readonly connections: Array<{ -readonly [K in keyof Connection]: Connection[K] }>
  readonly receipts: Record<string, Array<Receipt>>
  readonly timers: Array<NodeJS.Timeout>
  hadOffset: boolean
  blipping: boolean
}

let args: ClientsArgs | undefined
let random: () => number = Math.random
let counter = 0
let stopped = false
const live = new Set<Live>()
let finished: Array<ClientLog> = []

const toLog = (client: Live, until: number): ClientLog => ({
  id: client.id,
  cluster: client.cluster,
  server: client.server,
  inRoom: client.inRoom,
  connections: client.connections.map((c) => ({
    ...c,
    until: Number.isFinite(c.until) ? c.until : until,
  })),
  receipts: client.receipts,
})

const leave = (client: Live) => {
  if (!live.delete(client)) return
  for (const timer of client.timers) clearTimeout(timer)
  const now = Date.now()
  const last = client.connections[client.connections.length - 1]
  if (last !== undefined && !Number.isFinite(last.until)) last.until = now
  client.socket.disconnect()
  finished.push(toLog(client, now))
  if (!stopped) spawn(client.server, client.cluster, client.inRoom)
}

const spawn = (server: number, cluster: ClusterName, inRoom: boolean, witness = false) => {
  const config = args!
  const id = `${witness ? "w" : "c"}${++counter}-${cluster}-s${server}`
  const socket = io(config.urls[server]![cluster], {
    transports: ["websocket"],
    forceNew: true,
    reconnectionDelay: 250,
    reconnectionDelayMax: 1000,
    query: { room: inRoom ? "yes" : "no" },
  })
  const client: Live = {
    id,
    cluster,
    server,
    inRoom,
    socket,
    connections: [],
    receipts: {},
    timers: [],
    hadOffset: false,
    blipping: false,
  }
  live.add(client)
  const record =
    (target: "all" | "room") =>
    (packet: unknown, ...rest: Array<unknown>) => {
      const p = packet as { o?: unknown; s?: unknown }
      if (typeof p?.o !== "string" || typeof p.s !== "number") return
      // With recovery, Socket.IO appends the packet's offset (a string) as the last argument.
      const offset = rest.length === 1 && typeof rest[0] === "string"
      if (offset) client.hadOffset = true
      const key = `${cluster}/${p.o}/${target}`
      ;(client.receipts[key] ??= []).push({ seq: p.s, at: Date.now(), offset })
    }
  socket.on("m", record("all"))
  socket.on("r", record("room"))
  socket.on("connect", () => {
    client.connections.push({
      at: Date.now(),
      until: Infinity,
      recovered: socket.recovered,
      blip: client.blipping,
      hadOffset: client.hadOffset,
    })
    client.blipping = false
  })
  socket.on("disconnect", () => {
    const last = client.connections[client.connections.length - 1]
    if (last !== undefined && !Number.isFinite(last.until)) last.until = Date.now()
  })
  // A witness stays for the whole run: what its server delivered, it got.
  if (witness) return
  const [min, max] = config.lifeMs
  const life = min + random() * (max - min)
  client.timers.push(setTimeout(() => leave(client), life))
  if (random() < config.blipChance) {
    client.timers.push(
      setTimeout(
        () => {
          if (!socket.connected) return
          client.blipping = true
          // A transport closed under the client, as by a flaky network: it reconnects by itself.
          socket.io.engine.close()
        },
        life * (0.3 + 0.4 * random()),
      ),
    )
  }
}

serve({
  start(a: ClientsArgs) {
    args = a
    random = seededRandom(a.seed)
    stopped = false
    a.urls.forEach((_, server) => {
      for (const cluster of ["rec", "plain"] as const) {
        for (let i = 0; i < a.perServer; i++) spawn(server, cluster, i % 2 === 0, i === 0)
      }
    })
    return null
  },

  /** The clients that left since the last drain. */
  drain(): Array<ClientLog> {
    const out = finished
    finished = []
    return out
  },

  /** Copies of the live clients' logs, their open connection ending now. */
  snapshot(): Array<ClientLog> {
    const now = Date.now()
    return [...live].map((client) => toLog(client, now))
  },

  /** How many clients are connected now, of how many. */
  status() {
    let connected = 0
    for (const client of live) if (client.socket.connected) connected++
    return { connected, live: live.size }
  },

  /** Every client leaves; their logs, with those not drained yet. */
  finish(): Array<ClientLog> {
    stopped = true
    for (const client of [...live]) leave(client)
    const out = finished
    finished = []
    return out
  },

  close() {
    stopped = true
    for (const client of [...live]) leave(client)
    return null
  },
})
