/** The benchmark's results: one record per run, their medians, the table, the JSON and the chart. */
import type { StatementKind, StatementStats } from "./node.js"
import { ALL_KINDS, type Kind, KIND_LABEL, type Scenario } from "./scenarios.js"
import { median, round } from "./stats.js"

/** One run of one scenario with one kind. */
export interface RunResult {
  readonly scenario: string
  readonly kind: Kind
  readonly rep: number
  readonly error?: string
  /** What went wrong in a run that still counts (e.g. the first failed round trip). */
  readonly note?: string
  /** Packets broadcast, or round trips made. */
  readonly count: number
  /** Remote clients that should get every packet. */
  readonly receivers: number
  /** Broadcasts (or round trips) per second, fully delivered: first send to last arrival. */
  readonly throughput: number | null
  /** Latency from emit to remote client (or round trip), ms. */
  readonly p50: number | null
  readonly p95: number | null
  readonly p99: number | null
  readonly max: number | null
  /** Expected deliveries that never came (or failed round trips). */
  readonly lost: number
  readonly duplicates: number
  readonly outOfOrder: number
  /** Deliveries to clients that should not have had them. */
  readonly unexpected: number
  /** The deadline passed before everything arrived. */
  readonly timedOut: boolean
  /** How long server 0 spent in its emit loop. */
  readonly emitMs: number | null
  /** First send to last arrival. */
  readonly durationMs: number | null
  /** CPU of all servers (user + system). */
  readonly serverCpuMs: number | null
  /** Of which system (kernel) time. */
  readonly serverCpuSystemMs: number | null
  readonly emitterCpuMs: number | null
  readonly serverCpuPer1k: number | null
  readonly emitterCpuPer1k: number | null
  /** CPU of the PostgreSQL backends of this run (from /proc). */
  readonly pgCpuMs: number | null
  readonly pgCpuPer1k: number | null
  /** CPU of every process of the PostgreSQL server (others' load included on a shared server). */
  readonly pgServerCpuMs: number | null
  /** Kind "redis": CPU of the machine's `redis-server` (from /proc; others' use included). */
  readonly redisCpuMs: number | null
  readonly redisCpuPer1k: number | null
  readonly emitterBaseRssMb: number | null
  readonly emitterPeakRssMb: number | null
  readonly emitterPeakHeapMb: number | null
  readonly maxPeakRssMb: number | null
  /** Errors the adapters handed to their errorHandler. */
  readonly adapterErrors: number
  /** Latency to the emitting server's own clients, ms. */
  readonly localP50: number | null
  readonly localP99: number | null
  /** Join scenario: ms from the new server's init until both others count it. */
  readonly seenByOthersMs: number | null
  /** Join scenario: ms from the new server's init until it counts both others. */
  readonly seesOthersMs: number | null
  /** Broadcasts: deliveries (every client) that came with a recovery offset. */
  readonly withOffset: number | null
  /** Deliveries without an offset in a recovery run, or with one in any other run. */
  readonly offsetErrors: number
  /** Broadcasts: the emitting server's publishing statements (heartbeats included). */
  readonly statements: number | null
  readonly broadcastsPerStatement: number | null
  /** Mean call-to-result time of those statements, ms (Node's own delays included). */
  readonly statementMs: number | null
  /** p99 of the most frequent kind of them ("store" with recovery, "notify" otherwise), ms. */
  readonly statementP99Ms: number | null
  /** Their summed time ÷ first emit to last arrival: near 1, PostgreSQL round trips set the pace. */
  readonly statementBusy: number | null
  /** Every statement of the emitting server's pool, by kind. */
  readonly emitterStatements: Partial<Record<StatementKind, StatementStats>> | null
}

