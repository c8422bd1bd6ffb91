/**
 * `npm run bench`: this adapter, `@socket.io/postgres-adapter` 0.5.0, `@socket.io/redis-adapter`
 * and raw `pg_notify`, in one run, interleaved and repeated (medians), on three Socket.IO servers and their clients, each in a
 * process of its own. Prints a table; writes `latest.json` and `latest.svg` to bench/results.
 *
 *   npm run bench                      full run (a few minutes)
 *   npm run bench -- --quick           tiny counts, one repetition (smoke test, CI)
 *   npm run bench -- --scenario small --scenario large --repeat 5
 *   npm run bench -- --kind ours --scenario small --profile   (CPU profiles of the servers)
 *
 * Profiles cover the measured part of each run (not start-up): DIR/profiles/<scenario>-<kind>-
 * rep<n>-server<i>.cpuprofile, for Chrome DevTools or speedscope.
 *
 * `DATABASE_URL` selects the PostgreSQL; without it an embedded one is started and deleted after.
 * `REDIS_URL` (default redis://127.0.0.1:6379) the Redis of kind "redis", skipped when unreachable.
 */
import { randomBytes } from "node:crypto"
import { existsSync } from "node:fs"
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { parseArgs } from "node:util"
import pg from "pg"
import { createClient } from "redis"
import { openDatabase, redactUrl } from "../demo/postgres.js"
import type { ClientsReport, ConnectArgs } from "./clients.js"
import { Worker } from "./ipc.js"
import type {
  EmitArgs,
  EmitResult,
  Measurement,
  RequestResult,
  StartArgs,
  StatementStats,
} from "./node.js"
import {
  formatTable,
  headlines,
  ratios,
  recoveryCosts,
  renderSvg,
  type RunResult,
  summarize,
} from "./report.js"
import {
  ALL_KINDS,
  type AdapterKind,
  type BroadcastScenario,
  DEFAULT_REDIS_URL,
  FIXED_RATE,
  type JoinScenario,
  type Kind,
  KIND_LABEL,
  kindsOf,
  MANY_RATE,
  type RawKind,
  type RequestScenario,
  type Scenario,
  scenarios as allScenarios,
} from "./scenarios.js"
import {
  cpuBetween,
  percentiles,
  redisProcesses,
  round,
  serverCpu,
  serverProcesses,
} from "./stats.js"

const here = path.dirname(fileURLToPath(import.meta.url))

// ─── options ──────────────────────────────────────────────────────────────────────────────────

const USAGE = `usage: npm run bench -- [--quick] [--repeat N] [--scenario NAME]... [--kind KIND]...
                       [--out DIR] [--profile] [--verbose]
  --quick          tiny counts, 1 repetition (smoke test, CI)
  --repeat N       repetitions per scenario and kind (default 3; medians are reported)
  --scale X        multiplies every count (packets, round trips) by X: longer, steadier runs
  --scenario NAME  run only this scenario (repeatable, or NAME,NAME,…): ${allScenarios(false)
    .map((s) => s.name)
    .join(", ")}
  --kind KIND      run only this kind (repeatable, or KIND,KIND,…): ${ALL_KINDS.join(", ")}
  --out DIR        where latest.json and latest.svg go (default bench/results)
  --baseline DIR   also run kinds ours-base and ours-base-signed: the adapter built in DIR
                   (another checkout, after npm ci there), to compare two versions in one run
  --profile        write V8 CPU profiles of the servers' measured work to DIR/profiles
  --verbose        show the workers' output`

interface Options {
  readonly quick: boolean
  readonly repeat: number
  readonly scenarios: ReadonlyArray<Scenario>
  readonly kinds: Set<Kind>
  readonly out: string
  readonly profile: boolean
  readonly verbose: boolean
}

class UsageError extends Error {}

const parseOptions = (argv: ReadonlyArray<string>): Options => {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      quick: { type: "boolean", default: false },
      repeat: { type: "string" },
      scale: { type: "string" },
      scenario: { type: "string", multiple: true },
      kind: { type: "string", multiple: true },
      out: { type: "string" },
      baseline: { type: "string" },
      profile: { type: "boolean", default: false },
      verbose: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  })
  if (values.help) {
    console.log(USAGE)
    process.exit(0)
  }
  const quick = values.quick === true
  const repeat = values.repeat === undefined ? (quick ? 1 : 3) : Number(values.repeat)
  if (!Number.isInteger(repeat) || repeat < 1) throw new UsageError("--repeat must be 1 or more")
  const scale = values.scale === undefined ? 1 : Number(values.scale)
  if (!(scale > 0) || !Number.isFinite(scale))
    throw new UsageError("--scale must be a number above 0")
  const available = allScenarios(quick, scale)
  const list = (values: ReadonlyArray<string> | undefined) =>
    (values ?? []).flatMap((v) => v.split(",")).filter((v) => v !== "")
  const wanted = list(values.scenario)
  for (const name of wanted) {
    if (!available.some((s) => s.name === name)) throw new UsageError(`unknown scenario ${name}`)
  }
  const kinds = values.kind === undefined ? [...ALL_KINDS] : list(values.kind)
  for (const kind of kinds) {
    if (!(ALL_KINDS as ReadonlyArray<string>).includes(kind))
      throw new UsageError(`unknown kind ${kind}`)
  }
  // The workers load the baseline's build from this directory (see node.ts).
  if (values.baseline !== undefined) {
    const baseline = path.resolve(values.baseline)
    if (!existsSync(path.join(baseline, "src", "index.ts"))) {
      throw new UsageError(
        `--baseline ${baseline}: no src/index.ts there (a checkout of this package, after npm ci in it)`,
      )
    }
    process.env["BENCH_BASELINE"] = baseline
  } else {
    for (const kind of ["ours-base", "ours-base-signed"]) {
      if (!kinds.includes(kind)) continue
      if (values.kind !== undefined) throw new UsageError(`kind ${kind} needs --baseline DIR`)
      kinds.splice(kinds.indexOf(kind), 1)
    }
  }
  return {
    quick,
    repeat,
    scenarios: wanted.length === 0 ? available : available.filter((s) => wanted.includes(s.name)),
    kinds: new Set(kinds as Array<Kind>),
    out: path.resolve(values.out ?? path.join(here, "results")),
    profile: values.profile === true,
    verbose: values.verbose === true,
  }
}

