/**
 * A benchmark worker: one Socket.IO server at a time, clustered through PostgreSQL by this adapter
 * ("ours"; "ours-recovery" with `connectionStateRecovery` on) or `@socket.io/postgres-adapter`
 * 0.5.0 ("upstream"), or through Redis by `@socket.io/redis-adapter` ("redis", with pub/sub
 * clients of its own), driven by `bench.ts` over IPC. It also runs the raw `pg_notify` sender and
 * listener, and measures its own CPU and memory.
 */
import { createAdapter as createUpstreamAdapter } from "@socket.io/postgres-adapter"
import { createAdapter as createRedisAdapter } from "@socket.io/redis-adapter"
import { randomBytes } from "node:crypto"
import { writeFile } from "node:fs/promises"
import * as path from "node:path"
import { pathToFileURL } from "node:url"
import * as http from "node:http"
import { Session } from "node:inspector/promises"
import type { AddressInfo } from "node:net"
import pg from "pg"
import { createClient } from "redis"
import { Server } from "socket.io"
import { createAdapter } from "../src/index.js"
import { serve } from "./ipc.js"
import { type AdapterKind, DEFAULT_REDIS_URL, type PayloadKind } from "./scenarios.js"
import { now, percentiles, Tracker } from "./stats.js"

/** Arguments of `start`. */
export interface StartArgs {
  readonly kind: AdapterKind
  readonly url: string
  /** Kind "redis": the Redis server; the adapter's `key` is `channelPrefix` (one per run). */
  readonly redisUrl?: string
  readonly channelPrefix: string
  readonly tableName: string
  /** Prefix of the recovery tables ("ours-recovery" only; the adapter creates them). */
  readonly recoveryTablePrefix: string
  /** `application_name` of every connection, to find our backends in `pg_stat_activity`. */
  readonly applicationName: string
  readonly heartbeatInterval: number
  readonly requestsTimeout: number
  /** Start watching the cluster size as soon as the adapter exists (see `watchResult`). */
  readonly watch?: WatchArgs
}

/** Arguments of `emit`. */
export interface EmitArgs {
  readonly payload: PayloadKind
  readonly count: number
  /** Packets per second; full speed when absent. */
  readonly rate?: number
  /** Broadcast to this room only. */
  readonly room?: string
  /** Full speed: yield to the event loop after this many emits, so the process can send. */
  readonly yieldEvery: number
}

/** What `emit` and the raw sender report. */
export interface EmitResult {
  readonly firstSend: number
  readonly lastSend: number
}

/** What `measureStop` reports. */
export interface Measurement {
  readonly cpuUserMs: number
  readonly cpuSystemMs: number
  readonly baseRssMb: number
  readonly peakRssMb: number
  readonly peakHeapMb: number
  /** Errors the adapter handed to its errorHandler (publish failures, ...). */
  readonly adapterErrors: number
  /** Statements this server sent through its pool while measured, by {@link statementKind}. */
  readonly statements: Partial<Record<StatementKind, StatementStats>>
}

/**
 * What a pool statement does: "store" writes recovery packets (and notifies them), "notify" only
 * notifies (attachment rows included), "other" is anything else (heartbeats are notifies too).
 */
export type StatementKind = "store" | "notify" | "other"

/** Round trips of one kind of statement, as the caller sees them (queueing in Node included). */
export interface StatementStats {
  readonly count: number
  readonly totalMs: number
  readonly p50Ms: number | null
  readonly p99Ms: number | null
}

/** What `request` reports. */
export interface RequestResult {
  readonly latencies: Array<number>
  readonly failures: number
  readonly firstError: string | undefined
  readonly start: number
  readonly end: number
}

/** The pub/sub clients of a "redis" server. */
type RedisClient = ReturnType<typeof createClient>

interface Instance {
  readonly io: Server
  readonly pool: pg.Pool
  readonly kind: AdapterKind
  readonly redis?: ReadonlyArray<RedisClient>
}

const BINARY = randomBytes(1024)
const LARGE_TEXT = "x".repeat(20_000)
const STATUSES = [
  "online, in the lobby",
  "away, back in ten minutes",
  "playing a ranked match",
  "offline since yesterday",
]
/** About 20 KB of JSON: 140 objects of 5 fields, as a leaderboard or a member list. */
const ITEMS = Array.from({ length: 140 }, (_, i) => {
  const name = `player-${String(i).padStart(4, "0")}`
  return {
    id: 100_000 + i,
    name,
    email: `${name}@example.com`,
    score: ((i * 7919) % 100_000) / 100,
    status: `${STATUSES[i % 4]} · datacenter eu-west-${i % 3}`,
  }
})