/** Medians (and sums of the error counts) over the repetitions of one scenario and kind. */
export interface Summary {
  readonly scenario: string
  readonly kind: Kind
  readonly runs: number
  readonly errors: ReadonlyArray<string>
  readonly count: number
  readonly throughput: number | null
  readonly p50: number | null
  readonly p95: number | null
  readonly p99: number | null
  readonly max: number | null
  /** Summed over the repetitions. */
  readonly lost: number
  readonly duplicates: number
  readonly outOfOrder: number
  readonly unexpected: number
  readonly timedOut: number
  readonly adapterErrors: number
  readonly serverCpuPer1k: number | null
  readonly emitterCpuPer1k: number | null
  readonly pgCpuPer1k: number | null
  readonly pgServerCpuMs: number | null
  readonly redisCpuPer1k: number | null
  readonly emitterBaseRssMb: number | null
  readonly emitterPeakRssMb: number | null
  readonly emitterPeakHeapMb: number | null
  readonly maxPeakRssMb: number | null
  readonly localP50: number | null
  readonly localP99: number | null
  readonly seenByOthersMs: number | null
  readonly seesOthersMs: number | null
  /** The slowest join of the repetitions: a median hides a join that waited a whole heartbeat. */
  readonly seenByOthersWorstMs: number | null
  readonly seesOthersWorstMs: number | null
  readonly offsetErrors: number
  readonly broadcastsPerStatement: number | null
  readonly statementMs: number | null
  readonly statementP99Ms: number | null
  readonly statementBusy: number | null
}

/**
 * ours ÷ another kind (0.5.0, Redis) for one scenario: above 1 means more throughput, or more
 * latency/CPU/memory.
 */
export interface Ratio {
  readonly throughput: number | null
  readonly p50: number | null
  readonly p99: number | null
  readonly serverCpuPer1k: number | null
  readonly pgCpuPer1k: number | null
  readonly emitterPeakRssMb: number | null
  readonly seenByOthersMs: number | null
  readonly seesOthersMs: number | null
}

const MEDIAN_FIELDS = [
  "throughput",
  "p50",
  "p95",
  "p99",
  "max",
  "serverCpuPer1k",
  "emitterCpuPer1k",
  "pgCpuPer1k",
  "pgServerCpuMs",
  "redisCpuPer1k",
  "emitterBaseRssMb",
  "emitterPeakRssMb",
  "emitterPeakHeapMb",
  "maxPeakRssMb",
  "localP50",
  "localP99",
  "seenByOthersMs",
  "seesOthersMs",
  "broadcastsPerStatement",
  "statementMs",
  "statementP99Ms",
  "statementBusy",
] as const

const SUM_FIELDS = [
  "lost",
  "duplicates",
  "outOfOrder",
  "unexpected",
  "adapterErrors",
  "offsetErrors",
] as const

/** One summary per scenario and kind that ran, in the order of `order`. */
export const summarize = (
  runs: ReadonlyArray<RunResult>,
  order: ReadonlyArray<Scenario>,
): Array<Summary> => {
  const out: Array<Summary> = []
  for (const scenario of order) {
    const kinds = [...new Set(runs.filter((r) => r.scenario === scenario.name).map((r) => r.kind))]
    kinds.sort((a, b) => KIND_ORDER.indexOf(a) - KIND_ORDER.indexOf(b))
    for (const kind of kinds) {
      const all = runs.filter((r) => r.scenario === scenario.name && r.kind === kind)
      const ok = all.filter((r) => r.error === undefined)
      const summary: Record<string, unknown> = {
        scenario: scenario.name,
        kind,
        runs: ok.length,
        errors: all.flatMap((r) => (r.error === undefined ? [] : [r.error])),
        count: all[0]?.count ?? 0,
        timedOut: ok.filter((r) => r.timedOut).length,
      }
      for (const field of MEDIAN_FIELDS) summary[field] = round(median(ok.map((r) => r[field])))
      for (const field of SUM_FIELDS) summary[field] = ok.reduce((sum, r) => sum + r[field], 0)
      summary["seenByOthersWorstMs"] = worst(ok.map((r) => r.seenByOthersMs))
      summary["seesOthersWorstMs"] = worst(ok.map((r) => r.seesOthersMs))
      out.push(summary as unknown as Summary)
    }
  }
  return out
}

