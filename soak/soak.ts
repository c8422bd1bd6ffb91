/**
 * `npm run soak`: three Socket.IO server processes on this adapter, clients that come and go,
 * steady traffic, and a schedule of faults (PostgreSQL restarted and frozen, the LISTEN backends
 * killed, every connection black-holed, a server SIGKILLed, 200 ms of latency), on a PostgreSQL of
 * its own reached through the TCP fault proxy. It counts every packet (origin, sequence) from
 * sender to client, and judges the run by the rules of `accounting.ts` (README, "Soak").
 *
 *   npm run soak                      10 minutes, every fault twice or so
 *   npm run soak -- --minutes 30
 *   npm run soak -- --quick           about a minute: LISTEN killed, black hole, server killed
 *
 * Writes DIR/<stamp>.json and DIR/<stamp>.svg (DIR: --out, default soak/results); exits 1 when a
 * rule is broken, 2 when the soak itself could not run.
 */
import { randomBytes } from "node:crypto"
import * as fs from "node:fs/promises"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { parseArgs } from "node:util"
import pg from "pg"
import { Worker } from "../bench/ipc.js"
import {
  type PrivatePostgres,
  startPrivatePostgres,
  terminateListeners,
} from "../test/utils/privatePostgres.js"
import {
  account,
  type ClientLog,
  type ClusterName,
  type Fault,
  type Probe,
  recovery,
  type Request,
  type Rules,
  type Sample,
  type Send,
  type SoakLog,
} from "./accounting.js"
import type { ClientsArgs } from "./clients.js"
import { formatReport, renderSvg, windowLine } from "./report.js"
import type { Drained, ServerArgs, ServerStats } from "./server.js"

const here = path.dirname(fileURLToPath(import.meta.url))

// ─── options ──────────────────────────────────────────────────────────────────────────────────

const USAGE = `usage: npm run soak -- [--minutes N] [--quick] [--out DIR] [--seed N] [--verbose]
  --minutes N   how long the traffic runs (default 10)
  --quick       about a minute, three faults: LISTEN killed, black hole, server killed
  --out DIR     where <stamp>.json and <stamp>.svg go (default soak/results)
  --seed N      seeds the clients' churn (default: random)
  --log         also write everything recorded (every send, receipt, probe) to <stamp>.log.json
  --verbose     show the workers' output`

interface Options {
  readonly minutes: number
  readonly quick: boolean
  readonly out: string
  readonly seed: number
  readonly verbose: boolean
  readonly log: boolean
}

class UsageError extends Error {}

const parseOptions = (argv: ReadonlyArray<string>): Options => {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      minutes: { type: "string" },
      quick: { type: "boolean", default: false },
      out: { type: "string" },
      seed: { type: "string" },
      verbose: { type: "boolean", default: false },
      log: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  })
  if (values.help) {
    console.log(USAGE)
    process.exit(0)
  }
  const minutes = values.minutes === undefined ? 10 : Number(values.minutes)
  if (!(minutes > 0)) throw new UsageError("--minutes must be a positive number")
  if (values.quick && values.minutes !== undefined) {
    throw new UsageError("--quick and --minutes exclude each other")
  }
  const seed = values.seed === undefined ? randomBytes(4).readUInt32BE() : Number(values.seed)
  if (!Number.isInteger(seed)) throw new UsageError("--seed must be an integer")
  return {
    minutes,
    quick: values.quick === true,
    out: path.resolve(values.out ?? path.join(here, "results")),
    seed,
    verbose: values.verbose === true,
    log: values.log === true,
  }
}

// ─── settings ─────────────────────────────────────────────────────────────────────────────────

const SERVERS = 3
/** One pool per server process, shared by its two adapters. */
const POOL_MAX = 4
/** One LISTEN connection per adapter, two adapters per server process. */
const LISTENERS = 2
const TICK_MS = 100
const REQUEST_EVERY_MS = 1000
const PROBE_EVERY_MS = 250
const FREEZE_MS = 5000
const LATENCY_MS = 200

/** The adapter's default `heartbeatTimeout`: membership settles within it after a fault. */
const HEARTBEAT_TIMEOUT_MS = 10_000