// ─── settings ─────────────────────────────────────────────────────────────────────────────────

const SERVERS = 3
/** Heartbeats in every scenario but `join`: small, so that 0.5.0's cluster forms quickly. */
const HEARTBEAT_MS = 500
const REQUESTS_TIMEOUT_MS = 5000
const POLL_MS = 50

const deadlines = (quick: boolean) =>
  quick ? { afterEmitMs: 15_000, stallMs: 5_000 } : { afterEmitMs: 30_000, stallMs: 10_000 }

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

const log = (line: string) => process.stderr.write(`${line}\n`)

// ─── workers ──────────────────────────────────────────────────────────────────────────────────

/** The worker processes: `servers[i]` runs server i, `clients[i]` the clients of server i. */
interface Workers {
  readonly servers: ReadonlyArray<Worker>
  readonly clients: ReadonlyArray<Worker>
}

/** Starts `count` workers of `script`, named `prefix0`, `prefix1`, …; all or none. */
const startGroup = async (
  options: Options,
  script: string,
  prefix: string,
  count = SERVERS,
): Promise<Array<Worker>> => {
  const started = await Promise.allSettled(
    Array.from({ length: count }, (_, i) =>
      Worker.start(script, `${prefix}${i}`, { verbose: options.verbose }),
    ),
  )
  const workers = started.flatMap((s) => (s.status === "fulfilled" ? [s.value] : []))
  const failed = started.find((s) => s.status === "rejected")
  if (failed !== undefined) {
    await stopGroup(workers)
    throw (failed as PromiseRejectedResult).reason
  }
  return workers
}

const stopGroup = async (workers: ReadonlyArray<Worker> | undefined) => {
  await Promise.all((workers ?? []).map((w) => w.stop()))
}

// ─── one run ──────────────────────────────────────────────────────────────────────────────────

interface Context {
  readonly options: Options
  readonly url: string
  readonly admin: pg.Pool
  /** Kind "redis" connects its servers here. */
  readonly redisUrl: string
  readonly workers: Workers
  /** Names this run's profiles, with `--profile`. */
  readonly label: string
}

let runSequence = 0

/**
 * Names unique to one run: channel prefix, tables (attachments; recovery's three), and the
 * application_name of its connections.
 */
const runNames = () => {
  const id = `${(++runSequence).toString(36)}_${randomBytes(4).toString("hex")}`
  return {
    channelPrefix: `bench_${id}`,
    tableName: `bench_${id}`,
    recoveryTablePrefix: `bench_${id}_recovery`,
    application: `sio-bench ${id}`,
  }
}

type Names = ReturnType<typeof runNames>

const startArgs = (
  ctx: Context,
  names: Names,
  kind: AdapterKind,
  index: number,
  heartbeatInterval = HEARTBEAT_MS,
): StartArgs => ({
  kind,
  url: ctx.url,
  redisUrl: ctx.redisUrl,
  channelPrefix: names.channelPrefix,
  tableName: names.tableName,
  recoveryTablePrefix: names.recoveryTablePrefix,
  applicationName: `${names.application} s${index}`,
  heartbeatInterval,
  requestsTimeout: REQUESTS_TIMEOUT_MS,
})

/** Until every server in `workers` counts `size` servers in its cluster. */
const waitCluster = async (workers: ReadonlyArray<Worker>, size: number, timeoutMs: number) => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const counts = await Promise.all(workers.map((w) => w.call<number>("count")))
    if (counts.every((c) => c >= size)) return
    if (Date.now() > deadline) {
      throw new Error(
        `the cluster did not form within ${timeoutMs} ms: counts ${counts.join(", ")}`,
      )
    }
    await sleep(20)
  }
}