const worst = (values: ReadonlyArray<number | null>): number | null => {
  const defined = values.filter((v): v is number => v !== null)
  return defined.length === 0 ? null : round(Math.max(...defined))
}

const KIND_ORDER: ReadonlyArray<Kind> = ALL_KINDS

const divide = (a: number | null | undefined, b: number | null | undefined) =>
  a == null || b == null || b === 0 ? null : round(a / b, 3)

/** ours ÷ `against` (0.5.0 by default) per scenario where both ran. */
export const ratios = (
  summaries: ReadonlyArray<Summary>,
  against: Kind = "upstream",
): Record<string, Ratio> => {
  const out: Record<string, Ratio> = {}
  for (const ours of summaries.filter((s) => s.kind === "ours")) {
    const upstream = summaries.find((s) => s.scenario === ours.scenario && s.kind === against)
    if (upstream === undefined) continue
    out[ours.scenario] = {
      throughput: divide(ours.throughput, upstream.throughput),
      p50: divide(ours.p50, upstream.p50),
      p99: divide(ours.p99, upstream.p99),
      serverCpuPer1k: divide(ours.serverCpuPer1k, upstream.serverCpuPer1k),
      pgCpuPer1k: divide(dbCpuPer1k(ours), dbCpuPer1k(upstream)),
      emitterPeakRssMb: divide(ours.emitterPeakRssMb, upstream.emitterPeakRssMb),
      seenByOthersMs: divide(ours.seenByOthersMs, upstream.seenByOthersMs),
      seesOthersMs: divide(ours.seesOthersMs, upstream.seesOthersMs),
    }
  }
  return out
}

/**
 * CPU of the database per 1,000 operations: this run's PostgreSQL backends, or for kind "redis"
 * the `redis-server` process.
 */
export const dbCpuPer1k = (s: Summary): number | null =>
  s.kind === "redis" ? s.redisCpuPer1k : s.pgCpuPer1k

/** What a scenario is compared by: throughput at full speed, p50 at a fixed rate and for requests. */
export type HeadlineMeasure = "throughput" | "p50"

export const headlineMeasure = (scenario: Scenario): HeadlineMeasure =>
  scenario.type === "broadcast" && scenario.rate === undefined ? "throughput" : "p50"

/** One scenario's comparison: ours against Redis and 0.5.0, by its {@link HeadlineMeasure}. */
export interface Headline {
  readonly measure: HeadlineMeasure
  readonly ours: number | null
  readonly redis: number | null
  readonly upstream: number | null
  /** ours ÷ Redis and ours ÷ 0.5.0 of the measure (throughput: above 1 is better; p50: below). */
  readonly vsRedis: number | null
  readonly vsUpstream: number | null
  /** Server CPU per 1,000 operations, ours ÷ Redis and ours ÷ 0.5.0 (below 1: ours costs less). */
  readonly cpuVsRedis: number | null
  readonly cpuVsUpstream: number | null
}

/** The comparisons of every scenario (but `join`) where "ours" ran with Redis or 0.5.0. */
export const headlines = (
  summaries: ReadonlyArray<Summary>,
  order: ReadonlyArray<Scenario>,
): Record<string, Headline> => {
  const out: Record<string, Headline> = {}
  for (const scenario of order) {
    if (scenario.type === "join") continue
    const of = (kind: Kind) =>
      summaries.find((s) => s.scenario === scenario.name && s.kind === kind)
    const ours = of("ours")
    const redis = of("redis")
    const upstream = of("upstream")
    if (ours === undefined || (redis === undefined && upstream === undefined)) continue
    const measure = headlineMeasure(scenario)
    out[scenario.name] = {
      measure,
      ours: ours[measure],
      redis: redis?.[measure] ?? null,
      upstream: upstream?.[measure] ?? null,
      vsRedis: divide(ours[measure], redis?.[measure]),
      vsUpstream: divide(ours[measure], upstream?.[measure]),
      cpuVsRedis: divide(ours.serverCpuPer1k, redis?.serverCpuPer1k),
      cpuVsUpstream: divide(ours.serverCpuPer1k, upstream?.serverCpuPer1k),
    }
  }
  return out
}