const rulesFor = (quick: boolean): Rules => ({
  startMarginMs: 100,
  endMarginMs: 1500,
  beforeFaultMs: 1000,
  graceMs: HEARTBEAT_TIMEOUT_MS,
  recoveryLimitMs: 60_000,
  maxConnectionsPerServer: POOL_MAX + LISTENERS,
  growthMinSpanMs: quick ? Infinity : 3 * 60_000,
  warmupMs: 60_000,
  growthFactor: 1.5,
  growthMinRssMb: 32,
  growthMinRows: 2000,
})

type FaultKind =
  "listen-kill" | "black-hole" | "pg-restart" | "pg-freeze" | "server-kill" | "latency"

const FULL_ORDER: ReadonlyArray<FaultKind> = [
  "listen-kill",
  "black-hole",
  "pg-restart",
  "pg-freeze",
  "server-kill",
  "latency",
]
const QUICK_ORDER: ReadonlyArray<FaultKind> = ["listen-kill", "black-hole", "server-kill"]

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, Math.max(0, ms)))

// ─── the soak ─────────────────────────────────────────────────────────────────────────────────

interface Names {
  readonly channelPrefix: string
  readonly tableName: string
  readonly recoveryTablePrefix: string
  readonly application: string
}

class Soak {
  readonly sends: Array<Send> = []
  readonly probes: Array<Probe> = []
  readonly requests: Array<Request> = []
  readonly clientLogs: Array<ClientLog> = []
  readonly faults: Array<Fault> = []
  readonly samples: Array<Sample> = []
  readonly problems: Array<string> = []
  readonly servers: Array<Worker | undefined> = []
  readonly incarnations: Array<number> = []
  readonly ports: Array<Record<ClusterName, number>> = []
  readonly killed = new Set<Worker>()
  readonly errors: Array<number> = []
  clients: Worker | undefined
  startedAt = 0
  trafficEnd = 0
  #lastError: string | undefined
  #draining: Promise<void> | undefined

  constructor(
    readonly options: Options,
    readonly rules: Rules,
    readonly postgres: PrivatePostgres,
    /** The fault proxy's process (`proxy.ts`), and its connection string. */
    readonly proxy: Worker,
    readonly proxyUrl: string,
    readonly names: Names,
  ) {}

  log(line: string) {
    const at = this.startedAt === 0 ? 0 : (Date.now() - this.startedAt) / 1000
    process.stderr.write(`[${at.toFixed(1).padStart(6)}s] ${line}\n`)
  }

  async startServer(slot: number) {
    const incarnation = (this.incarnations[slot] ?? 0) + 1
    this.incarnations[slot] = incarnation
    const worker = await Worker.start("../soak/server.ts", `s${slot}`, {
      verbose: this.options.verbose,
    })
    const args: ServerArgs = {
      slot,
      incarnation,
      url: this.proxyUrl,
      channelPrefix: this.names.channelPrefix,
      tableName: this.names.tableName,
      recoveryTablePrefix: this.names.recoveryTablePrefix,
      applicationName: `${this.names.application} s${slot}`,
      poolMax: POOL_MAX,
      ports: this.ports[slot] ?? { rec: 0, plain: 0 },
      tickMs: TICK_MS,
      requestEveryMs: REQUEST_EVERY_MS,
      probeEveryMs: PROBE_EVERY_MS,
      servers: SERVERS,
    }
    const started = await worker.call<{ ports: Record<ClusterName, number> }>("start", args, 60_000)
    this.ports[slot] = started.ports
    this.servers[slot] = worker
    return worker
  }