/** Polls `progress` until everything arrived, nothing arrived for a while, or the deadline. */
const waitDelivery = async (
  ctx: Context,
  progress: () => Promise<{ unique: number; expected: number }>,
): Promise<boolean> => {
  const { afterEmitMs, stallMs } = deadlines(ctx.options.quick)
  const start = Date.now()
  let last = -1
  let lastChange = start
  for (;;) {
    const p = await progress()
    if (p.unique >= p.expected) return true
    const t = Date.now()
    if (p.unique !== last) {
      last = p.unique
      lastChange = t
    }
    if (t - start > afterEmitMs || t - lastChange > stallMs) return false
    await sleep(POLL_MS)
  }
}

const sumProgress = async (workers: ReadonlyArray<Worker>) => {
  const all = await Promise.all(
    workers.map((w) => w.call<{ unique: number; expected: number }>("progress")),
  )
  return {
    unique: all.reduce((sum, p) => sum + p.unique, 0),
    expected: all.reduce((sum, p) => sum + p.expected, 0),
  }
}

interface Measured<A> {
  readonly value: A
  readonly servers: ReadonlyArray<Measurement>
  readonly pgCpuMs: number | undefined
  readonly pgServerCpuMs: number | undefined
  /** CPU of every `redis-server` process on this machine (others' use of it included). */
  readonly redisCpuMs: number | undefined
}

/** Runs `body` between CPU/memory measurements of the servers and of PostgreSQL. */
const measure = async <A>(
  ctx: Context,
  names: Names,
  body: () => Promise<A>,
): Promise<Measured<A>> => {
  const dir = path.join(ctx.options.out, "profiles")
  if (ctx.options.profile) await fs.mkdir(dir, { recursive: true })
  await Promise.all(
    ctx.workers.servers.map((w) =>
      w.call(
        "measureStart",
        ctx.options.profile ? { profile: path.join(dir, `${ctx.label}-${w.name}.cpuprofile`) } : {},
      ),
    ),
  )
  const before = serverCpu()
  const value = await body()
  const after = serverCpu()
  const { rows } = await ctx.admin.query<{ pid: number }>(
    "SELECT pid FROM pg_stat_activity WHERE left(application_name, length($1)) = $1",
    [names.application],
  )
  const servers = await Promise.all(
    ctx.workers.servers.map((w) => w.call<Measurement>("measureStop")),
  )
  const pids = rows.map((r) => r.pid)
  return {
    value,
    servers,
    pgCpuMs: cpuBetween(before, after, pids),
    pgServerCpuMs:
      pids.length === 0 ? undefined : cpuBetween(before, after, serverProcesses(after, pids[0]!)),
    redisCpuMs: cpuBetween(before, after, redisProcesses(after)),
  }
}

const cpuOf = (m: Measurement) => m.cpuUserMs + m.cpuSystemMs

/**
 * The emitting server's publishing statements ("store" with recovery, "notify" otherwise; its
 * heartbeats included): how many, how long each took, and how much of the run they filled.
 */
const statementFields = (emitter: Measurement, count: number, durationMs: number | null) => {
  const all = [emitter.statements.store, emitter.statements.notify].filter(
    (s): s is StatementStats => s !== undefined,
  )
  const statements = all.reduce((sum, s) => sum + s.count, 0)
  const totalMs = all.reduce((sum, s) => sum + s.totalMs, 0)
  const main = all.sort((a, b) => b.count - a.count)[0]
  return {
    statements,
    broadcastsPerStatement: statements === 0 ? null : round(count / statements),
    statementMs: statements === 0 ? null : round(totalMs / statements, 3),
    statementP99Ms: round(main?.p99Ms, 3),
    statementBusy:
      statements === 0 || durationMs === null || durationMs <= 0
        ? null
        : round(totalMs / durationMs, 3),
    emitterStatements: emitter.statements,
  }
}

const per1k = (value: number | undefined | null, count: number) =>
  value === undefined || value === null || count === 0 ? null : round((value * 1000) / count)

/** The fields every kind of run fills the same way. */
const resourceFields = (measured: Measured<unknown>, count: number, kind: Kind) => {
  const serverCpu = measured.servers.reduce((sum, m) => sum + cpuOf(m), 0)
  const emitter = measured.servers[0]!
  return {
    serverCpuMs: round(serverCpu),
    serverCpuSystemMs: round(measured.servers.reduce((sum, m) => sum + m.cpuSystemMs, 0)),
    emitterCpuMs: round(cpuOf(emitter)),
    serverCpuPer1k: per1k(serverCpu, count),
    emitterCpuPer1k: per1k(cpuOf(emitter), count),
    pgCpuMs: round(measured.pgCpuMs),
    pgCpuPer1k: per1k(measured.pgCpuMs, count),
    pgServerCpuMs: round(measured.pgServerCpuMs),
    // Only where Redis carries the messages: elsewhere it is other people's load.
    redisCpuMs: kind === "redis" ? round(measured.redisCpuMs) : null,
    redisCpuPer1k: kind === "redis" ? per1k(measured.redisCpuMs, count) : null,
    emitterBaseRssMb: round(emitter.baseRssMb, 1),
    emitterPeakRssMb: round(emitter.peakRssMb, 1),
    emitterPeakHeapMb: round(emitter.peakHeapMb, 1),
    maxPeakRssMb: round(Math.max(...measured.servers.map((m) => m.peakRssMb)), 1),
    adapterErrors: measured.servers.reduce((sum, m) => sum + m.adapterErrors, 0),
  }
}