const packet = (payload: PayloadKind, s: number, t: number): Record<string, unknown> => {
  switch (payload) {
    case "small":
      // About 100 bytes of JSON with `s` and `t`.
      return { s, t, user: "alice", room: "general", text: "hello, world: see you at ten?" }
    case "binary":
      return { s, t, name: "frame.bin", b: BINARY }
    case "json20k":
      return { s, t, items: ITEMS }
    case "large":
      return { s, t, d: LARGE_TEXT }
  }
}

/** Connects the pub and sub clients of one "redis" server; none left open on failure. */
const connectRedis = async (url: string): Promise<[RedisClient, RedisClient]> => {
  const pub = createClient({ url, socket: { reconnectStrategy: false, connectTimeout: 5000 } })
  pub.on("error", () => {})
  await pub.connect()
  const sub = pub.duplicate()
  sub.on("error", () => {})
  try {
    await sub.connect()
  } catch (error) {
    pub.destroy()
    throw error
  }
  return [pub, sub]
}

const MB = 1024 * 1024

/** `createAdapter` of the checkout named by `bench.ts --baseline DIR` (its own build and modules). */
const baselineAdapter = async (): Promise<typeof createAdapter> => {
  const dir = process.env["BENCH_BASELINE"]
  if (dir === undefined) throw new Error("kind ours-base needs bench.ts --baseline DIR")
  // Its sources, as ours run (through tsx), so that both pay the same for the transpiler.
  const module = await import(pathToFileURL(path.join(dir, "src", "index.ts")).href)
  return module.createAdapter
}

/** `maxDisconnectionDuration` of the "ours-recovery" servers (Socket.IO's default). */
const RECOVERY_MS = 120_000

let instance: Instance | undefined
let adapterErrors = 0
let watch: Promise<number | null> | undefined
let measuring:
  | {
      cpu: NodeJS.CpuUsage
      baseRss: number
      peakRss: number
      peakHeap: number
      errors: number
      statements: Map<StatementKind, Array<number>>
      timer: ReturnType<typeof setInterval>
    }
  | undefined
let rawListener: { client: pg.Client; tracker: Tracker } | undefined
let rawSender: pg.Client | undefined

/** Watch the cluster grow to `size` servers, for at most `timeoutMs`. */
interface WatchArgs {
  readonly size: number
  readonly timeoutMs: number
}

const startWatch = (args: WatchArgs) => {
  const deadline = now() + args.timeoutMs
  watch = new Promise((resolve) => {
    const check = async () => {
      const count = await serverCount().catch(() => 0)
      const at = now()
      if (count >= args.size) return resolve(at)
      if (at > deadline) return resolve(null)
      setTimeout(check, 1)
    }
    void check()
  })
}

const serverCount = (): Promise<number> =>
  instance === undefined ? Promise.resolve(0) : instance.io.of("/").adapter.serverCount()

const statementKind = (sql: string): StatementKind =>
  sql.includes("_offsets") ? "store" : sql.includes("pg_notify") ? "notify" : "other"

/** Durations of the pool's statements while measuring, by kind. */
let statementTimes: Map<StatementKind, Array<number>> | undefined

const timeStatement = (sql: string, ms: number) => {
  if (statementTimes === undefined) return
  const kind = statementKind(sql)
  let times = statementTimes.get(kind)
  if (times === undefined) statementTimes.set(kind, (times = []))
  times.push(ms)
}

const statementStats = (
  times: Map<StatementKind, Array<number>> | undefined,
): Partial<Record<StatementKind, StatementStats>> =>
  Object.fromEntries(
    [...(times ?? [])].map(([kind, list]) => {
      const p = percentiles(list)
      return [
        kind,
        {
          count: list.length,
          totalMs: list.reduce((sum, ms) => sum + ms, 0),
          p50Ms: p.p50 ?? null,
          p99Ms: p.p99 ?? null,
        },
      ]
    }),
  )