/** A value without and with recovery ("ours", then "ours-recovery"). */
export interface Pair {
  readonly ours: number | null
  readonly recovery: number | null
}

/** What connection state recovery costs in one scenario: "ours-recovery" against "ours". */
export interface RecoveryCost {
  /** ours-recovery ÷ ours: below 1 means less throughput with recovery. */
  readonly throughput: number | null
  readonly delivered: Pair
  /** ours-recovery − ours, ms: remote clients, and the emitting server's own clients. */
  readonly p50DiffMs: number | null
  readonly p99DiffMs: number | null
  readonly localP50DiffMs: number | null
  readonly p50Ms: Pair
  readonly p99Ms: Pair
  readonly serverCpuPer1k: Pair
  readonly emitterCpuPer1k: Pair
  readonly pgCpuPer1k: Pair
  readonly statementMs: Pair
  readonly broadcastsPerStatement: Pair
  readonly statementBusy: Pair
}

const subtract = (a: number | null | undefined, b: number | null | undefined) =>
  a == null || b == null ? null : round(a - b, 3)

/** ours-recovery against ours per scenario where both ran. */
export const recoveryCosts = (summaries: ReadonlyArray<Summary>): Record<string, RecoveryCost> => {
  const out: Record<string, RecoveryCost> = {}
  for (const recovery of summaries.filter((s) => s.kind === "ours-recovery")) {
    const ours = summaries.find((s) => s.scenario === recovery.scenario && s.kind === "ours")
    if (ours === undefined) continue
    const pair = (field: keyof Summary & keyof RecoveryCost): Pair => ({
      ours: ours[field] as number | null,
      recovery: recovery[field] as number | null,
    })
    out[recovery.scenario] = {
      throughput: divide(recovery.throughput, ours.throughput),
      delivered: pair("throughput"),
      p50DiffMs: subtract(recovery.p50, ours.p50),
      p99DiffMs: subtract(recovery.p99, ours.p99),
      localP50DiffMs: subtract(recovery.localP50, ours.localP50),
      p50Ms: { ours: ours.p50, recovery: recovery.p50 },
      p99Ms: { ours: ours.p99, recovery: recovery.p99 },
      serverCpuPer1k: pair("serverCpuPer1k"),
      emitterCpuPer1k: pair("emitterCpuPer1k"),
      pgCpuPer1k: pair("pgCpuPer1k"),
      statementMs: pair("statementMs"),
      broadcastsPerStatement: pair("broadcastsPerStatement"),
      statementBusy: pair("statementBusy"),
    }
  }
  return out
}

// ─── table ────────────────────────────────────────────────────────────────────────────────────

const fmt = (value: number | null | undefined, digits = 1): string => {
  if (value === null || value === undefined) return "-"
  if (Math.abs(value) >= 1000) return Math.round(value).toLocaleString("en-US")
  if (Math.abs(value) >= 100) return value.toFixed(0)
  return value.toFixed(digits)
}

const times = (value: number | null | undefined): string =>
  value === null || value === undefined ? "-" : `x${value.toFixed(2)}`

const plus = (value: number | null | undefined, digits = 2): string =>
  value === null || value === undefined
    ? "-"
    : `${value >= 0 ? "+" : "-"}${fmt(Math.abs(value), digits)}`

const arrow = (pair: Pair, digits = 1): string =>
  `${fmt(pair.ours, digits)} → ${fmt(pair.recovery, digits)}`

const table = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>) => {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)))
  const line = (cells: ReadonlyArray<string>) =>
    cells
      .map((cell, i) => (i < 2 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!)))
      .join("  ")
      .trimEnd()
  return [line(header), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map(line)].join("\n")
}