const EMPTY = {
  redisCpuMs: null,
  redisCpuPer1k: null,
  withOffset: null,
  offsetErrors: 0,
  statements: null,
  broadcastsPerStatement: null,
  statementMs: null,
  statementP99Ms: null,
  statementBusy: null,
  emitterStatements: null,
  lost: 0,
  duplicates: 0,
  outOfOrder: 0,
  unexpected: 0,
  timedOut: false,
  emitMs: null,
  durationMs: null,
  localP50: null,
  localP99: null,
  seenByOthersMs: null,
  seesOthersMs: null,
}

const mergeReports = (reports: ReadonlyArray<ClientsReport>) => {
  const latencies: Array<number> = []
  for (const r of reports) for (const l of r.latencies) latencies.push(l)
  const lastAts = reports.flatMap((r) => (r.lastAt === null ? [] : [r.lastAt]))
  return {
    received: reports.reduce((s, r) => s + r.unique + r.duplicates + r.unexpected, 0),
    withOffset: reports.reduce((s, r) => s + r.withOffset, 0),
    expected: reports.reduce((s, r) => s + r.expected, 0),
    unique: reports.reduce((s, r) => s + r.unique, 0),
    duplicates: reports.reduce((s, r) => s + r.duplicates, 0),
    outOfOrder: reports.reduce((s, r) => s + r.outOfOrder, 0),
    unexpected: reports.reduce((s, r) => s + r.unexpected, 0),
    lastAt: lastAts.length === 0 ? null : Math.max(...lastAts),
    latencies,
  }
}

/** Result fields of a delivery measured at receivers that expected `count` packets each. */
const deliveryFields = (
  count: number,
  emit: EmitResult,
  remote: Omit<ReturnType<typeof mergeReports>, "received" | "withOffset">,
  complete: boolean,
) => {
  const receivers = count === 0 ? 0 : Math.round(remote.expected / count)
  const durationMs = remote.lastAt === null ? null : remote.lastAt - emit.firstSend
  const perReceiver = receivers === 0 ? 0 : remote.unique / receivers
  const latency = percentiles(remote.latencies)
  return {
    receivers,
    throughput:
      durationMs === null || durationMs <= 0 ? null : round(perReceiver / (durationMs / 1000), 0),
    p50: round(latency.p50, 3),
    p95: round(latency.p95, 3),
    p99: round(latency.p99, 3),
    max: round(latency.max, 3),
    lost: remote.expected - remote.unique,
    duplicates: remote.duplicates,
    outOfOrder: remote.outOfOrder,
    unexpected: remote.unexpected,
    timedOut: !complete,
    emitMs: round(emit.lastSend - emit.firstSend),
    durationMs: round(durationMs),
  }
}

const createTable = (ctx: Context, table: string) =>
  ctx.admin.query(
    `CREATE TABLE IF NOT EXISTS ${table} (id bigserial UNIQUE, created_at timestamptz DEFAULT NOW(), payload bytea)`,
  )

const recoveryTables = (names: Names) =>
  ["packets", "sessions", "offsets"].map((t) => `${names.recoveryTablePrefix}_${t}`).join(", ")

/** Starts the servers and their clients, runs `body`, and tears everything down again. */
const withCluster = async <A>(
  ctx: Context,
  kind: AdapterKind,
  clients: Omit<ConnectArgs, "url">,
  body: (names: Names) => Promise<A>,
): Promise<A> => {
  const names = runNames()
  const { servers, clients: clientWorkers } = ctx.workers
  // 0.5.0 does not create its table; ours would, but both get the same start.
  await createTable(ctx, names.tableName)
  try {
    const started = await Promise.all(
      servers.map((w, i) => w.call<{ url: string }>("start", startArgs(ctx, names, kind, i))),
    )
    await Promise.all(
      clientWorkers.map((w, i) =>
        w.call("connect", { ...clients, url: started[i]!.url } satisfies ConnectArgs),
      ),
    )
    await waitCluster(servers, SERVERS, 10 * HEARTBEAT_MS + 5000)
    return await body(names)
  } finally {
    await Promise.allSettled(clientWorkers.map((w) => w.call("disconnect")))
    await Promise.allSettled(servers.map((w) => w.call("stopServer")))
    await ctx.admin.query(`DROP TABLE IF EXISTS ${names.tableName}`).catch(() => {})
    // Created by the adapter when the servers run with connectionStateRecovery.
    if (kind === "ours-recovery") {
      await ctx.admin.query(`DROP TABLE IF EXISTS ${recoveryTables(names)}`).catch(() => {})
    }
  }
}

