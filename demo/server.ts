/**
 * One Socket.IO server of the browser demo, in a process of its own so that stopping it is a real
 * crash (`SIGKILL`): the adapter on its own `pg.Pool`, connection state recovery on, a chat with
 * rooms. Started by `demo/servers.ts` with `fork`; it reports its state to the parent over IPC
 * twice a second and exits when the parent goes away.
 */
import * as http from "node:http"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import pg from "pg"
import { Server } from "socket.io"
import { Metrics } from "../src/effect.js"
import { createAdapter, type PostgresAdapter } from "../src/index.js"

/** What the parent passes in `DEMO_SERVER` (JSON). */
export interface ServerSettings {
  /** 1, 2 or 3: how the page names it. */
  readonly number: number
  readonly databaseUrl: string
  readonly channelPrefix: string
  readonly tableName: string
  readonly recoveryTablePrefix: string
  /** 0 the first time (the OS picks one); the same port again on a restart. */
  readonly port: number
  readonly heartbeatInterval: number
  readonly heartbeatTimeout: number
}

/** What a server tells the parent. */
export type ServerReport =
  | { readonly type: "ready"; readonly port: number }
  | { readonly type: "status"; readonly status: ServerStatus }
  | { readonly type: "log"; readonly text: string }

/** A server's live panel. */
export interface ServerStatus {
  /** Servers this one sees in the cluster, itself included (`serverCount()`). */
  readonly members: number
  /** Notifications sent and received per second, over the last 5 seconds. */
  readonly sentPerSecond: number
  readonly receivedPerSecond: number
  readonly listening: boolean
  readonly backendPid: number | undefined
  /** Times the LISTEN connection was lost. */
  readonly listenDrops: number
  readonly recovery: boolean
  /** Socket.IO clients connected to this server. */
  readonly clients: number
}

/** What the parent asks of a server. */
export type ServerCommand = { readonly type: "shutdown" }

/** A chat line as the clients get it. */
export interface ChatMessage {
  readonly text: string
  /** The room it was sent to, or null for everyone. */
  readonly room: string | null
  /** The sender's name, as its page set it. */
  readonly from: string
  /** The server that received it from the sender. */
  readonly server: number
}

const REPORT_EVERY_MS = 500
const MAX_TEXT = 500
const ROOM = /^[\p{L}\p{N}_-]{1,24}$/u

const settings = JSON.parse(process.env["DEMO_SERVER"] ?? "null") as ServerSettings | null
if (settings === null || typeof process.send !== "function") {
  console.error("demo/server.ts is started by the demo (npm start), not on its own")
  process.exit(2)
}

const report = (message: ServerReport) => {
  if (process.connected) process.send!(message)
}

const pool = new pg.Pool({
  connectionString: settings.databaseUrl,
  max: 5,
  application_name: `${settings.channelPrefix}_server${settings.number}`,
})
// A connection terminated or cut while idle (the fault buttons do that) must not crash the server.
pool.on("error", () => {})

const httpServer = http.createServer((_req, res) => {
  res.writeHead(404, { "content-type": "text/plain" }).end("a Socket.IO server of the demo\n")
})
const io = new Server(httpServer, {
  adapter: createAdapter(pool, {
    channelPrefix: settings.channelPrefix,
    tableName: settings.tableName,
    recoveryTablePrefix: settings.recoveryTablePrefix,
    heartbeatInterval: settings.heartbeatInterval,
    heartbeatTimeout: settings.heartbeatTimeout,
    errorHandler: (error) => report({ type: "log", text: error.message }),
  }),
  connectionStateRecovery: { maxDisconnectionDuration: 2 * 60_000, skipMiddlewares: true },
  // The page's clients come from the demo's page port over WebSocket only, which needs no CORS.
})

const nameOf = (value: unknown): string =>
  typeof value === "string" && value.length > 0 ? value.slice(0, 40) : "someone"