  /** Until every server counts every server, in both clusters. */
  async waitCluster(timeoutMs: number) {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const counts = await Promise.all(
        this.servers.map((w) =>
          w!
            .call<Record<ClusterName, number>>("count", {}, 5000)
            .catch(() => ({ rec: 0, plain: 0 })),
        ),
      )
      if (counts.every((c) => c.rec === SERVERS && c.plain === SERVERS)) return
      if (Date.now() > deadline) {
        throw new Error(`the cluster did not form: ${JSON.stringify(counts)}`)
      }
      await sleep(100)
    }
  }

  /** Collects what the servers and the clients logged since the last time. */
  drain(): Promise<void> {
    return (this.#draining ??= this.#drain().finally(() => (this.#draining = undefined)))
  }

  async #drain() {
    await Promise.all(
      this.servers.map(async (worker, slot) => {
        if (worker === undefined) return
        if (worker.exited) {
          if (!this.killed.has(worker)) {
            this.problems.push(`server s${slot} exited unexpectedly\n${worker.recentOutput()}`)
            this.killed.add(worker)
          }
          return
        }
        const drained = await worker.call<Drained>("drain", {}, 5000).catch(() => undefined)
        if (drained === undefined) return
        for (const [stream, seq, t] of drained.sends) this.sends.push({ stream, seq, t })
        this.probes.push(...drained.probes)
        this.requests.push(...drained.requests)
        this.errors[slot] = (this.errors[slot] ?? 0) + drained.errors
        if (drained.lastError !== undefined) this.#lastError = drained.lastError
      }),
    )
    const left = await this.clients?.call<Array<ClientLog>>("drain", {}, 10_000).catch(() => [])
    this.clientLogs.push(...(left ?? []))
  }

  /** A short-lived connection straight to PostgreSQL (not through the proxy), bounded in time. */
  async withAdmin<A>(use: (client: pg.Client) => Promise<A>): Promise<A> {
    const client = new pg.Client({
      connectionString: this.postgres.url,
      connectionTimeoutMillis: 2000,
      query_timeout: 2000,
      application_name: "soak admin",
    })
    client.on("error", () => {})
    try {
      await client.connect()
      return await use(client)
    } finally {
      client.end().catch(() => {})
    }
  }

  adminQuery<R extends pg.QueryResultRow>(sql: string, params: Array<unknown> = []) {
    return this.withAdmin(async (client) => (await client.query<R>(sql, params)).rows)
  }

  async sample() {
    const at = Date.now()
    const rssMb = await Promise.all(
      this.servers.map(async (worker) => {
        if (worker === undefined || worker.exited) return null
        const stats = await worker.call<ServerStats>("stats", {}, 2000).catch(() => undefined)
        return stats === undefined ? null : { origin: stats.origin, mb: stats.rssMb }
      }),
    )
    const connections = await this.adminQuery<{ name: string; n: number }>(
      `SELECT application_name AS name, count(*)::int AS n FROM pg_stat_activity
        WHERE left(application_name, length($1)) = $1 GROUP BY 1`,
      [`${this.names.application} s`],
    ).then(
      (rows) =>
        Array.from(
          { length: SERVERS },
          (_, slot) => rows.find((r) => r.name === `${this.names.application} s${slot}`)?.n ?? 0,
        ),
      () => null,
    )
    const table = `"${this.names.tableName}"`
    const attachments = await this.adminQuery<{ rows: number; bytes: string }>(
      `SELECT count(*)::int AS rows, pg_total_relation_size($1::regclass)::bigint AS bytes FROM ${table}`,
      [table],
    ).then(
      (rows) => rows[0],
      () => undefined,
    )
    this.samples.push({
      at,
      rssMb,
      connections,
      attachmentRows: attachments?.rows ?? null,
      attachmentBytes: attachments === undefined ? null : Number(attachments.bytes),
    })
  }

  /** The log so far; with `live`, the clients still connected are included as they are now. */
  async snapshot(live: boolean): Promise<SoakLog> {
    if (live) await this.drain()
    const current = live
      ? await this.clients!.call<Array<ClientLog>>("snapshot", {}, 10_000).catch(() => [])
      : []
    return {
      startedAt: this.startedAt,
      trafficEnd: this.trafficEnd === 0 ? Date.now() - this.rules.endMarginMs : this.trafficEnd,
      servers: SERVERS,
      sends: this.sends,
      clients: [...this.clientLogs, ...current],
      faults: this.faults,
      probes: this.probes,
      requests: this.requests,
      samples: this.samples,
    }
  }

  /** Until `fault` is recovered from (every pair of servers, both clusters) or the limit. */
  async waitRecovery(fault: Fault) {
    for (;;) {
      await sleep(500)
      await this.drain()
      const result = recovery(fault, this.probes, SERVERS, this.rules)
      if (result.recoveredAt !== null) {
        this.log(
          `${fault.kind}: cross-server delivery back after ${ms(result.recoveryMaxMs)} ` +
            `(p50 ${ms(result.recoveryP50Ms)} over ${result.pairs.length} server pairs)`,
        )
        return result.recoveredAt
      }
      if (Date.now() > fault.recoverFrom + this.rules.recoveryLimitMs) {
        this.log(`${fault.kind}: NOT recovered within ${this.rules.recoveryLimitMs} ms`)
        return null
      }
    }
  }

  async summarizeWindow(index: number) {
    const result = account(await this.snapshot(true), this.rules)
    const window = result.windows[index]
    if (window !== undefined) this.log(windowLine(window))
  }

  async progress() {
    const status = await this.clients
      ?.call<{ connected: number; live: number }>("status", {}, 5000)
      .catch(() => undefined)
    const last = this.samples[this.samples.length - 1]
    const rss = last?.rssMb.map((r) => (r === null ? "-" : r.mb.toFixed(0))).join("/") ?? "-"
    const conns = last?.connections?.join("/") ?? "-"
    const errors = this.errors.reduce((sum, n) => sum + n, 0)
    this.log(
      `sent ${this.sends.length} · clients ${status?.connected ?? "?"}/${status?.live ?? "?"} connected` +
        ` · rss ${rss} MB · pg connections ${conns} · attachments ${last?.attachmentRows ?? "-"} rows` +
        ` · adapter errors ${errors}${errors > 0 && this.#lastError ? ` (last: ${this.#lastError})` : ""}`,
    )
  }

  // ─── faults ─────────────────────────────────────────────────────────────────────────────────

  #killTurn = 0

  /** Injects one fault, waits for the recovery and lifts it; returns it as recorded. */
  async inject(kind: FaultKind): Promise<{ fault: Fault; recoveredAt: number | null }> {
    const start = Date.now()
    let end = start
    let recoverFrom = start
    let recoveredAt: number | null = null
    const record = () => {
      const fault: Fault = { kind, start, end, recoverFrom }
      this.faults.push(fault)
      return fault
    }
    switch (kind) {
      case "listen-kill": {
        // The servers' LISTEN backends: their last query is a LISTEN of one of our channels.
        const killed = await this.withAdmin((client) =>
          terminateListeners(client, { queryContains: this.names.channelPrefix }),
        )
        this.log(`fault listen-kill: ${killed} LISTEN backends terminated`)
        recoveredAt = await this.waitRecovery(record())
        break
      }
      case "black-hole": {
        const held = await this.proxy.call<number>("blackHole")
        this.log(`fault black-hole: ${held} open connections black-holed (new ones pass)`)
        const fault = record()
        recoveredAt = await this.waitRecovery(fault)
        // As TCP would give up on them at last: reset, so that none of their held bytes (a
        // publish that already failed) reaches PostgreSQL minutes late.
        const reset = await this.proxy.call<number>("lift")
        end = Date.now()
        this.faults[this.faults.length - 1] = { ...fault, end }
        this.log(`black-hole lifted: ${reset} held connections reset`)
        break
      }
      case "pg-restart": {
        this.log("fault pg-restart: stopping PostgreSQL")
        await this.postgres.stop()
        await this.postgres.start()
        end = recoverFrom = Date.now()
        this.log(`PostgreSQL up again after ${ms(end - start)}`)
        recoveredAt = await this.waitRecovery(record())
        break
      }
      case "pg-freeze": {
        this.log(`fault pg-freeze: PostgreSQL frozen (SIGSTOP) for ${ms(FREEZE_MS)}`)
        await this.postgres.pause()
        await sleep(FREEZE_MS)
        await this.postgres.resume()
        end = recoverFrom = Date.now()
        this.log("PostgreSQL resumed (SIGCONT)")
        recoveredAt = await this.waitRecovery(record())
        break
      }
      case "server-kill": {
        const slot = (1 + this.#killTurn++) % SERVERS
        const worker = this.servers[slot]!
        await this.drain()
        this.killed.add(worker)
        await worker.kill("SIGKILL")
        this.log(`fault server-kill: s${slot} SIGKILLed, restarting it`)
        await this.drain()
        const restarted = await this.startServer(slot)
        await restarted.call("startTraffic")
        end = recoverFrom = Date.now()
        this.log(`s${slot} back (incarnation ${this.incarnations[slot]}) after ${ms(end - start)}`)
        recoveredAt = await this.waitRecovery(record())
        break
      }
      case "latency": {
        const duration = this.options.quick ? 5000 : 15_000
        this.log(`fault latency: ${LATENCY_MS} ms each way for ${ms(duration)}`)
        await this.proxy.call("latency", { delayMs: LATENCY_MS })
        const fault = record()
        const waiting = this.waitRecovery(fault)
        await sleep(duration)
        await this.proxy.call("latency", { delayMs: 0 })
        end = Date.now()
        this.faults[this.faults.length - 1] = { ...fault, end }
        recoveredAt = await waiting
        this.log("latency removed")
        break
      }
    }
    return { fault: this.faults[this.faults.length - 1]!, recoveredAt }
  }
}

const ms = (value: number | null | undefined) =>
  value === null || value === undefined
    ? "-"
    : value >= 1000
      ? `${(value / 1000).toFixed(1)} s`
      : `${Math.round(value)} ms`

// ─── one run ──────────────────────────────────────────────────────────────────────────────────

/** The faults in order, and when each is due (ms after the traffic started). */
const schedule = (options: Options): Array<{ kind: FaultKind; at: number }> => {
  if (options.quick) return QUICK_ORDER.map((kind) => ({ kind, at: 5000 }))
  const duration = options.minutes * 60_000
  const lead = 20_000
  const count = Math.max(1, Math.floor((duration - lead - 30_000) / 50_000))
  const slot = (duration - lead) / count
  return Array.from({ length: count }, (_, i) => ({
    kind: FULL_ORDER[i % FULL_ORDER.length]!,
    at: lead + i * slot,
  }))
}

const runFaults = async (soak: Soak, options: Options) => {
  const plan = schedule(options)
  const duration = options.quick ? Infinity : options.minutes * 60_000
  const gap = options.quick ? 3000 : 5000
  let quietFrom = soak.startedAt
  for (const [index, step] of plan.entries()) {
    const due = Math.max(soak.startedAt + step.at, quietFrom + gap)
    await sleep(due - Date.now())
    if (Date.now() - soak.startedAt > duration - 30_000) break
    await soak.summarizeWindow(index)
    const { fault, recoveredAt } = await soak.inject(step.kind)
    // Its window closes `graceMs` after the recovery; the next fault waits for that.
    quietFrom = Math.max(fault.end, recoveredAt ?? Date.now()) + soak.rules.graceMs
    await sleep(quietFrom - Date.now())
  }
  const end = options.quick ? quietFrom + gap : soak.startedAt + duration
  await sleep(end - Date.now())
  await soak.summarizeWindow(soak.faults.length)
}

const main = async (): Promise<number> => {
  let options: Options
  try {
    options = parseOptions(process.argv.slice(2))
  } catch (error) {
    console.error(`${(error as Error).message}\n${USAGE}`)
    return 2
  }
  const rules = rulesFor(options.quick)
  const id = randomBytes(4).toString("hex")
  const names: Names = {
    channelPrefix: `soak_${id}`,
    tableName: `soak_${id}_attachments`,
    recoveryTablePrefix: `soak_${id}_recovery`,
    application: `soak ${id}`,
  }
  const log = (line: string) => process.stderr.write(`${line}\n`)
  log(
    `soak ${options.quick ? "--quick" : `${options.minutes} min`}: ${SERVERS} servers x 2 clusters ` +
      `(rec: connectionStateRecovery, plain: without), seed ${options.seed}`,
  )
  const postgres = await startPrivatePostgres()
  let proxy: Worker | undefined
  let soak: Soak
  try {
    // In a process of its own: the orchestrator's work must never hold up the traffic.
    proxy = await Worker.start("../soak/proxy.ts", "proxy", { verbose: options.verbose })
    const started = await proxy.call<{ url: string; port: number }>("start", {
      target: postgres.url,
    })
    log(
      `PostgreSQL of its own on port ${postgres.port}, the servers through a proxy on ${started.port}`,
    )
    soak = new Soak(options, rules, postgres, proxy, started.url, names)
  } catch (error) {
    await proxy?.stop()
    await postgres.destroy()
    throw error
  }
  const loops: Array<Promise<void>> = []
  let running = true
  try {
    // The first server creates the tables; the others join once it listens.
    await soak.startServer(0)
    await Promise.all([1, 2].map((slot) => soak.startServer(slot)))
    await soak.waitCluster(30_000)
    soak.clients = await Worker.start("../soak/clients.ts", "clients", {
      verbose: options.verbose,
    })
    const clientsArgs: ClientsArgs = {
      urls: soak.ports.map((ports) => ({
        rec: `http://127.0.0.1:${ports.rec}`,
        plain: `http://127.0.0.1:${ports.plain}`,
      })),
      perServer: 4,
      lifeMs: options.quick ? [6000, 20_000] : [10_000, 40_000],
      blipChance: 0.6,
      seed: options.seed,
    }
    soak.startedAt = Date.now()
    await Promise.all(soak.servers.map((w) => w!.call("startTraffic")))
    await soak.clients.call("start", clientsArgs)
    soak.log("traffic started")

    const every = async (periodMs: number, task: () => Promise<void>) => {
      while (running) {
        const t = Date.now()
        await task().catch((error) => soak.log(`(${(error as Error).message})`))
        await sleep(periodMs - (Date.now() - t))
      }
    }
    loops.push(every(1000, () => soak.drain()))
    loops.push(every(options.quick ? 2000 : 5000, () => soak.sample()))
    loops.push(every(options.quick ? 10_000 : 30_000, () => soak.progress()))

    await runFaults(soak, options)

    await Promise.all(soak.servers.map((w) => w?.call("stopTraffic").catch(() => {})))
    soak.trafficEnd = Date.now()
    soak.log("traffic stopped; waiting for the last deliveries")
    await sleep(rules.endMarginMs + 1500)
    running = false
    await Promise.all(loops)
    await soak.drain()
    soak.clientLogs.push(...(await soak.clients.call<Array<ClientLog>>("finish", {}, 30_000)))
    await soak.sample()
  } catch (error) {
    running = false
    soak.problems.push(`the soak could not run: ${(error as Error).stack ?? error}`)
  } finally {
    running = false
    await Promise.all(loops)
    await soak.clients?.stop()
    await Promise.all(soak.servers.map((w) => w?.stop()))
    await proxy.stop()
    await postgres.destroy()
  }

  const soakLog = await soak.snapshot(false)
  const result = account(soakLog, rules)
  const failures = [...soak.problems, ...result.verdict.failures]
  const stamp = new Date(soak.startedAt || Date.now()).toISOString().replace(/[:.]/g, "-")
  await fs.mkdir(options.out, { recursive: true })
  const report = {
    stamp,
    options: {
      minutes: options.quick ? null : options.minutes,
      quick: options.quick,
      seed: options.seed,
    },
    settings: {
      servers: SERVERS,
      poolMax: POOL_MAX,
      clientsPerServerAndCluster: 4,
      tickMs: TICK_MS,
      requestEveryMs: REQUEST_EVERY_MS,
      probeEveryMs: PROBE_EVERY_MS,
    },
    rules,
    startedAt: soak.startedAt,
    trafficEnd: soak.trafficEnd,
    durationMs: soak.trafficEnd - soak.startedAt,
    ok: failures.length === 0,
    failures,
    totals: result.totals,
    faults: result.faults,
    windows: result.windows,
    misdelivered: result.misdelivered,
    recoveryMisses: result.recoveryMisses,
    blips: result.blips,
    requests: summarizeRequests(soakLog.requests),
    adapterErrors: soak.errors,
    samples: soakLog.samples,
  }
  const json = path.join(options.out, `${stamp}.json`)
  const svg = path.join(options.out, `${stamp}.svg`)
  await fs.writeFile(json, `${JSON.stringify(report, null, 2)}\n`)
  await fs.writeFile(svg, renderSvg(soakLog, result, rules))
  if (options.log) {
    await fs.writeFile(path.join(options.out, `${stamp}.log.json`), JSON.stringify(soakLog))
  }
  console.log(formatReport(result, failures))
  console.log(
    `\nwrote ${path.relative(process.cwd(), json)} and ${path.relative(process.cwd(), svg)}`,
  )
  if (soak.problems.length > 0) return 2
  return failures.length === 0 ? 0 : 1
}

const summarizeRequests = (requests: ReadonlyArray<Request>) => {
  const out: Record<string, { ok: number; partial: number; failed: number }> = {}
  for (const r of requests) {
    const entry = (out[`${r.cluster} ${r.op}`] ??= { ok: 0, partial: 0, failed: 0 })
    entry[r.outcome]++
  }
  return out
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(error)
    process.exit(2)
  },
)