const runBroadcast = (
  ctx: Context,
  scenario: BroadcastScenario,
  kind: AdapterKind,
  rep: number,
): Promise<RunResult> =>
  withCluster(
    ctx,
    kind,
    {
      count: scenario.clientsPerServer,
      expected: scenario.count,
      ...(scenario.room === true ? { room: "r" } : {}),
    },
    async (names) => {
      const emitArgs: EmitArgs = {
        payload: scenario.payload,
        count: scenario.count,
        yieldEvery: 200,
        ...(scenario.rate !== undefined ? { rate: scenario.rate } : {}),
        ...(scenario.room === true ? { room: "r" } : {}),
      }
      const emitTimeout = 120_000 + (scenario.rate ? (scenario.count / scenario.rate) * 1000 : 0)
      if (!ctx.options.quick) await warmup(ctx, scenario)
      const measured = await measure(ctx, names, async () => {
        const emit = await ctx.workers.servers[0]!.call<EmitResult>("emit", emitArgs, emitTimeout)
        const complete = await waitDelivery(ctx, () => sumProgress(ctx.workers.clients.slice(1)))
        return { emit, complete }
      })
      const reports = await Promise.all(
        ctx.workers.clients.map((w) => w.call<ClientsReport>("report")),
      )
      const remote = mergeReports(reports.slice(1))
      const all = mergeReports(reports)
      const local = percentiles(reports[0]!.latencies)
      const delivery = deliveryFields(
        scenario.count,
        measured.value.emit,
        remote,
        measured.value.complete,
      )
      return {
        ...EMPTY,
        scenario: scenario.name,
        kind,
        rep,
        count: scenario.count,
        ...delivery,
        ...resourceFields(measured, scenario.count, kind),
        ...statementFields(measured.servers[0]!, scenario.count, delivery.durationMs),
        localP50: round(local.p50, 3),
        localP99: round(local.p99, 3),
        // With recovery every packet comes with its offset (unless storing it failed); without,
        // none does.
        withOffset: all.withOffset,
        offsetErrors: kind === "ours-recovery" ? all.received - all.withOffset : all.withOffset,
      }
    },
  )

const runRaw = async (
  ctx: Context,
  scenario: BroadcastScenario,
  kind: RawKind,
  rep: number,
): Promise<RunResult> => {
  const count = scenario.raw?.[kind] ?? scenario.count
  const names = runNames()
  const [sender, listener] = ctx.workers.servers as [Worker, Worker]
  const channel = names.channelPrefix
  try {
    await listener.call("rawListen", {
      url: ctx.url,
      channel,
      applicationName: `${names.application} listen`,
      expected: count,
    })
    await sender.call("rawOpenSender", {
      url: ctx.url,
      applicationName: `${names.application} notify`,
    })
    const measured = await measure(ctx, names, async () => {
      const emit = await sender.call<EmitResult>("rawNotify", {
        channel,
        count,
        perStatement: kind === "raw-x10" ? 10 : 1,
      })
      const complete = await waitDelivery(ctx, () => listener.call("rawProgress"))
      return { emit, complete }
    })
    const report = await listener.call<{
      stats: {
        expected: number
        unique: number
        duplicates: number
        outOfOrder: number
        unexpected: number
        lastAt?: number
      }
      latencies: Array<number>
    }>("rawReport")
    const remote = {
      ...report.stats,
      lastAt: report.stats.lastAt ?? null,
      latencies: report.latencies,
    }
    return {
      ...EMPTY,
      scenario: scenario.name,
      kind,
      rep,
      count,
      ...deliveryFields(count, measured.value.emit, remote, measured.value.complete),
      ...resourceFields(measured, count, kind),
      // The raw runs use no Socket.IO server: their memory says nothing.
      emitterBaseRssMb: null,
      emitterPeakRssMb: null,
      emitterPeakHeapMb: null,
      maxPeakRssMb: null,
    }
  } finally {
    await Promise.allSettled([sender.call("rawStop"), listener.call("rawStop")])
  }
}

/** Packets sent (not counted) before a measured broadcast run, in the run's fresh processes. */
const WARMUP_PACKETS = 2_000

const warmup = (ctx: Context, scenario: BroadcastScenario) =>
  ctx.workers.servers[0]!.call(
    "warmup",
    {
      payload: scenario.payload,
      count: Math.min(WARMUP_PACKETS, scenario.count),
      ...(scenario.room === true ? { room: "r" } : {}),
    },
    120_000,
  )

const runRequest = (
  ctx: Context,
  scenario: RequestScenario,
  kind: AdapterKind,
  rep: number,
): Promise<RunResult> =>
  withCluster(ctx, kind, { count: scenario.clientsPerServer, expected: 0 }, async (names) => {
    const expected =
      scenario.op === "fetchSockets" ? SERVERS * scenario.clientsPerServer : SERVERS - 1
    // Warm-up round trips, not measured (see WARMUP_PACKETS).
    if (!ctx.options.quick) {
      await ctx.workers.servers[0]!.call<RequestResult>(
        "request",
        { op: scenario.op, count: Math.min(50, scenario.count), expected },
        60_000 + 50 * REQUESTS_TIMEOUT_MS,
      )
    }
    const measured = await measure(ctx, names, () =>
      ctx.workers.servers[0]!.call<RequestResult>(
        "request",
        { op: scenario.op, count: scenario.count, expected },
        60_000 + scenario.count * REQUESTS_TIMEOUT_MS,
      ),
    )
    const r = measured.value
    const latency = percentiles(r.latencies)
    const ok = scenario.count - r.failures
    return {
      ...EMPTY,
      scenario: scenario.name,
      kind,
      rep,
      count: scenario.count,
      receivers: SERVERS - 1,
      throughput: r.end > r.start ? round(ok / ((r.end - r.start) / 1000), 0) : null,
      p50: round(latency.p50, 3),
      p95: round(latency.p95, 3),
      p99: round(latency.p99, 3),
      max: round(latency.max, 3),
      lost: r.failures,
      durationMs: round(r.end - r.start),
      ...resourceFields(measured, scenario.count, kind),
      ...(r.firstError !== undefined ? { note: `first failure: ${r.firstError}` } : {}),
    }
  })