/** The table a person reads in the terminal. */
export const formatTable = (
  summaries: ReadonlyArray<Summary>,
  ratioOf: Record<string, Ratio>,
  order: ReadonlyArray<Scenario>,
  recoveryOf: Record<string, RecoveryCost> = {},
  more: {
    /** ours ÷ Redis, as `ratioOf` is ours ÷ 0.5.0. */
    readonly ratioRedisOf?: Record<string, Ratio>
    readonly headlineOf?: Record<string, Headline>
    /** Lines printed at the end (e.g. a kind that was skipped, and why). */
    readonly notes?: ReadonlyArray<string>
  } = {},
): string => {
  const { ratioRedisOf = {}, headlineOf = {}, notes = [] } = more
  const rows: Array<Array<string>> = []
  const headlineRows: Array<Array<string>> = []
  const joinRows: Array<Array<string>> = []
  const recoveryRows: Array<Array<string>> = []
  const problems: Array<string> = []
  for (const scenario of order) {
    const mine = summaries.filter((s) => s.scenario === scenario.name)
    if (mine.length === 0) continue
    for (const s of mine) {
      for (const error of s.errors) problems.push(`${s.scenario} ${KIND_LABEL[s.kind]}: ${error}`)
      if (s.timedOut > 0) {
        problems.push(
          `${s.scenario} ${KIND_LABEL[s.kind]}: deadline passed in ${s.timedOut} run(s)`,
        )
      }
      if (s.adapterErrors > 0) {
        problems.push(`${s.scenario} ${KIND_LABEL[s.kind]}: ${s.adapterErrors} adapter error(s)`)
      }
      if (s.offsetErrors > 0) {
        problems.push(
          `${s.scenario} ${KIND_LABEL[s.kind]}: ${s.offsetErrors} deliveries ${s.kind === "ours-recovery" ? "without" : "with"} a recovery offset`,
        )
      }
    }
    const cost = recoveryOf[scenario.name]
    if (cost !== undefined) {
      recoveryRows.push([
        scenario.name,
        arrow(cost.delivered, 0),
        times(cost.throughput),
        arrow(cost.p50Ms, 2),
        plus(cost.p50DiffMs),
        arrow(cost.p99Ms, 2),
        plus(cost.p99DiffMs),
        arrow(cost.serverCpuPer1k),
        arrow(cost.pgCpuPer1k),
        arrow(cost.statementMs, 2),
        arrow(cost.broadcastsPerStatement),
      ])
    }
    if (scenario.type === "join") {
      mine.forEach((s, i) => {
        joinRows.push([
          i === 0 ? scenario.name : "",
          KIND_LABEL[s.kind],
          fmt(s.seenByOthersMs),
          fmt(s.seenByOthersWorstMs),
          fmt(s.seesOthersMs),
          fmt(s.seesOthersWorstMs),
          String(s.runs),
        ])
      })
      const ratio = ratioOf[scenario.name]
      if (ratio !== undefined) {
        joinRows.push([
          "",
          "ours / 0.5.0",
          times(ratio.seenByOthersMs),
          "",
          times(ratio.seesOthersMs),
          "",
          "",
        ])
      }
      continue
    }
    mine.forEach((s, i) => {
      rows.push([
        i === 0 ? scenario.name : "",
        KIND_LABEL[s.kind],
        fmt(s.throughput, 0) + (scenario.type === "request" ? " ops" : ""),
        fmt(s.p50, 2),
        fmt(s.p95, 2),
        fmt(s.p99, 2),
        String(s.lost + s.unexpected),
        String(s.outOfOrder),
        fmt(s.serverCpuPer1k),
        fmt(dbCpuPer1k(s)),
        fmt(s.emitterPeakRssMb, 0),
      ])
    })
    for (const [label, ratio] of [
      ["ours / 0.5.0", ratioOf[scenario.name]],
      ["ours / redis", ratioRedisOf[scenario.name]],
    ] as const) {
      if (ratio === undefined) continue
      rows.push([
        "",
        label,
        times(ratio.throughput),
        times(ratio.p50),
        "",
        times(ratio.p99),
        "",
        "",
        times(ratio.serverCpuPer1k),
        times(ratio.pgCpuPer1k),
        times(ratio.emitterPeakRssMb),
      ])
    }
    const headline = headlineOf[scenario.name]
    if (headline !== undefined) {
      const value = (v: number | null) =>
        headline.measure === "throughput" ? `${fmt(v, 0)}/s` : `${fmt(v, 2)} ms`
      headlineRows.push([
        scenario.name,
        headline.measure,
        value(headline.ours),
        value(headline.redis),
        value(headline.upstream),
        times(headline.vsRedis),
        times(headline.vsUpstream),
        times(headline.cpuVsRedis),
        times(headline.cpuVsUpstream),
      ])
    }
  }
  const parts = [
    table(
      [
        "scenario",
        "adapter",
        "delivered/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "lost",
        "ooo",
        "srv cpu ms/1k",
        "db cpu ms/1k",
        "emitter rss MB",
      ],
      rows,
    ),
  ]
  if (headlineRows.length > 0) {
    parts.push(
      "",
      "Ratios: throughput at full speed (above x1: ours is faster), p50 at a fixed rate and for requests (below x1: ours is faster); cpu = server CPU per 1,000 (below x1: ours costs less)",
      table(
        [
          "scenario",
          "measure",
          "ours",
          "redis",
          "0.5.0",
          "ours/redis",
          "ours/0.5.0",
          "cpu ours/redis",
          "cpu ours/0.5.0",
        ],
        headlineRows,
      ),
    )
  }
  if (recoveryRows.length > 0) {
    parts.push(
      "",
      "Recovery cost: ours → ours + recovery (connectionStateRecovery on)",
      table(
        [
          "scenario",
          "delivered/s",
          "ratio",
          "p50 ms",
          "Δ p50",
          "p99 ms",
          "Δ p99",
          "srv cpu ms/1k",
          "pg cpu ms/1k",
          "stmt ms",
          "broadcasts/stmt",
        ],
        recoveryRows,
      ),
    )
  }
  if (joinRows.length > 0) {
    parts.push(
      "",
      table(
        ["scenario", "adapter", "seen by others ms", "worst", "sees others ms", "worst", "runs"],
        joinRows,
      ),
    )
  }
  if (problems.length > 0) parts.push("", "Problems:", ...problems.map((p) => `  ${p}`))
  if (notes.length > 0) parts.push("", "Notes:", ...notes.map((n) => `  ${n}`))
  return parts.join("\n")
}