const makePool = (url: string, applicationName: string) => {
  const pool = new pg.Pool({
    connectionString: url,
    max: 10,
    application_name: applicationName,
    // Keep the backends for the whole run: their CPU is read from /proc at the end.
    idleTimeoutMillis: 0,
  })
  pool.on("error", () => {})
  // Time every statement (call to result), whether it runs through `pool.query` (0.5.0) or on a
  // checked-out client (ours), in promise or callback form.
  const timed = new WeakSet<object>()
  pool.on("acquire", (client) => {
    if (timed.has(client)) return
    timed.add(client)
    const query = client.query.bind(client) as (...args: Array<unknown>) => unknown
    ;(client as { query: unknown }).query = (...args: Array<unknown>) => {
      const sql = typeof args[0] === "string" ? args[0] : undefined
      if (sql === undefined) return query(...args)
      const t = now()
      const done = () => timeStatement(sql, now() - t)
      const last = args.at(-1)
      if (typeof last === "function") {
        args[args.length - 1] = (...result: Array<unknown>) => {
          done()
          return (last as (...a: Array<unknown>) => unknown)(...result)
        }
        return query(...args)
      }
      const result = query(...args)
      if (result instanceof Promise) result.then(done, done)
      return result
    }
  })
  return pool
}

const withTimeout = <A>(promise: Promise<A>, ms: number): Promise<A | undefined> =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(() => resolve(undefined), ms)
    promise.then(
      (value) => {
        clearTimeout(timer)
        resolve(value)
      },
      (error) => {
        clearTimeout(timer)
        reject(error)
      },
    )
  })

// CPU profiles of the measured part of a run only (not of start-up), written as `.cpuprofile`.
let profiling: { session: Session; file: string } | undefined

const startProfile = async (file: string) => {
  await stopProfile()
  const session = new Session()
  session.connect()
  await session.post("Profiler.enable")
  await session.post("Profiler.setSamplingInterval", { interval: 200 })
  await session.post("Profiler.start")
  profiling = { session, file }
}

const stopProfile = async () => {
  const current = profiling
  if (current === undefined) return
  profiling = undefined
  const { profile } = await current.session.post("Profiler.stop")
  current.session.disconnect()
  await writeFile(current.file, JSON.stringify(profile))
}

const stopServer = async () => {
  const current = instance
  if (current === undefined) return
  instance = undefined
  await withTimeout(current.io.close(), 10_000).catch(() => {})
  await withTimeout(current.pool.end(), 10_000).catch(() => {})
  for (const client of current.redis ?? []) {
    await withTimeout(client.close(), 5_000).catch(() => {})
    if (client.isOpen) client.destroy()
  }
}

const stopRawListener = async () => {
  const current = rawListener
  rawListener = undefined
  await current?.client.end().catch(() => {})
}

const stopRawSender = async () => {
  const current = rawSender
  rawSender = undefined
  await current?.end().catch(() => {})
}