const runJoin = async (
  ctx: Context,
  scenario: JoinScenario,
  kind: AdapterKind,
  rep: number,
): Promise<RunResult> => {
  const names = runNames()
  const [newcomer, ...others] = ctx.workers.servers as [Worker, ...Array<Worker>]
  const hb = scenario.heartbeatInterval
  const timeoutMs = 3 * hb + 5000
  await createTable(ctx, names.tableName)
  try {
    await Promise.all(others.map((w, i) => w.call("start", startArgs(ctx, names, kind, i + 1, hb))))
    await waitCluster(others, SERVERS - 1, timeoutMs)
    await Promise.all(others.map((w) => w.call("watchCount", { size: SERVERS, timeoutMs })))
    const { t0 } = await newcomer.call<{ t0: number }>("start", {
      ...startArgs(ctx, names, kind, 0, hb),
      watch: { size: SERVERS, timeoutMs },
    } satisfies StartArgs)
    const [sees, ...seen] = await Promise.all(
      [newcomer, ...others].map((w) =>
        w.call<number | null>("watchResult", {}, timeoutMs + 10_000),
      ),
    )
    const seenAt = seen.some((t) => t === null) ? null : Math.max(...(seen as Array<number>))
    return {
      ...EMPTY,
      scenario: scenario.name,
      kind,
      rep,
      count: 1,
      receivers: SERVERS - 1,
      throughput: null,
      p50: null,
      p95: null,
      p99: null,
      max: null,
      lost: (seenAt === null ? 1 : 0) + (sees === null ? 1 : 0),
      timedOut: seenAt === null || sees === null,
      seenByOthersMs: seenAt === null ? null : round(seenAt - t0),
      seesOthersMs: sees === null || sees === undefined ? null : round(sees - t0),
      serverCpuMs: null,
      serverCpuSystemMs: null,
      emitterCpuMs: null,
      serverCpuPer1k: null,
      emitterCpuPer1k: null,
      pgCpuMs: null,
      pgCpuPer1k: null,
      pgServerCpuMs: null,
      emitterBaseRssMb: null,
      emitterPeakRssMb: null,
      emitterPeakHeapMb: null,
      maxPeakRssMb: null,
      adapterErrors: 0,
    }
  } finally {
    await Promise.allSettled(ctx.workers.servers.map((w) => w.call("stopServer")))
    await ctx.admin.query(`DROP TABLE IF EXISTS ${names.tableName}`).catch(() => {})
  }
}

const runOne = (ctx: Context, scenario: Scenario, kind: Kind, rep: number): Promise<RunResult> => {
  switch (scenario.type) {
    case "broadcast":
      return kind === "raw-x1" || kind === "raw-x10"
        ? runRaw(ctx, scenario, kind, rep)
        : runBroadcast(ctx, scenario, kind, rep)
    case "request":
      return runRequest(ctx, scenario, kind as AdapterKind, rep)
    case "join":
      return runJoin(ctx, scenario, kind as AdapterKind, rep)
  }
}

const failedRun = (scenario: Scenario, kind: Kind, rep: number, error: unknown): RunResult => ({
  ...EMPTY,
  scenario: scenario.name,
  kind,
  rep,
  error: error instanceof Error ? error.message.split("\n")[0]! : String(error),
  count: 0,
  receivers: 0,
  throughput: null,
  p50: null,
  p95: null,
  p99: null,
  max: null,
  serverCpuMs: null,
  serverCpuSystemMs: null,
  emitterCpuMs: null,
  serverCpuPer1k: null,
  emitterCpuPer1k: null,
  pgCpuMs: null,
  pgCpuPer1k: null,
  pgServerCpuMs: null,
  emitterBaseRssMb: null,
  emitterPeakRssMb: null,
  emitterPeakHeapMb: null,
  maxPeakRssMb: null,
  adapterErrors: 0,
})

