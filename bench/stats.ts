/** Clock, per-receiver bookkeeping and the statistics the report is made of. */
import { readdirSync, readFileSync } from "node:fs"
import { performance } from "node:perf_hooks"

/**
 * Wall-clock milliseconds with sub-millisecond resolution. Processes on one machine agree on it
 * closely enough to time a packet from the emitting server to a client in another process.
 */
export const now = (): number => performance.timeOrigin + performance.now()

/** What a receiver saw of packets numbered `0 … expected-1`. */
export interface ReceiverStats {
  readonly expected: number
  /** Distinct packets received. */
  readonly unique: number
  readonly duplicates: number
  /** Packets that arrived after one with a higher number. */
  readonly outOfOrder: number
  /** Packets with a number outside `0 … expected-1` (or sent to a receiver that expected none). */
  readonly unexpected: number
  readonly firstAt: number | undefined
  readonly lastAt: number | undefined
}

/** Records the packets of one receiver: sequence numbers, arrival times, latencies. */
export class Tracker {
  readonly #seen: Uint8Array
  readonly latencies: Array<number> = []
  unique = 0
  duplicates = 0
  outOfOrder = 0
  unexpected = 0
  #highest = -1
  firstAt: number | undefined
  lastAt: number | undefined

  constructor(readonly expected: number) {
    this.#seen = new Uint8Array(Math.max(expected, 0))
  }

  /** True once every expected packet arrived. */
  get complete(): boolean {
    return this.unique >= this.expected
  }

  /** A packet `seq`, sent at `sentAt` (see {@link now}), arrived now. */
  record(seq: number, sentAt: number): void {
    const at = now()
    this.firstAt ??= at
    this.lastAt = at
    if (!Number.isInteger(seq) || seq < 0 || seq >= this.expected) {
      this.unexpected++
      return
    }
    if (this.#seen[seq] === 1) {
      this.duplicates++
      return
    }
    this.#seen[seq] = 1
    this.unique++
    if (seq < this.#highest) this.outOfOrder++
    else this.#highest = seq
    this.latencies.push(at - sentAt)
  }

  stats(): ReceiverStats {
    return {
      expected: this.expected,
      unique: this.unique,
      duplicates: this.duplicates,
      outOfOrder: this.outOfOrder,
      unexpected: this.unexpected,
      firstAt: this.firstAt,
      lastAt: this.lastAt,
    }
  }
}

/** The `q`-quantile (0…1) of `sorted` (ascending), nearest rank; undefined when empty. */
export const quantile = (sorted: ArrayLike<number>, q: number): number | undefined => {
  if (sorted.length === 0) return undefined
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))
  return sorted[rank]
}

/** p50 / p95 / p99 / max of `values` (not modified). */
export const percentiles = (
  values: ReadonlyArray<number>,
): {
  p50: number | undefined
  p95: number | undefined
  p99: number | undefined
  max: number | undefined
} => {
  const sorted = Float64Array.from(values).sort()
  return {
    p50: quantile(sorted, 0.5),
    p95: quantile(sorted, 0.95),
    p99: quantile(sorted, 0.99),
    max: quantile(sorted, 1),
  }
}

/** The median of the defined values, or undefined if there are none. */
export const median = (values: ReadonlyArray<number | null | undefined>): number | undefined => {
  const defined = values.filter((v): v is number => typeof v === "number" && Number.isFinite(v))
  if (defined.length === 0) return undefined
  defined.sort((a, b) => a - b)
  const mid = defined.length >> 1
  return defined.length % 2 === 1 ? defined[mid]! : (defined[mid - 1]! + defined[mid]!) / 2
}

/** Rounds for the JSON file: three significant decimals are plenty for timings. */
export const round = (value: number | undefined | null, digits = 2): number | null => {
  if (value === undefined || value === null || !Number.isFinite(value)) return null
  const f = 10 ** digits
  return Math.round(value * f) / f
}

// ─── PostgreSQL CPU from /proc ────────────────────────────────────────────────────────────────

const TICKS_PER_SECOND = 100 // USER_HZ: 100 on every Linux that matters

interface ProcStat {
  readonly pid: number
  readonly ppid: number
  readonly comm: string
  /** utime + stime, in ms. */
  readonly cpuMs: number
}

const readStat = (pid: number): ProcStat | undefined => {
  let text: string
  try {
    text = readFileSync(`/proc/${pid}/stat`, "utf8")
  } catch {
    return undefined
  }
  // "pid (comm) state ppid …": comm may hold spaces and parentheses.
  const open = text.indexOf("(")
  const close = text.lastIndexOf(")")
  const fields = text.slice(close + 2).split(" ")
  // After comm: state(0) ppid(1) … utime(11) stime(12)
  const utime = Number(fields[11])
  const stime = Number(fields[12])
  return {
    pid,
    ppid: Number(fields[1]),
    comm: text.slice(open + 1, close),
    cpuMs: ((utime + stime) * 1000) / TICKS_PER_SECOND,
  }
}

/**
 * CPU time so far (ms) of every process called `postgres` or `redis-server`, by pid; undefined
 * without /proc.
 */
export const serverCpu = (): Map<number, ProcStat> | undefined => {
  let entries: Array<string>
  try {
    entries = readdirSync("/proc")
  } catch {
    return undefined
  }
  const result = new Map<number, ProcStat>()
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue
    const stat = readStat(Number(entry))
    if (stat !== undefined && (stat.comm === "postgres" || stat.comm === "redis-server")) {
      result.set(stat.pid, stat)
    }
  }
  return result
}

/** The pids of the `redis-server` processes in a {@link serverCpu} snapshot. */
export const redisProcesses = (snapshot: Map<number, ProcStat> | undefined): Array<number> =>
  [...(snapshot?.values() ?? [])].filter((s) => s.comm === "redis-server").map((s) => s.pid)

/**
 * CPU (ms) used between two {@link serverCpu} snapshots by the processes `pids` (backends born
 * in between count from zero). Undefined when none of them is visible in /proc (a remote server).
 */
export const cpuBetween = (
  before: Map<number, ProcStat> | undefined,
  after: Map<number, ProcStat> | undefined,
  pids: Iterable<number>,
): number | undefined => {
  if (before === undefined || after === undefined) return undefined
  let total = 0
  let seen = 0
  for (const pid of pids) {
    const end = after.get(pid)
    if (end === undefined) continue
    seen++
    total += end.cpuMs - (before.get(pid)?.cpuMs ?? 0)
  }
  return seen === 0 ? undefined : total
}

/** The postmaster's pid and every `postgres` process under it (the whole server), from a backend's pid. */
export const serverProcesses = (
  snapshot: Map<number, ProcStat> | undefined,
  backendPid: number,
): Array<number> => {
  if (snapshot === undefined) return []
  const postmaster = snapshot.get(backendPid)?.ppid
  if (postmaster === undefined || !snapshot.has(postmaster)) return []
  return [
    postmaster,
    ...[...snapshot.values()].filter((s) => s.ppid === postmaster).map((s) => s.pid),
  ]
}