serve({
  async start(args: StartArgs) {
    await stopServer()
    adapterErrors = 0
    const redis =
      args.kind === "redis" ? await connectRedis(args.redisUrl ?? DEFAULT_REDIS_URL) : undefined
    const pool = makePool(args.url, args.applicationName)
    const errorHandler = () => {
      adapterErrors++
    }
    const options = {
      channelPrefix: args.channelPrefix,
      tableName: args.tableName,
      heartbeatInterval: args.heartbeatInterval,
      requestsTimeout: args.requestsTimeout,
      errorHandler,
    }
    const httpServer = http.createServer()
    // Taken just before the adapter's `init()` (which `new Server` runs for the main namespace).
    const t0 = now()
    const io = new Server(httpServer, {
      adapter:
        redis !== undefined
          ? (createRedisAdapter(redis[0], redis[1], {
              key: args.channelPrefix,
              requestsTimeout: args.requestsTimeout,
            }) as any)
          : args.kind === "upstream"
            ? (createUpstreamAdapter(pool, options) as any)
            : (args.kind === "ours-base" || args.kind === "ours-base-signed"
                ? await baselineAdapter()
                : createAdapter)(pool, {
                ...options,
                recoveryTablePrefix: args.recoveryTablePrefix,
                // Every message signed once, verified by each receiver (issue 16).
                ...(args.kind === "ours-signed" || args.kind === "ours-base-signed"
                  ? { secret: "bench-secret-of-32-bytes-length" }
                  : {}),
              }),
      serveClient: false,
      // Every broadcast is then stored with an offset, delivered locally once it is committed.
      ...(args.kind === "ours-recovery"
        ? { connectionStateRecovery: { maxDisconnectionDuration: RECOVERY_MS } }
        : {}),
    })
    io.on("connection", (socket) => {
      const room = socket.handshake.query["room"]
      if (typeof room === "string" && room !== "") socket.join(room)
    })
    io.on("ping", (n: unknown, callback: (value: unknown) => void) => callback(n))
    instance = { io, pool, kind: args.kind, ...(redis !== undefined ? { redis } : {}) }
    if (args.watch !== undefined) startWatch(args.watch)
    await new Promise<void>((resolve, reject) => {
      httpServer.once("error", reject)
      httpServer.listen(0, "127.0.0.1", () => resolve())
    })
    const port = (httpServer.address() as AddressInfo).port
    return { url: `http://127.0.0.1:${port}`, t0 }
  },

  count: () => serverCount(),

  /** Starts watching until the cluster has `size` servers; `watchResult` says when that was. */
  watchCount(args: WatchArgs) {
    startWatch(args)
    return null
  },

  watchResult: () => watch ?? null,

  async measureStart(args: { profile?: string }) {
    ;(globalThis as { gc?: () => void }).gc?.()
    if (args.profile !== undefined) await startProfile(args.profile)
    if (measuring !== undefined) clearInterval(measuring.timer)
    const baseRss = process.memoryUsage.rss()
    let ticks = 0
    const state = {
      cpu: process.cpuUsage(),
      baseRss,
      peakRss: baseRss,
      peakHeap: process.memoryUsage().heapUsed,
      errors: adapterErrors,
      statements: new Map<StatementKind, Array<number>>(),
      timer: setInterval(() => {
        state.peakRss = Math.max(state.peakRss, process.memoryUsage.rss())
        // Heap statistics cost more than the RSS: sample them less often.
        if (++ticks % 5 === 0) {
          state.peakHeap = Math.max(state.peakHeap, process.memoryUsage().heapUsed)
        }
      }, 20),
    }
    measuring = state
    statementTimes = state.statements
    return null
  },

  async measureStop(): Promise<Measurement> {
    const state = measuring
    if (state === undefined) throw new Error("measureStart was not called")
    measuring = undefined
    statementTimes = undefined
    clearInterval(state.timer)
    const cpu = process.cpuUsage(state.cpu)
    const rss = process.memoryUsage.rss()
    await stopProfile()
    return {
      cpuUserMs: cpu.user / 1000,
      cpuSystemMs: cpu.system / 1000,
      baseRssMb: state.baseRss / MB,
      peakRssMb: Math.max(state.peakRss, rss) / MB,
      peakHeapMb: state.peakHeap / MB,
      adapterErrors: adapterErrors - state.errors,
      statements: statementStats(state.statements),
    }
  },

  async emit(args: EmitArgs): Promise<EmitResult> {
    const io = instance?.io
    if (io === undefined) throw new Error("no server")
    const target = args.room === undefined ? io : io.to(args.room)
    const one = (s: number) => {
      const t = now()
      target.emit("m", packet(args.payload, s, t))
      return t
    }
    const firstSend = now()
    let lastSend = firstSend
    if (args.rate === undefined) {
      for (let s = 0; s < args.count; s++) {
        lastSend = one(s)
        if (s % args.yieldEvery === args.yieldEvery - 1) {
          await new Promise((resolve) => setImmediate(resolve))
        }
      }
    } else {
      const rate = args.rate
      let s = 0
      await new Promise<void>((resolve) => {
        const tick = () => {
          const due = Math.min(args.count, Math.floor(((now() - firstSend) * rate) / 1000) + 1)
          while (s < due) lastSend = one(s++)
          if (s >= args.count) return resolve()
          setTimeout(tick, 1)
        }
        tick()
      })
    }
    return { firstSend, lastSend }
  },

  /**
   * Warms the cluster up before a measured run (fresh processes compile their hot paths during
   * the first thousands of packets): `count` packets as the scenario sends them but under another
   * event name, which the clients do not count, then one `serverSideEmitWithAck` round trip, which
   * comes back after every server went through them (one channel, in order).
   */
  async warmup(args: { payload: PayloadKind; count: number; room?: string }): Promise<null> {
    const io = instance?.io
    if (io === undefined) throw new Error("no server")
    const target = args.room === undefined ? io : io.to(args.room)
    for (let s = 0; s < args.count; s++) {
      target.emit("warmup", packet(args.payload, s, now()))
      if (s % 200 === 199) await new Promise((resolve) => setImmediate(resolve))
    }
    await io.serverSideEmitWithAck("ping", -1)
    return null
  },

  /** `count` round trips of `fetchSockets` or `serverSideEmitWithAck`, one after the other. */
  async request(args: {
    op: "fetchSockets" | "serverSideEmitWithAck"
    count: number
    expected: number
  }): Promise<RequestResult> {
    const io = instance?.io
    if (io === undefined) throw new Error("no server")
    const latencies: Array<number> = []
    let failures = 0
    let firstError: string | undefined
    const start = now()
    for (let i = 0; i < args.count; i++) {
      const t = now()
      try {
        const answers: Array<unknown> =
          args.op === "fetchSockets"
            ? await io.fetchSockets()
            : await io.serverSideEmitWithAck("ping", i)
        if (answers.length === args.expected) latencies.push(now() - t)
        else {
          failures++
          firstError ??= `${answers.length} answers instead of ${args.expected}`
        }
      } catch (error) {
        failures++
        firstError ??= (error as Error)?.message ?? String(error)
      }
    }
    return { latencies, failures, firstError, start, end: now() }
  },

  stopServer: () => stopServer(),

  async rawListen(args: {
    url: string
    channel: string
    applicationName: string
    expected: number
  }) {
    await stopRawListener()
    const client = new pg.Client({
      connectionString: args.url,
      application_name: args.applicationName,
    })
    client.on("error", () => {})
    await client.connect()
    const tracker = new Tracker(args.expected)
    client.on("notification", (message) => {
      try {
        const { s, t } = JSON.parse(message.payload ?? "")
        tracker.record(s, t)
      } catch {
        tracker.unexpected++
      }
    })
    await client.query(`LISTEN "${args.channel}"`)
    rawListener = { client, tracker }
    return null
  },

  rawProgress() {
    const tracker = rawListener?.tracker
    return { unique: tracker?.unique ?? 0, expected: tracker?.expected ?? 0 }
  },

  async rawReport() {
    const tracker = rawListener?.tracker
    if (tracker === undefined) throw new Error("no raw listener")
    return { stats: tracker.stats(), latencies: tracker.latencies }
  },

  async rawStop() {
    await stopRawListener()
    await stopRawSender()
    return null
  },

  /** Opens the raw sender's connection (kept until `rawStop`, so /proc still shows its backend). */
  async rawOpenSender(args: { url: string; applicationName: string }) {
    await stopRawSender()
    const client = new pg.Client({
      connectionString: args.url,
      application_name: args.applicationName,
    })
    client.on("error", () => {})
    await client.connect()
    rawSender = client
    return null
  },

  /** Raw `pg_notify`: `perStatement` calls per statement, one statement at a time. */
  async rawNotify(args: {
    channel: string
    count: number
    perStatement: number
  }): Promise<EmitResult> {
    const client = rawSender
    if (client === undefined) throw new Error("rawOpenSender was not called")
    const per = args.perStatement
    const calls = Array.from({ length: per }, (_, i) => `pg_notify($1, $${i + 2})`)
    const full = `SELECT ${calls.join(", ")}`
    const firstSend = now()
    let lastSend = firstSend
    for (let s = 0; s < args.count; s += per) {
      const n = Math.min(per, args.count - s)
      const t = now()
      // Distinct payloads: identical ones in one transaction would be folded into one.
      const payloads = Array.from({ length: n }, (_, i) => JSON.stringify({ s: s + i, t }))
      const sql = n === per ? full : `SELECT ${calls.slice(0, n).join(", ")}`
      await client.query(sql, [args.channel, ...payloads])
      lastSend = t
    }
    return { firstSend, lastSend }
  },

  gc() {
    ;(globalThis as { gc?: () => void }).gc?.()
    return null
  },

  async close() {
    if (measuring !== undefined) clearInterval(measuring.timer)
    await stopRawListener()
    await stopRawSender()
    await stopServer()
    return null
  },
})