const describeRun = (r: RunResult): string => {
  if (r.error !== undefined) return `FAILED: ${r.error}`
  if (r.seenByOthersMs !== null || r.seesOthersMs !== null || r.scenario === "join") {
    return `seen by others ${r.seenByOthersMs ?? "-"} ms, sees others ${r.seesOthersMs ?? "-"} ms`
  }
  const parts = [
    `${r.throughput?.toLocaleString("en-US") ?? "-"}/s`,
    `p50 ${r.p50?.toFixed(1) ?? "-"} ms`,
    `p99 ${r.p99?.toFixed(1) ?? "-"} ms`,
  ]
  if (r.serverCpuPer1k !== null) parts.push(`cpu ${r.serverCpuPer1k.toFixed(0)} ms/1k`)
  if (r.lost + r.unexpected > 0) parts.push(`LOST ${r.lost + r.unexpected}`)
  if (r.outOfOrder > 0) parts.push(`out of order ${r.outOfOrder}`)
  if (r.timedOut) parts.push("deadline passed")
  return parts.join(", ")
}

// ─── main ─────────────────────────────────────────────────────────────────────────────────────

/** Where kind "redis" goes, and whether it ran. */
interface RedisStatus {
  readonly url: string
  readonly reachable: boolean
  readonly version: string | null
  /** Why the kind was skipped, when it was asked for and could not run. */
  readonly skipped: string | null
}

/** Connects to `url` once (no retries, 3 s at most), asks its version, and lets go. */
const probeRedis = async (url: string): Promise<RedisStatus> => {
  const client = createClient({ url, socket: { reconnectStrategy: false, connectTimeout: 3000 } })
  client.on("error", () => {})
  try {
    await client.connect()
    const info = await client.info("server")
    const version = /redis_version:(\S+)/.exec(info)?.[1] ?? null
    return { url: redactUrl(url), reachable: true, version, skipped: null }
  } catch (error) {
    const reason = `no Redis reachable at ${redactUrl(url)} (${(error as Error)?.message ?? error}): kind redis skipped`
    return { url: redactUrl(url), reachable: false, version: null, skipped: reason }
  } finally {
    if (client.isOpen) client.destroy()
  }
}

const writeAtomically = async (file: string, text: string) => {
  await fs.mkdir(path.dirname(file), { recursive: true })
  const tmp = `${file}.${process.pid}.tmp`
  await fs.writeFile(tmp, text)
  await fs.rename(tmp, file)
}

