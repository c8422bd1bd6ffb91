/**
 * A worker of `scale.ts`: one Socket.IO server on this adapter, in a process of its own so that its
 * CPU is its own. Its sockets join the rooms it is told; it emits to a room at a fixed rate; it
 * churns room memberships of its sockets; it reports its CPU and the LISTEN statements it sent.
 */
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import pg from "pg"
import { Server } from "socket.io"
import { createAdapter, type PostgresAdapter } from "../src/index.js"
import * as Metrics from "../src/Metrics.js"
import { serve } from "./ipc.js"

/** Arguments of `start`. */
export interface ScaleStartArgs {
  readonly url: string
  readonly channelPrefix: string
  readonly tableName: string
  readonly subscriptionMode: "static" | "dynamic" | "dynamic-private"
  readonly heartbeatInterval: number
}

let io: Server | undefined
let pool: pg.Pool | undefined
let cpuStart: NodeJS.CpuUsage | undefined
/** Rooms every socket joins when it connects. */
let rooms: Array<string> = []

const adapter = () => io!.of("/").adapter as unknown as PostgresAdapter

const listenStatements = (verb: "LISTEN" | "UNLISTEN") =>
  Effect.runSync(Metric.value(Metric.withAttributes(Metrics.listenStatements, { verb }))).count

serve({
  start: async (args: ScaleStartArgs) => {
    pool = new pg.Pool({ connectionString: args.url, max: 4 })
    pool.on("error", () => {})
    const server = http.createServer()
    io = new Server(server, {
      adapter: createAdapter(pool, {
        channelPrefix: args.channelPrefix,
        tableName: args.tableName,
        subscriptionMode: args.subscriptionMode,
        heartbeatInterval: args.heartbeatInterval,
      }),
    })
    io.on("connection", (socket) => {
      if (rooms.length > 0) socket.join(rooms)
    })
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    await adapter().ready
    return { port: (server.address() as AddressInfo).port }
  },
  /** New sockets join these rooms (and the connected ones now). */
  joinOnConnect: (args: { rooms: Array<string> }) => {
    rooms = args.rooms
    for (const socket of io!.of("/").sockets.values()) socket.join(rooms)
    return null
  },
  status: async () => ({
    servers: await adapter().serverCount(),
    sockets: io!.of("/").sockets.size,
    roomChannels: adapter().listenStatus().roomChannels ?? [],
  }),
  cpuStart: () => {
    cpuStart = process.cpuUsage()
    return null
  },
  cpuStop: () => {
    const used = process.cpuUsage(cpuStart)
    return { cpuMs: (used.user + used.system) / 1000 }
  },
  /** Emits `count` packets to `room` at `rate` per second. */
  emit: async (args: { room: string; count: number; rate: number }) => {
    const started = performance.now()
    for (let s = 0; s < args.count; s++) {
      const due = started + (s * 1000) / args.rate
      const wait = due - performance.now()
      if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait))
      io!.to(args.room).emit("m", { s, user: "alice", text: "hello, world: see you at ten?" })
    }
    return { ms: performance.now() - started }
  },
  /**
   * Each op: a random socket joins a random room of `roomCount` if it is not in it, else leaves it
   * (`pace` ops per event-loop turn). Reports the ops, rooms created and deleted on this server,
   * and the LISTEN / UNLISTEN statements its LISTEN connection sent meanwhile.
   */
  churn: async (args: { ops: number; roomCount: number; pace: number; prefix: string }) => {
    const sockets = [...io!.of("/").sockets.values()]
    const nsp = adapter()
    let created = 0
    let deleted = 0
    const onCreate = () => created++
    const onDelete = () => deleted++
    nsp.on("create-room", onCreate)
    nsp.on("delete-room", onDelete)
    const before = { listen: listenStatements("LISTEN"), unlisten: listenStatements("UNLISTEN") }
    let joins = 0
    let leaves = 0
    for (let i = 0; i < args.ops; i++) {
      const socket = sockets[Math.floor(Math.random() * sockets.length)]!
      const room = `${args.prefix}${Math.floor(Math.random() * args.roomCount)}`
      if (socket.rooms.has(room)) {
        socket.leave(room)
        leaves++
      } else {
        socket.join(room)
        joins++
      }
      if ((i + 1) % args.pace === 0) await new Promise((resolve) => setImmediate(resolve))
    }
    // Everything leaves: the end state is no room, so every LISTEN has its UNLISTEN.
    for (const socket of sockets)
      for (const room of [...socket.rooms])
        if (room.startsWith(args.prefix)) {
          socket.leave(room)
          leaves++
        }
    // Let the LISTEN connection send what is queued.
    const deadline = Date.now() + 10_000
    while (Date.now() < deadline && (nsp.listenStatus().roomChannels ?? []).length > 0)
      await new Promise((resolve) => setTimeout(resolve, 20))
    await new Promise((resolve) => setTimeout(resolve, 200))
    nsp.off("create-room", onCreate)
    nsp.off("delete-room", onDelete)
    return {
      joins,
      leaves,
      created,
      deleted,
      listen: listenStatements("LISTEN") - before.listen,
      unlisten: listenStatements("UNLISTEN") - before.unlisten,
    }
  },
  close: async () => {
    await new Promise<void>((resolve) => (io ? io.close(() => resolve()) : resolve()))
    await pool?.end()
  },
})
