/**
 * A soak server process, driven by `soak.ts` over IPC (`bench/ipc.ts`). It runs two Socket.IO
 * servers on one `pg.Pool` (through the soak's fault proxy), each on an adapter of its own and a
 * channel prefix of its own: "rec" with `connectionStateRecovery`, "plain" without. Both send
 * steady traffic (broadcasts and room broadcasts, small, 1 KB binary and 9 KB JSON in turn), ask
 * `fetchSockets` and `serverSideEmitWithAck`, and probe the other servers with `serverSideEmit`.
 * It logs what it sent, asked and heard; `drain` hands the log over and forgets it.
 */
import { randomBytes } from "node:crypto"
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import pg from "pg"
import { Server } from "socket.io"
import { createAdapter, type PostgresAdapter } from "../src/index.js"
import { serve } from "../bench/ipc.js"
import type { ClusterName, Probe, Request } from "./accounting.js"

/** Arguments of `start`. */
export interface ServerArgs {
  readonly slot: number
  readonly incarnation: number
  /** PostgreSQL through the proxy. */
  readonly url: string
  readonly channelPrefix: string
  readonly tableName: string
  readonly recoveryTablePrefix: string
  readonly applicationName: string
  readonly poolMax: number
  /** Ports to listen on (a restarted server takes its predecessor's); 0: any free one. */
  readonly ports: Readonly<Record<ClusterName, number>>
  /** ms between two rounds of traffic (one broadcast and one room broadcast per cluster). */
  readonly tickMs: number
  readonly requestEveryMs: number
  readonly probeEveryMs: number
  readonly servers: number
}

/** What `drain` returns: sends as `[streamKey, seq, t]`, and the rest as recorded. */
export interface Drained {
  readonly sends: Array<[string, number, number]>
  readonly probes: Array<Probe>
  readonly requests: Array<Request>
  errors: number
  lastError: string | undefined
}

/** What `stats` returns. */
export interface ServerStats {
  readonly origin: string
  readonly rssMb: number
  readonly pool: { readonly total: number; readonly idle: number; readonly waiting: number }
}

/** 1 KB of binary: always an attachment. */
const BINARY = randomBytes(1024)
/** Over the 8000-byte NOTIFY limit: an attachment too. */
const LARGE = "x".repeat(9000)
const SMALL = "hello, world"

interface Running {
  readonly args: ServerArgs
  readonly origin: string
  readonly pool: pg.Pool
  readonly io: Record<ClusterName, Server>
  readonly timers: Array<NodeJS.Timeout>
  readonly seq: Map<string, number>
}

let running: Running | undefined
let log: Drained = { sends: [], probes: [], requests: [], errors: 0, lastError: undefined }

const listen = (server: http.Server, port: number) =>
  new Promise<number>((resolve, reject) => {
    server.once("error", reject)
    server.listen(port, "127.0.0.1", () => {
      server.off("error", reject)
      resolve((server.address() as AddressInfo).port)
    })
  })

const makeIo = (args: ServerArgs, pool: pg.Pool, cluster: ClusterName, httpServer: http.Server) => {
  const errorHandler = (error: Error) => {
    log.errors++
    log.lastError = error.message
  }
  const io = new Server(httpServer, {
    serveClient: false,
    adapter: createAdapter(pool, {
      channelPrefix: `${args.channelPrefix}_${cluster}`,
      tableName: args.tableName,
      recoveryTablePrefix: args.recoveryTablePrefix,
      errorHandler,
    }),
    ...(cluster === "rec"
      ? { connectionStateRecovery: { maxDisconnectionDuration: 120_000 } }
      : {}),
  })
  io.on("connection", (socket) => {
    if (socket.handshake.query["room"] === "yes") socket.join("r")
  })
  io.on("probe", (probe: { from: number; sentAt: number }) => {
    log.probes.push({
      cluster,
      from: probe.from,
      to: args.slot,
      sentAt: probe.sentAt,
      at: Date.now(),
    })
  })
  io.on("ask", (n: unknown, ack: (answer: unknown) => void) => ack(n))
  return io
}