const main = async () => {
  const options = parseOptions(process.argv.slice(2))
  const began = Date.now()
  const loadBefore = os.loadavg()
  const database = await openDatabase(log)
  log(`PostgreSQL: ${database.description}`)
  const redisUrl = process.env["REDIS_URL"] ?? DEFAULT_REDIS_URL
  const redis: RedisStatus | null = options.kinds.has("redis") ? await probeRedis(redisUrl) : null
  if (redis?.reachable === false) {
    options.kinds.delete("redis")
    log(`Redis: ${redis.skipped}`)
  } else if (redis !== null) log(`Redis: ${redis.version ?? "?"} at ${redis.url}`)
  const admin = new pg.Pool({
    connectionString: database.url,
    max: 2,
    application_name: "sio-bench admin",
  })
  admin.on("error", () => {})
  let servers: Array<Worker> | undefined
  let clients: Array<Worker> | undefined
  let interrupted = false
  const cleanup = async () => {
    await Promise.all([stopGroup(servers), stopGroup(clients)])
    await admin.end().catch(() => {})
    await database.stop().catch(() => {})
  }
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.once(signal, () => {
      interrupted = true
      log(`\n${signal}: stopping…`)
      void cleanup().finally(() => process.exit(130))
    })
  }

  try {
    const pgInfo = await admin.query<{ version: string; fsync: string; sync: string }>(
      "SELECT version() AS version, current_setting('fsync') AS fsync, current_setting('synchronous_commit') AS sync",
    )
    const runs: Array<RunResult> = []
    const plan = options.scenarios.map((s) => ({
      scenario: s,
      kinds: kindsOf(s).filter((k) => options.kinds.has(k)),
    }))
    const total = plan.reduce((n, p) => n + p.kinds.length, 0) * options.repeat
    let done = 0
    for (let rep = 0; rep < options.repeat && !interrupted; rep++) {
      ;[servers, clients] = await Promise.all([
        startGroup(options, "node.ts", "server"),
        startGroup(options, "clients.ts", "clients"),
      ])
      for (const { scenario, kinds } of plan) {
        // Rotate the order from one repetition to the next: none always runs first.
        const order = kinds.map((_, i) => kinds[(i + rep) % kinds.length]!)
        for (const kind of order) {
          if (interrupted) break
          let result: RunResult
          try {
            // Fresh server processes for every run (not in --quick, where numbers do not
            // matter): their CPU and peak RSS then belong to this run alone, not to the heap,
            // compiled code and leftovers of another kind's run (with --baseline, a reused
            // process held two builds of the adapter and two copies of effect). The clients'
            // processes, the same for every kind, are reused.
            if (!options.quick && servers !== undefined) {
              await stopGroup(servers)
              servers = await startGroup(options, "node.ts", "server")
            }
            const ctx: Context = {
              options,
              url: database.url,
              admin,
              redisUrl,
              workers: { servers: servers!, clients: clients! },
              label: `${scenario.name}-${kind}-rep${rep}`,
            }
            result = await runOne(ctx, scenario, kind, rep)
          } catch (error) {
            result = failedRun(scenario, kind, rep, error)
            // A dead worker's last output is in the message: keep it, not only with --verbose.
            const detail = String(
              (options.verbose ? (error as Error)?.stack : (error as Error)?.message) ?? error,
            )
            if (options.verbose || detail.includes("\n")) log(detail)
            // A worker may be wedged or dead: start afresh for the rest of this repetition.
            await Promise.all([stopGroup(servers), stopGroup(clients)])
            ;[servers, clients] = await Promise.all([
              startGroup(options, "node.ts", "server"),
              startGroup(options, "clients.ts", "clients"),
            ])
          }
          runs.push(result)
          done++
          log(
            `[${String(done).padStart(String(total).length)}/${total}] ${scenario.name.padEnd(22)} ${KIND_LABEL[kind].padEnd(15)} ${describeRun(result)}`,
          )
        }
      }
      await Promise.all([stopGroup(servers), stopGroup(clients)])
      servers = undefined
      clients = undefined
    }
    if (interrupted) return

    const summaries = summarize(runs, options.scenarios)
    const ratioOf = ratios(summaries)
    const ratioRedisOf = ratios(summaries, "redis")
    const headlineOf = headlines(summaries, options.scenarios)
    const recoveryOf = recoveryCosts(summaries)
    const notes = redis?.skipped == null ? [] : [`Redis: ${redis.skipped}`]
    const durationS = round((Date.now() - began) / 1000, 1)
    const pgVersion = pgInfo.rows[0]?.version.split(" on ")[0] ?? "unknown"
    const caption = `${new Date().toISOString().slice(0, 16).replace("T", " ")} · ${pgVersion} · node ${process.version} · ${os.cpus().length} cpus · median of ${options.repeat}${options.quick ? " (quick)" : ""}`
    console.log(
      `\n${formatTable(summaries, ratioOf, options.scenarios, recoveryOf, { ratioRedisOf, headlineOf, notes })}`,
    )
    console.log(
      `\nmedian of ${options.repeat} run(s); lost = expected deliveries that never came (+ misdelivered); ooo = out of order;` +
        `\nsrv cpu = user+system of the 3 server processes; db cpu = this run's PostgreSQL backends, or the whole redis-server (/proc);` +
        `\n-rate scenarios are paced: small-rate and binary-rate at ${MANY_RATE}/s (many clients per server), the others at ${FIXED_RATE}/s.`,
    )

    const json = {
      version: 1,
      date: new Date().toISOString(),
      durationS,
      options: {
        quick: options.quick,
        repeat: options.repeat,
        scenarios: options.scenarios.map((s) => s.name),
        kinds: [...options.kinds],
      },
      environment: {
        node: process.version,
        platform: `${process.platform} ${process.arch}`,
        cpus: os.cpus().length,
        cpuModel: os.cpus()[0]?.model ?? null,
        memoryGb: round(os.totalmem() / 1024 ** 3, 1),
        loadAverageBefore: loadBefore.map((l) => round(l)),
        loadAverageAfter: os.loadavg().map((l) => round(l)),
        postgres: {
          version: pgInfo.rows[0]?.version ?? null,
          source: database.embedded ? "embedded" : "DATABASE_URL",
          url: redactUrl(database.url),
          fsync: pgInfo.rows[0]?.fsync ?? null,
          synchronousCommit: pgInfo.rows[0]?.sync ?? null,
        },
        // null when kind "redis" was not asked for; `skipped` says why it did not run.
        redis,
      },
      settings: {
        servers: SERVERS,
        heartbeatIntervalMs: HEARTBEAT_MS,
        fixedRate: FIXED_RATE,
        manyClientsRate: MANY_RATE,
        deadlines: deadlines(options.quick),
      },
      scenarios: options.scenarios.map((s) => ({
        ...s,
        results: Object.fromEntries(
          summaries.filter((x) => x.scenario === s.name).map((x) => [x.kind, x]),
        ),
        ratio: ratioOf[s.name] ?? null,
        ratioRedis: ratioRedisOf[s.name] ?? null,
        headline: headlineOf[s.name] ?? null,
        recoveryCost: recoveryOf[s.name] ?? null,
      })),
      runs,
    }
    const jsonFile = path.join(options.out, "latest.json")
    const svgFile = path.join(options.out, "latest.svg")
    await writeAtomically(jsonFile, `${JSON.stringify(json, null, 2)}\n`)
    await writeAtomically(svgFile, renderSvg(summaries, options.scenarios, caption, recoveryOf))
    log(
      `\nwrote ${path.relative(process.cwd(), jsonFile)} and ${path.relative(process.cwd(), svgFile)} in ${durationS} s`,
    )
    const failures = runs.filter((r) => r.error !== undefined).length
    if (failures > 0) {
      log(`${failures} run(s) failed`)
      process.exitCode = 1
    }
  } finally {
    if (!interrupted) await cleanup()
  }
}

main().catch((error) => {
  if (error instanceof UsageError) {
    console.error(`${error.message}\n\n${USAGE}`)
    process.exit(2)
  }
  console.error(error)
  process.exit(1)
})