// ─── SVG chart ────────────────────────────────────────────────────────────────────────────────

const COLORS: Record<Kind, string> = {
  ours: "#2f6fb3",
  "ours-base": "#5a8f4e",
  "ours-recovery": "#86b6e3",
  "ours-signed": "#1d4677",
  "ours-base-signed": "#2e5a26",
  upstream: "#e07b39",
  redis: "#c0392b",
  "raw-x1": "#8a8a8a",
  "raw-x10": "#bdbdbd",
}

const escapeXml = (text: string) =>
  text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;")

interface Bar {
  readonly kind: Kind
  readonly value: number | null
  /** Printed after the value. */
  readonly note?: string
}

interface Group {
  readonly label: string
  readonly bars: ReadonlyArray<Bar>
}

const WIDTH = 960
const LABEL_WIDTH = 230
const BAR_AREA = 540
const BAR_HEIGHT = 14
const GROUP_GAP = 10
/** About the mean advance of an 11 px sans-serif character, to keep the values on the canvas. */
const VALUE_CHAR_WIDTH = 6.3

/** A panel of horizontal bars; each group is scaled to its own longest bar. */
const panel = (
  y: number,
  title: string,
  subtitle: string,
  unit: string,
  groups: ReadonlyArray<Group>,
): { svg: string; height: number } => {
  const parts: Array<string> = []
  parts.push(
    `<text x="16" y="${y + 18}" class="title">${escapeXml(title)}</text>`,
    `<text x="16" y="${y + 34}" class="sub">${escapeXml(subtitle)}</text>`,
  )
  let cy = y + 48
  for (const group of groups) {
    const bars = group.bars.filter((b) => b.value !== null)
    if (bars.length === 0) continue
    const top = Math.max(...bars.map((b) => b.value!), 1e-9)
    const groupHeight = bars.length * (BAR_HEIGHT + 2)
    parts.push(
      `<text x="${LABEL_WIDTH - 10}" y="${cy + groupHeight / 2 + 4}" class="label" text-anchor="end">${escapeXml(group.label)}</text>`,
    )
    const text = (bar: Bar) =>
      `${fmt(bar.value, 1)} ${unit}${bar.note ?? ""}  ${KIND_LABEL[bar.kind]}`
    // Shorter bars than BAR_AREA where a long value would run off the right edge.
    const area = Math.min(
      BAR_AREA,
      ...bars.map(
        (bar) =>
          (WIDTH - LABEL_WIDTH - 14 - text(bar).length * VALUE_CHAR_WIDTH) /
          Math.max(bar.value! / top, 1e-9),
      ),
    )
    for (const bar of bars) {
      const w = Math.max(1, (bar.value! / top) * area)
      parts.push(
        `<rect x="${LABEL_WIDTH}" y="${cy}" width="${w.toFixed(1)}" height="${BAR_HEIGHT}" fill="${COLORS[bar.kind]}"/>`,
        `<text x="${(LABEL_WIDTH + w + 6).toFixed(1)}" y="${cy + BAR_HEIGHT - 3}" class="value">${escapeXml(
          text(bar),
        )}</text>`,
      )
      cy += BAR_HEIGHT + 2
    }
    cy += GROUP_GAP
  }
  return { svg: parts.join("\n"), height: cy - y + 8 }
}