/** One round of traffic on one cluster: a broadcast to all, one to the room, kinds in turn. */
const emitRound = (state: Running, cluster: ClusterName) => {
  for (const target of ["all", "room"] as const) {
    const key = `${cluster}/${state.origin}/${target}`
    const seq = state.seq.get(key) ?? 0
    state.seq.set(key, seq + 1)
    const t = Date.now()
    const packet: Record<string, unknown> = { o: state.origin, s: seq, t }
    const kind = seq % 3
    if (kind === 0) packet["d"] = SMALL
    else if (kind === 1) packet["b"] = BINARY
    else packet["d"] = LARGE
    const io = state.io[cluster]
    if (target === "all") io.emit("m", packet)
    else io.to("r").emit("r", packet)
    log.sends.push([key, seq, t])
  }
}

/** A `fetchSockets` or `serverSideEmitWithAck`, logged with its outcome. */
const ask = async (state: Running, cluster: ClusterName, op: Request["op"]) => {
  const start = Date.now()
  let outcome: Request["outcome"]
  try {
    if (op === "fetchSockets") {
      await state.io[cluster].fetchSockets()
      outcome = "ok"
    } else {
      const answers = await state.io[cluster].serverSideEmitWithAck("ask", start)
      outcome = answers.length >= state.args.servers - 1 ? "ok" : "partial"
    }
  } catch {
    outcome = "failed"
  }
  log.requests.push({ op, cluster, server: state.args.slot, start, end: Date.now(), outcome })
}

const clusters: ReadonlyArray<ClusterName> = ["rec", "plain"]

serve({
  async start(args: ServerArgs) {
    const pool = new pg.Pool({
      connectionString: args.url,
      max: args.poolMax,
      application_name: args.applicationName,
    })
    pool.on("error", () => {})
    const servers = { rec: http.createServer(), plain: http.createServer() }
    const io = {
      rec: makeIo(args, pool, "rec", servers.rec),
      plain: makeIo(args, pool, "plain", servers.plain),
    }
    // Clients are let in once both adapters listen on their channel (`adapter.ready`): a client
    // connected, or restored, before that would miss what the other servers publish meanwhile
    // (PostgreSQL delivers notifications only to connections that listen).
    await Promise.all(clusters.map((c) => (io[c].of("/").adapter as PostgresAdapter).ready))
    const ports = {
      rec: await listen(servers.rec, args.ports.rec),
      plain: await listen(servers.plain, args.ports.plain),
    }
    running = {
      args,
      origin: `s${args.slot}.${args.incarnation}`,
      pool,
      io,
      timers: [],
      seq: new Map(),
    }
    return { ports, pid: process.pid }
  },

  /** Servers each cluster counts (this one included). */
  async count() {
    const state = running
    if (state === undefined) return { rec: 0, plain: 0 }
    const [rec, plain] = await Promise.all(
      clusters.map((c) => state.io[c].of("/").adapter.serverCount()),
    )
    return { rec, plain }
  },

  /** Starts the traffic, the requests and the probes. */
  startTraffic() {
    const state = running
    if (state === undefined) throw new Error("not started")
    const { tickMs, requestEveryMs, probeEveryMs, slot } = state.args
    state.timers.push(
      setInterval(() => {
        for (const cluster of clusters) emitRound(state, cluster)
      }, tickMs),
    )
    let turn = 0
    state.timers.push(
      setInterval(() => {
        const op = turn++ % 2 === 0 ? "fetchSockets" : "serverSideEmitWithAck"
        for (const cluster of clusters) void ask(state, cluster, op)
      }, requestEveryMs),
    )
    state.timers.push(
      setInterval(() => {
        for (const cluster of clusters) {
          state.io[cluster].serverSideEmit("probe", { from: slot, sentAt: Date.now() })
        }
      }, probeEveryMs),
    )
    return null
  },

  stopTraffic() {
    for (const timer of running?.timers.splice(0) ?? []) clearInterval(timer)
    return null
  },

  drain(): Drained {
    const drained = log
    log = { sends: [], probes: [], requests: [], errors: 0, lastError: undefined }
    return drained
  },

  stats(): ServerStats {
    const pool = running?.pool
    return {
      origin: running?.origin ?? "",
      rssMb: process.memoryUsage.rss() / (1024 * 1024),
      pool: {
        total: pool?.totalCount ?? 0,
        idle: pool?.idleCount ?? 0,
        waiting: pool?.waitingCount ?? 0,
      },
    }
  },

  async close() {
    const state = running
    running = undefined
    if (state === undefined) return null
    for (const timer of state.timers) clearInterval(timer)
    await Promise.all(clusters.map((c) => state.io[c].close().catch(() => {})))
    await state.pool.end().catch(() => {})
    return null
  },
})