io.on("connection", (socket) => {
  const from = nameOf((socket.handshake.auth as { name?: unknown }).name)
  const rooms = () => [...socket.rooms].filter((room) => room !== socket.id).sort()
  socket.emit("welcome", { server: settings.number, recovered: socket.recovered, rooms: rooms() })

  socket.on("chat", (input: { text?: unknown; room?: unknown }, ack?: unknown) => {
    const text = typeof input?.text === "string" ? input.text.trim().slice(0, MAX_TEXT) : ""
    const room = typeof input?.room === "string" && ROOM.test(input.room) ? input.room : null
    if (text !== "") {
      const message: ChatMessage = { text, room, from, server: settings.number }
      if (room === null) io.emit("chat", message)
      else io.to(room).emit("chat", message)
    }
    if (typeof ack === "function") ack(text !== "")
  })

  const roomChange = (join: boolean) => (room: unknown, ack?: unknown) => {
    const valid = typeof room === "string" && ROOM.test(room)
    if (valid && join) socket.join(room)
    else if (valid) socket.leave(room)
    if (typeof ack === "function")
      ack(valid ? rooms() : { error: "room names: 1-24 letters, digits, - or _" })
  }
  socket.on("join", roomChange(true))
  socket.on("leave", roomChange(false))
})

const adapter = () => io.of("/").adapter as unknown as PostgresAdapter
const count = (metric: typeof Metrics.notificationsSent) =>
  Effect.runSync(Metric.value(metric)).count as number

// Rates over the last few seconds: heartbeats every 2 s would make a 0.5-s window jump 0, 2, 0.
const RATE_WINDOW_MS = 5_000
const samples: Array<{ readonly at: number; readonly sent: number; readonly received: number }> = []
const perSecond = (now: number, then: number, ms: number) =>
  ms > 0 ? Math.round(((now - then) / ms) * 10_000) / 10 : 0

const reportStatus = async () => {
  const now = {
    at: performance.now(),
    sent: count(Metrics.notificationsSent),
    received: count(Metrics.notificationsReceived),
  }
  samples.push(now)
  while (samples.length > 2 && now.at - samples[0]!.at > RATE_WINDOW_MS) samples.shift()
  const first = samples[0]!
  const listen = adapter().listenStatus()
  report({
    type: "status",
    status: {
      members: await adapter().serverCount(),
      sentPerSecond: perSecond(now.sent, first.sent, now.at - first.at),
      receivedPerSecond: perSecond(now.received, first.received, now.at - first.at),
      listening: listen.listening,
      backendPid: listen.backendPid,
      listenDrops: count(Metrics.listenerDrops),
      recovery: true,
      clients: io.engine.clientsCount,
    },
  })
}

let closing = false
const shutdown = async () => {
  if (closing) return
  closing = true
  clearInterval(timer)
  // Announces ADAPTER_CLOSE (the others drop this server at once), then releases everything.
  const done = Promise.all([io.close(), pool.end()])
  const force = new Promise((resolve) => setTimeout(resolve, 5_000).unref())
  await Promise.race([done, force]).catch(() => {})
  process.exit(0)
}

const timer = setInterval(() => void reportStatus().catch(() => {}), REPORT_EVERY_MS)
process.on("message", (command: ServerCommand) => {
  if (command?.type === "shutdown") void shutdown()
})
// The parent is gone (it crashed or was killed): nobody would ever stop this one.
process.on("disconnect", () => void shutdown())
// A Ctrl-C in the terminal reaches the whole process group: the parent decides, and says so.
process.on("SIGINT", () => {})
process.on("SIGTERM", () => void shutdown())

httpServer.once("error", (error: NodeJS.ErrnoException) => {
  report({
    type: "log",
    text:
      error.code === "EADDRINUSE"
        ? `port ${settings.port} is taken now: cannot start again on it`
        : `cannot listen: ${error.message}`,
  })
  process.exit(1)
})
httpServer.listen(settings.port, () => {
  const address = httpServer.address()
  report({ type: "ready", port: typeof address === "object" && address ? address.port : 0 })
  void reportStatus()
})