/** A chart of the summaries: throughput, p99 latency, server CPU, emitter memory, join times. */
export const renderSvg = (
  summaries: ReadonlyArray<Summary>,
  order: ReadonlyArray<Scenario>,
  caption: string,
  recoveryOf: Record<string, RecoveryCost> = {},
): string => {
  const groupsOf = (
    pick: (s: Summary) => number | null,
    filter: (scenario: Scenario) => boolean,
    note?: (s: Summary) => string,
  ): Array<Group> =>
    order.filter(filter).map((scenario) => ({
      label: scenario.label,
      bars: summaries
        .filter((s) => s.scenario === scenario.name)
        .map((s) => ({ kind: s.kind, value: pick(s), ...(note ? { note: note(s) } : {}) })),
    }))
  const notJoin = (s: Scenario) => s.type !== "join"
  const broadcasts = (s: Scenario) => s.type === "broadcast"
  const withRecovery = Object.keys(recoveryOf).length > 0
  // On the "ours + recovery" bars: how they compare with "ours".
  const costNote =
    (text: (cost: RecoveryCost) => string) =>
    (s: Summary): string => {
      const cost = recoveryOf[s.scenario]
      return s.kind === "ours-recovery" && cost !== undefined ? text(cost) : ""
    }
  const recoveryGroups = (pick: (s: Summary) => number | null, what: string): Array<Group> =>
    order
      .filter((scenario) => recoveryOf[scenario.name] !== undefined)
      .map((scenario) => {
        const pair = summaries.filter(
          (s) => s.scenario === scenario.name && (s.kind === "ours" || s.kind === "ours-recovery"),
        )
        const ours = pair.find((s) => s.kind === "ours")
        return {
          label: `${scenario.name} · ${what}`,
          bars: pair.map((s) => ({
            kind: s.kind,
            value: pick(s),
            note:
              s.kind === "ours-recovery" && ours !== undefined
                ? ` (${times(divide(pick(s), pick(ours)))})`
                : "",
          })),
        }
      })
  const panels: Array<[string, string, string, Array<Group>]> = [
    [
      "Throughput, fully delivered (higher is better)",
      `broadcasts/s from server 0 to every remote client; round trips/s for requests${withRecovery ? "; (xN): ours + recovery ÷ ours" : ""}`,
      "/s",
      groupsOf(
        (s) => s.throughput,
        notJoin,
        costNote((c) => ` (${times(c.throughput)})`),
      ),
    ],
    [
      "Latency p99 (lower is better)",
      `emit on server 0 to arrival at a client of server 1 or 2; round trip for requests${withRecovery ? "; (±N ms): ours + recovery − ours" : ""}`,
      "ms",
      groupsOf(
        (s) => s.p99,
        notJoin,
        costNote((c) => ` (${plus(c.p99DiffMs)} ms)`),
      ),
    ],
    [
      "Server CPU per 1,000 broadcasts (lower is better)",
      "user + system time of the three server processes",
      "ms",
      groupsOf((s) => s.serverCpuPer1k, notJoin),
    ],
    [
      "Connection state recovery: CPU per 1,000 broadcasts (lower is better)",
      "ours vs ours + recovery; server: the three server processes; PostgreSQL: this run's backends",
      "ms",
      [
        ...recoveryGroups((s) => s.serverCpuPer1k, "server"),
        ...recoveryGroups((s) => s.pgCpuPer1k, "PostgreSQL"),
      ],
    ],
    [
      "Peak RSS of the emitting server (lower is better)",
      "sampled every 20 ms during the run; in brackets: before the run, after a GC",
      "MB",
      groupsOf(
        (s) => s.emitterPeakRssMb,
        broadcasts,
        (s) => (s.emitterBaseRssMb === null ? "" : ` (${fmt(s.emitterBaseRssMb, 0)})`),
      ),
    ],
    [
      "New server joining (lower is better)",
      "ms from its init until the others count it / until it counts the others; median and worst",
      "ms",
      order
        .filter((s) => s.type === "join")
        .flatMap((scenario) => [
          {
            label: "seen by the others",
            bars: summaries
              .filter((s) => s.scenario === scenario.name)
              .map((s) => ({
                kind: s.kind,
                value: s.seenByOthersMs,
                note: ` (worst ${fmt(s.seenByOthersWorstMs)})`,
              })),
          },
          {
            label: "sees the others",
            bars: summaries
              .filter((s) => s.scenario === scenario.name)
              .map((s) => ({
                kind: s.kind,
                value: s.seesOthersMs,
                note: ` (worst ${fmt(s.seesOthersWorstMs)})`,
              })),
          },
        ]),
    ],
  ]
  const body: Array<string> = []
  let y = 64
  for (const [title, subtitle, unit, groups] of panels) {
    if (!groups.some((g) => g.bars.some((b) => b.value !== null))) continue
    const p = panel(y, title, subtitle, unit, groups)
    body.push(p.svg)
    y += p.height + 10
  }
  const legend = (Object.keys(COLORS) as Array<Kind>)
    .filter((kind) => summaries.some((s) => s.kind === kind))
    .map(
      (kind, i) =>
        `<rect x="${16 + i * 130}" y="44" width="12" height="12" fill="${COLORS[kind]}"/>` +
        `<text x="${34 + i * 130}" y="54" class="label">${escapeXml(KIND_LABEL[kind])}</text>`,
    )
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${y + 10}" viewBox="0 0 ${WIDTH} ${y + 10}" font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif">`,
    `<style>.title{font-size:15px;font-weight:600;fill:#222}.sub{font-size:11px;fill:#666}.label{font-size:12px;fill:#333}.value{font-size:11px;fill:#333}.head{font-size:17px;font-weight:700;fill:#111}</style>`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    `<text x="16" y="22" class="head">socket.io-postgres-effect vs @socket.io/postgres-adapter 0.5.0 and @socket.io/redis-adapter</text>`,
    `<text x="16" y="38" class="sub">${escapeXml(caption)}</text>`,
    ...legend,
    ...body,
    `</svg>`,
  ].join("\n")
}
