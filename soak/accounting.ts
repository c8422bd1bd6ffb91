/**
 * The soak's bookkeeping, as pure functions over what a run recorded (no clock, no I/O): which
 * client should have received which packet, what was delivered, lost, duplicated or reordered in
 * each window between faults, how long each fault took to recover from, and the verdict with the
 * rules that fail a run. `soak.ts` records; this module judges. The README's "Soak" section states
 * the same rules.
 */
import { percentiles } from "../bench/stats.js"

// ─── what a run records ───────────────────────────────────────────────────────────────────────

/** The two clusters every server process takes part in: with connection state recovery, without. */
export type ClusterName = "rec" | "plain"

export const CLUSTERS: ReadonlyArray<ClusterName> = ["rec", "plain"]

/** Who a packet is for: every client of the cluster, or those in the room. */
export type Target = "all" | "room"

/**
 * A stream: the packets one server process (one incarnation of a server slot) sends to one target
 * of one cluster, numbered 0, 1, 2, … in send order. Its key is `cluster/origin/target`, the origin
 * `s<slot>.<incarnation>` (a restarted server numbers from 0 again under a new origin).
 */
export interface Stream {
  readonly cluster: ClusterName
  readonly origin: string
  readonly target: Target
}

export const streamKey = (stream: Stream): string =>
  `${stream.cluster}/${stream.origin}/${stream.target}`

export const parseStreamKey = (key: string): Stream => {
  const [cluster, origin, target] = key.split("/")
  if (
    (cluster !== "rec" && cluster !== "plain") ||
    origin === undefined ||
    (target !== "all" && target !== "room")
  ) {
    throw new Error(`not a stream key: ${key}`)
  }
  return { cluster, origin, target }
}

/** A packet as its origin sent it: stream key, sequence number, send time (epoch ms). */
export interface Send {
  readonly stream: string
  readonly seq: number
  readonly t: number
}

/** A packet as a client received it. `offset`: it came with a recovery offset (it was stored). */
export interface Receipt {
  readonly seq: number
  readonly at: number
  readonly offset: boolean
}

/** One connection of a client: from its `connect` event until its disconnection (or the end). */
export interface Connection {
  readonly at: number
  readonly until: number
  /** Socket.IO restored the session (`socket.recovered`): the previous connection's packets go on. */
  readonly recovered: boolean
  /** It follows a transport close the soak made on purpose (the client came back by itself). */
  readonly blip: boolean
  /** The client had received a packet with an offset before (else Socket.IO cannot restore it). */
  readonly hadOffset: boolean
}

/** Everything one client saw. */
export interface ClientLog {
  readonly id: string
  readonly cluster: ClusterName
  /** The server slot it connects to. */
  readonly server: number
  readonly inRoom: boolean
  readonly connections: ReadonlyArray<Connection>
  /** Receipts by stream key, in arrival order. */
  readonly receipts: Readonly<Record<string, ReadonlyArray<Receipt>>>
}

/**
 * One fault: injected at `start`, acting until `end` (= `start` for instantaneous ones). Cross-
 * server delivery is expected back from `recoverFrom` on: `start` for faults the adapter must
 * overcome while they last (a killed LISTEN backend, a black hole, latency), `end` for those it can
 * only wait out (PostgreSQL stopped or frozen, a server being restarted).
 */
export interface Fault {
  readonly kind: string
  readonly start: number
  readonly end: number
  readonly recoverFrom: number
}

/** A probe (`serverSideEmit`) from server slot `from` that reached slot `to`. */
export interface Probe {
  readonly cluster: ClusterName
  readonly from: number
  readonly to: number
  readonly sentAt: number
  readonly at: number
}

/** A `fetchSockets` or `serverSideEmitWithAck` of one server. */
export interface Request {
  readonly op: "fetchSockets" | "serverSideEmitWithAck"
  readonly cluster: ClusterName
  readonly server: number
  readonly start: number
  readonly end: number
  /** ok: every other server answered; partial: fewer answers; failed: it rejected. */
  readonly outcome: "ok" | "partial" | "failed"
}

/** Resources at one moment; a value is absent when it could not be read (e.g. PostgreSQL frozen). */
export interface Sample {
  readonly at: number
  /** RSS in MB by server slot, with the origin (incarnation) that was measured. */
  readonly rssMb: ReadonlyArray<{ readonly origin: string; readonly mb: number } | null>
  /** PostgreSQL backends by server slot (found by application_name). */
  readonly connections: ReadonlyArray<number> | null
  /** Rows of the attachments table (both clusters') and its size with indexes and TOAST. */
  readonly attachmentRows: number | null
  readonly attachmentBytes: number | null
}

/** A whole run, as `soak.ts` recorded it. */
export interface SoakLog {
  readonly startedAt: number
  /** When the last packet was sent. */
  readonly trafficEnd: number
  readonly servers: number
  readonly sends: ReadonlyArray<Send>
  readonly clients: ReadonlyArray<ClientLog>
  readonly faults: ReadonlyArray<Fault>
  readonly probes: ReadonlyArray<Probe>
  readonly requests: ReadonlyArray<Request>
  readonly samples: ReadonlyArray<Sample>
}

// ─── the rules ────────────────────────────────────────────────────────────────────────────────

/** The margins and limits of the verdict (see the README's "Soak" section). */
export interface Rules {
  /** A connection owes packets sent from this long after it connected… */
  readonly startMarginMs: number
  /** …until this long before its session ended (packets still on their way then are not owed). */
  readonly endMarginMs: number
  /** A fault's window opens this long before it is injected (packets in flight when it struck). */
  readonly beforeFaultMs: number
  /** …and closes this long after recovery (membership settles: `heartbeatTimeout`). */
  readonly graceMs: number
  /** A fault not recovered from within this long after `recoverFrom` fails the run. */
  readonly recoveryLimitMs: number
  /** PostgreSQL backends a server may hold outside fault windows (pool max + LISTEN connections). */
  readonly maxConnectionsPerServer: number
  /** Growth checks apply to series of at least this duration (after `warmupMs`). */
  readonly growthMinSpanMs: number
  /** The first part of a server's life (and of the run, for the table) left out of growth checks. */
  readonly warmupMs: number
  /** The last third's mean may exceed the first third's by this factor… */
  readonly growthFactor: number
  /** …and by at least this much (MB of RSS, rows of the attachments table). */
  readonly growthMinRssMb: number
  readonly growthMinRows: number
}

// ─── the report ───────────────────────────────────────────────────────────────────────────────

/** Packets of one cluster in one window, counted per owed delivery (a packet times its clients). */
export interface Tally {
  /** Packets sent. */
  sent: number
  /** Deliveries owed: each packet once per client that should get it. */
  expected: number
  delivered: number
  /** Never received, though the packet reached the client's server while its session was on. */
  lost: number
  /**
   * Never received because the packet reached the client's server only after its session ended
   * (held up by a fault, or slow): late, not lost; no rule counts it.
   */
  late: number
  /** Receipts beyond the first of a packet by a client. */
  duplicated: number
  /** Receipts of a packet after a later packet of its stream. */
  reordered: number
}

/** A span of the run between two fault injections. */
export interface WindowReport {
  readonly index: number
  readonly from: number
  readonly to: number
  /** The fault injected at `from` (none for the first window). */
  readonly fault: string | null
  readonly rec: Tally
  readonly plain: Tally
  /** Owed deliveries lost of packets sent outside every fault window (any > 0 fails the run). */
  lostOutsideFaults: number
  readonly requests: { ok: number; partial: number; failed: number }
}

/** One fault and what it cost. */
export interface FaultReport extends Fault {
  /** When cross-server delivery worked again from every server to every other, both clusters. */
  readonly recoveredAt: number | null
  /** Per ordered pair of servers and cluster: ms from `recoverFrom` to the first probe through. */
  readonly pairs: ReadonlyArray<{
    readonly cluster: ClusterName
    readonly from: number
    readonly to: number
    readonly ms: number | null
  }>
  /** p50 and max of `pairs` (null if a pair never recovered). */
  readonly recoveryP50Ms: number | null
  readonly recoveryMaxMs: number | null
  /** Its window: packets sent in it may be lost by clients without recovery. */
  readonly windowFrom: number
  readonly windowTo: number
  /**
   * Owed deliveries lost of packets sent in this fault's window, by cluster; `recNotStored`: of
   * the recovery clients' losses, packets that were never stored (their publish failed), which
   * connection state recovery cannot replay.
   */
  readonly lost: { rec: number; plain: number; recNotStored: number }
  /** Owed deliveries of this window's packets that came too late for their client, by cluster. */
  readonly late: { rec: number; plain: number }
}

/** Stored packets a recovery client missed within its session. */
export interface RecoveryMiss {
  readonly client: string
  lost: number
  /** By stream: how many, the first and last missed sequence numbers and their send times. */
  readonly streams: Record<
    string,
    { count: number; firstSeq: number; lastSeq: number; firstT: number; lastT: number }
  >
}

/** What a run amounted to. */
export interface Verdict {
  readonly ok: boolean
  readonly failures: ReadonlyArray<string>
}

export interface Accounting {
  readonly windows: ReadonlyArray<WindowReport>
  readonly faults: ReadonlyArray<FaultReport>
  readonly totals: { rec: Tally; plain: Tally }
  /** Receipts of a room's packets by clients outside the room. */
  readonly misdelivered: number
  /** Recovery clients that lost stored packets within their session: how many, of which streams. */
  readonly recoveryMisses: ReadonlyArray<RecoveryMiss>
  /** Deliberate transport closes of recovery clients, and how many came back restored. */
  readonly blips: { rec: number; recRestored: number; plain: number }
  readonly verdict: Verdict
}

// ─── helpers ──────────────────────────────────────────────────────────────────────────────────

const emptyTally = (): Tally => ({
  sent: 0,
  expected: 0,
  delivered: 0,
  lost: 0,
  late: 0,
  duplicated: 0,
  reordered: 0,
})

const addTally = (into: Tally, from: Tally): Tally => {
  for (const key of Object.keys(into) as Array<keyof Tally>) into[key] += from[key]
  return into
}

/** Index of the first element of `sorted` (by `t`) with `t >= value`. */
const lowerBound = (sorted: ReadonlyArray<Send>, value: number): number => {
  let lo = 0
  let hi = sorted.length
  while (lo < hi) {
    const mid = (lo + hi) >> 1
    if (sorted[mid]!.t < value) lo = mid + 1
    else hi = mid
  }
  return lo
}

/**
 * A client's sessions: spans over which it is owed every packet. A connection restored by
 * Socket.IO (`recovered`) continues the session before it, its disconnection gap included; any
 * other connection starts a new one.
 */
export const sessions = (
  connections: ReadonlyArray<Connection>,
): Array<{ from: number; to: number; restored: number }> => {
  const result: Array<{ from: number; to: number; restored: number }> = []
  for (const connection of connections) {
    const last = result[result.length - 1]
    if (connection.recovered && last !== undefined) {
      last.to = connection.until
      last.restored++
    } else {
      result.push({ from: connection.at, to: connection.until, restored: 0 })
    }
  }
  return result
}

/** The windows of the faults: [start - beforeFaultMs, max(end, recoveredAt) + graceMs]. */
const faultWindow = (
  fault: Fault,
  recoveredAt: number | null,
  rules: Rules,
  runEnd: number,
): { from: number; to: number } => ({
  from: fault.start - rules.beforeFaultMs,
  to: recoveredAt === null ? runEnd : Math.max(fault.end, recoveredAt) + rules.graceMs,
})

/**
 * When cross-server delivery worked again after `fault`: per ordered pair of server slots and
 * cluster, the arrival of the first probe sent at or after `recoverFrom`; null for a pair with no
 * such probe within the limit.
 */
export const recovery = (
  fault: Fault,
  probes: ReadonlyArray<Probe>,
  servers: number,
  rules: Pick<Rules, "recoveryLimitMs">,
): Pick<FaultReport, "recoveredAt" | "pairs" | "recoveryP50Ms" | "recoveryMaxMs"> => {
  const limit = fault.recoverFrom + rules.recoveryLimitMs
  const first = new Map<string, number>()
  for (const probe of probes) {
    if (probe.sentAt < fault.recoverFrom || probe.at > limit) continue
    const key = `${probe.cluster}/${probe.from}/${probe.to}`
    const seen = first.get(key)
    if (seen === undefined || probe.at < seen) first.set(key, probe.at)
  }
  const pairs: Array<FaultReport["pairs"][number]> = []
  for (const cluster of CLUSTERS) {
    for (let from = 0; from < servers; from++) {
      for (let to = 0; to < servers; to++) {
        if (from === to) continue
        const at = first.get(`${cluster}/${from}/${to}`)
        pairs.push({ cluster, from, to, ms: at === undefined ? null : at - fault.recoverFrom })
      }
    }
  }
  const all = pairs.map((pair) => pair.ms)
  const complete = all.every((ms): ms is number => ms !== null)
  const stats = complete ? percentiles(all) : undefined
  return {
    recoveredAt: complete ? fault.recoverFrom + (stats?.max ?? 0) : null,
    pairs,
    recoveryP50Ms: stats?.p50 ?? null,
    recoveryMaxMs: stats?.max ?? null,
  }
}

/** Mean of the values of `series` in the first and the last third of its time span. */
const thirds = (
  series: ReadonlyArray<{ readonly at: number; readonly value: number }>,
): { first: number; last: number; span: number } | undefined => {
  if (series.length < 6) return undefined
  const from = series[0]!.at
  const span = series[series.length - 1]!.at - from
  const mean = (values: ReadonlyArray<number>) =>
    values.reduce((sum, v) => sum + v, 0) / Math.max(1, values.length)
  const first = series.filter((s) => s.at <= from + span / 3).map((s) => s.value)
  const last = series.filter((s) => s.at >= from + (2 * span) / 3).map((s) => s.value)
  if (first.length === 0 || last.length === 0) return undefined
  return { first: mean(first), last: mean(last), span }
}

/**
 * The growth rule: over a series at least `growthMinSpanMs` long (after `warmupMs`), the last
 * third's mean exceeds the first third's by more than `growthFactor` and by more than `minGrowth`.
 * Returns the two means when it grew so, else undefined.
 */
export const grows = (
  series: ReadonlyArray<{ readonly at: number; readonly value: number }>,
  rules: Pick<Rules, "growthMinSpanMs" | "warmupMs" | "growthFactor">,
  minGrowth: number,
): { first: number; last: number } | undefined => {
  if (series.length === 0) return undefined
  const start = series[0]!.at + rules.warmupMs
  const steady = thirds(series.filter((s) => s.at >= start))
  if (steady === undefined || steady.span < rules.growthMinSpanMs) return undefined
  const grew =
    steady.last > steady.first * rules.growthFactor && steady.last - steady.first > minGrowth
  return grew ? { first: steady.first, last: steady.last } : undefined
}

// ─── the accounting ───────────────────────────────────────────────────────────────────────────

/** Whether client `client` should get the packets of `stream`. */
const owes = (client: ClientLog, stream: Stream) =>
  stream.cluster === client.cluster && (stream.target === "all" || client.inRoom)

/** What the rules look packets up in. */
interface PacketIndex {
  /** Every packet sent, by stream, in send order. */
  readonly sends: Map<string, Array<Send>>
  readonly sendTime: (stream: string, seq: number) => number | undefined
  /** `stream#seq` of the packets some client received with an offset. */
  readonly stored: Set<string>
  /** `server|stream#seq` → first receipt by a client of that server slot. */
  readonly reached: Map<string, number>
}

const indexPackets = (log: SoakLog): PacketIndex => {
  // Every packet sent, as its origin logged it. A killed origin's last sends may be missing from
  // the log: nobody is owed them, and a receipt of one is neither owed nor counted as delivered.
  const times = new Map<string, Map<number, number>>()
  for (const send of log.sends) {
    let seqs = times.get(send.stream)
    if (seqs === undefined) times.set(send.stream, (seqs = new Map()))
    if (!seqs.has(send.seq)) seqs.set(send.seq, send.t)
  }
  const sends = new Map<string, Array<Send>>()
  for (const [stream, seqs] of times) {
    sends.set(
      stream,
      [...seqs].map(([seq, t]) => ({ stream, seq, t })).sort((a, b) => a.t - b.t || a.seq - b.seq),
    )
  }
  // A packet was stored if any client got it with an offset (its origin's own clients get every
  // stored packet with its offset, and without one those whose storing failed). It reached a
  // server when a client of that server first got it.
  const stored = new Set<string>()
  const reached = new Map<string, number>()
  for (const client of log.clients) {
    for (const [stream, receipts] of Object.entries(client.receipts)) {
      for (const r of receipts) {
        if (r.offset) stored.add(`${stream}#${r.seq}`)
        const key = `${client.server}|${stream}#${r.seq}`
        const seen = reached.get(key)
        if (seen === undefined || r.at < seen) reached.set(key, r.at)
      }
    }
  }
  return { sends, sendTime: (stream, seq) => times.get(stream)?.get(seq), stored, reached }
}

/** The faults with their recovery and window; a failure for each one not recovered from. */
const faultReports = (
  log: SoakLog,
  rules: Rules,
  runEnd: number,
  failures: Array<string>,
): Array<FaultReport> =>
  log.faults.map((fault) => {
    const rec = recovery(fault, log.probes, log.servers, rules)
    const window = faultWindow(fault, rec.recoveredAt, rules, runEnd)
    if (rec.recoveredAt === null) {
      const missing = rec.pairs.filter((p) => p.ms === null)
      failures.push(
        `${fault.kind} at ${iso(fault.start)}: cross-server delivery not back within ` +
          `${rules.recoveryLimitMs} ms for ${missing.length} pair(s), e.g. ` +
          missing
            .slice(0, 3)
            .map((p) => `${p.cluster} s${p.from}->s${p.to}`)
            .join(", "),
      )
    }
    return {
      ...fault,
      ...rec,
      windowFrom: window.from,
      windowTo: window.to,
      lost: { rec: 0, plain: 0, recNotStored: 0 },
      late: { rec: 0, plain: 0 },
    }
  })

/** The spans between fault injections, the first from the start of the run. */
const emptyWindows = (log: SoakLog, runEnd: number): Array<WindowReport> => {
  const starts = log.faults.map((f) => f.start).sort((a, b) => a - b)
  const bounds = [log.startedAt, ...starts]
  return bounds.map((from, index) => ({
    index,
    from,
    to: bounds[index + 1] ?? runEnd,
    fault: index === 0 ? null : (log.faults.find((f) => f.start === from)?.kind ?? null),
    rec: emptyTally(),
    plain: emptyTally(),
    lostOutsideFaults: 0,
    requests: { ok: 0, partial: 0, failed: 0 },
  }))
}

/** Where a moment falls: its window between faults, and the fault window it is in, if any. */
interface Timeline {
  readonly windowOf: (t: number) => WindowReport
  readonly inFault: (t: number) => FaultReport | undefined
}

/** What the clients' packets amounted to, beyond the windows' tallies. */
interface ClientCounts {
  misdelivered: number
  outsideDuplicates: number
  outsideReorders: number
  lostOutside: number
}

/** Duplicates and reorders of one client in one stream, by the window of the send time. */
const countArrivals = (
  client: ClientLog,
  stream: string,
  index: PacketIndex,
  timeline: Timeline,
  counts: ClientCounts,
): Set<number> => {
  const got = new Set<number>()
  let highest = -1
  for (const r of client.receipts[stream] ?? []) {
    const t = index.sendTime(stream, r.seq) ?? r.at
    const tally = timeline.windowOf(t)[client.cluster]
    if (got.has(r.seq)) {
      tally.duplicated++
      if (timeline.inFault(t) === undefined) counts.outsideDuplicates++
    } else if (r.seq < highest) {
      tally.reordered++
      if (timeline.inFault(t) === undefined) counts.outsideReorders++
    }
    got.add(r.seq)
    highest = Math.max(highest, r.seq)
  }
  return got
}

/**
 * One client's owed deliveries, tallied by window and fault; returns the stored packets it lost
 * within its sessions if it has recovery (rule 2 of the README). A packet that reached the
 * client's server (a client there got it) only after the session ended is late, not lost.
 */
const judgeClient = (
  client: ClientLog,
  index: PacketIndex,
  timeline: Timeline,
  rules: Rules,
  runEnd: number,
  counts: ClientCounts,
): RecoveryMiss => {
  const spans = sessions(client.connections).map((s) => ({
    from: s.from + rules.startMarginMs,
    to: Math.min(s.to, runEnd) - rules.endMarginMs,
  }))
  const miss: RecoveryMiss = { client: client.id, lost: 0, streams: {} }
  for (const stream of new Set([...index.sends.keys(), ...Object.keys(client.receipts)])) {
    const info = parseStreamKey(stream)
    if (!owes(client, info)) {
      if (info.cluster === client.cluster) {
        counts.misdelivered += (client.receipts[stream] ?? []).length
      }
      continue
    }
    const got = countArrivals(client, stream, index, timeline, counts)
    // What was owed: packets sent while a session of the client was on, less the margins.
    const sends = index.sends.get(stream) ?? []
    for (const span of spans) {
      if (span.to < span.from) continue
      for (let i = lowerBound(sends, span.from); i < sends.length; i++) {
        const send = sends[i]!
        if (send.t > span.to) break
        const tally = timeline.windowOf(send.t)[client.cluster]
        tally.expected++
        if (got.has(send.seq)) {
          tally.delivered++
          continue
        }
        const key = `${stream}#${send.seq}`
        const fault = timeline.inFault(send.t)
        // Reached the server only after the session ended: late, not lost.
        const reachedAt = index.reached.get(`${client.server}|${key}`)
        if (reachedAt !== undefined && reachedAt > span.to) {
          tally.late++
          if (fault !== undefined) fault.late[client.cluster]++
          continue
        }
        tally.lost++
        const stored = index.stored.has(key)
        if (fault === undefined) {
          timeline.windowOf(send.t).lostOutsideFaults++
          counts.lostOutside++
        } else {
          fault.lost[client.cluster]++
          if (client.cluster === "rec" && !stored) fault.lost.recNotStored++
        }
        if (client.cluster !== "rec" || !stored) continue
        miss.lost++
        const entry = (miss.streams[stream] ??= {
          count: 0,
          firstSeq: send.seq,
          lastSeq: send.seq,
          firstT: send.t,
          lastT: send.t,
        })
        entry.count++
        entry.lastSeq = send.seq
        entry.lastT = send.t
      }
    }
  }
  return miss
}

/** Requests by the window of their start; those failed or partial outside fault windows. */
const judgeRequests = (
  log: SoakLog,
  timeline: Timeline,
  faults: ReadonlyArray<FaultReport>,
): number => {
  let failed = 0
  for (const request of log.requests) {
    timeline.windowOf(request.start).requests[request.outcome]++
    const excused =
      timeline.inFault(request.start) !== undefined ||
      timeline.inFault(request.end) !== undefined ||
      faults.some((f) => f.windowFrom >= request.start && f.windowFrom <= request.end)
    if (request.outcome !== "ok" && !excused) failed++
  }
  return failed
}

/**
 * Deliberate transport closes, and how many of them a recovery client came back from unrestored
 * outside fault windows, though it had an offset.
 */
const judgeBlips = (log: SoakLog, timeline: Timeline) => {
  const blips = { rec: 0, recRestored: 0, plain: 0 }
  let refused = 0
  for (const client of log.clients) {
    for (const connection of client.connections) {
      if (!connection.blip) continue
      if (client.cluster === "plain") {
        blips.plain++
        continue
      }
      blips.rec++
      if (connection.recovered) blips.recRestored++
      else if (connection.hadOffset && timeline.inFault(connection.at) === undefined) refused++
    }
  }
  return { blips, refused }
}

/** Judges a run: windows, faults, totals and the verdict. */
export const account = (log: SoakLog, rules: Rules): Accounting => {
  const failures: Array<string> = []
  const runEnd = log.trafficEnd + rules.endMarginMs
  const index = indexPackets(log)
  const faults = faultReports(log, rules, runEnd, failures)
  const windows = emptyWindows(log, runEnd)
  const timeline: Timeline = {
    windowOf: (t) => {
      let at = 0
      for (let i = 0; i < windows.length; i++) if (windows[i]!.from <= t) at = i
      return windows[at]!
    },
    inFault: (t) => faults.find((f) => t >= f.windowFrom && t <= f.windowTo),
  }
  for (const [stream, sends] of index.sends) {
    const { cluster } = parseStreamKey(stream)
    for (const send of sends) timeline.windowOf(send.t)[cluster].sent++
  }

  const counts: ClientCounts = {
    misdelivered: 0,
    outsideDuplicates: 0,
    outsideReorders: 0,
    lostOutside: 0,
  }
  const recoveryMisses = log.clients
    .map((client) => judgeClient(client, index, timeline, rules, runEnd, counts))
    .filter((miss) => miss.lost > 0)
  const requestFailures = judgeRequests(log, timeline, faults)
  const { blips, refused } = judgeBlips(log, timeline)

  const totals = { rec: emptyTally(), plain: emptyTally() }
  for (const window of windows) {
    addTally(totals.rec, window.rec)
    addTally(totals.plain, window.plain)
  }

  if (counts.lostOutside > 0) {
    const where = windows
      .filter((w) => w.lostOutsideFaults > 0)
      .map((w) => `window ${w.index} (${w.lostOutsideFaults})`)
      .join(", ")
    failures.push(`${counts.lostOutside} deliveries lost outside fault windows: ${where}`)
  }
  if (recoveryMisses.length > 0) {
    const lost = recoveryMisses.reduce((sum, m) => sum + m.lost, 0)
    failures.push(
      `${recoveryMisses.length} client(s) with connection state recovery missed ${lost} stored packet(s) within their session`,
    )
  }
  const count = (n: number, what: string) => (n > 0 ? [`${n} ${what}`] : [])
  failures.push(
    ...count(counts.misdelivered, "room packets reached clients outside the room"),
    ...count(counts.outsideDuplicates, "duplicates outside fault windows"),
    ...count(counts.outsideReorders, "reordered packets outside fault windows"),
    ...count(requestFailures, "requests failed or were answered partly outside fault windows"),
    ...count(
      refused,
      "transport closes of recovery clients outside fault windows were not restored",
    ),
    ...growthFailures(log, rules, faults),
  )

  return {
    windows,
    faults,
    totals,
    misdelivered: counts.misdelivered,
    recoveryMisses,
    blips,
    verdict: { ok: failures.length === 0, failures },
  }
}

/** The resource rules: connections per server outside fault windows, RSS and attachment growth. */
const growthFailures = (
  log: SoakLog,
  rules: Rules,
  faults: ReadonlyArray<FaultReport>,
): Array<string> => {
  const failures: Array<string> = []
  const quiet = (t: number) => !faults.some((f) => t >= f.windowFrom && t <= f.windowTo)
  let worst: { at: number; server: number; count: number } | undefined
  for (const sample of log.samples) {
    if (sample.connections === null || !quiet(sample.at)) continue
    sample.connections.forEach((count, server) => {
      if (count > rules.maxConnectionsPerServer && (worst === undefined || count > worst.count)) {
        worst = { at: sample.at, server, count }
      }
    })
  }
  if (worst !== undefined) {
    failures.push(
      `server s${worst.server} held ${worst.count} PostgreSQL connections at ${iso(worst.at)} ` +
        `outside fault windows (at most ${rules.maxConnectionsPerServer})`,
    )
  }
  // RSS: per server process (a restarted one is another series).
  const rss = new Map<string, Array<{ at: number; value: number }>>()
  for (const sample of log.samples) {
    for (const entry of sample.rssMb) {
      if (entry === null) continue
      let series = rss.get(entry.origin)
      if (series === undefined) rss.set(entry.origin, (series = []))
      series.push({ at: sample.at, value: entry.mb })
    }
  }
  for (const [origin, series] of rss) {
    const grew = grows(series, rules, rules.growthMinRssMb)
    if (grew !== undefined) {
      failures.push(
        `RSS of ${origin} grew from ${grew.first.toFixed(0)} MB to ${grew.last.toFixed(0)} MB`,
      )
    }
  }
  const rows = log.samples.flatMap((s) =>
    s.attachmentRows === null ? [] : [{ at: s.at, value: s.attachmentRows }],
  )
  const grew = grows(rows, rules, rules.growthMinRows)
  if (grew !== undefined) {
    failures.push(
      `the attachments table grew from ${grew.first.toFixed(0)} to ${grew.last.toFixed(0)} rows`,
    )
  }
  return failures
}

const iso = (t: number) => new Date(t).toISOString().slice(11, 23)

/**
 * Delivery over time for the timeline: per bucket of `bucketMs` (by send time), owed deliveries
 * and how many were made, summed over both clusters and per cluster.
 */
export const deliveryTimeline = (
  log: SoakLog,
  rules: Pick<Rules, "startMarginMs" | "endMarginMs">,
  bucketMs: number,
): Array<{ at: number; rec: [number, number]; plain: [number, number] }> => {
  const runEnd = log.trafficEnd + rules.endMarginMs
  const count = Math.max(1, Math.ceil((log.trafficEnd - log.startedAt) / bucketMs))
  const buckets = Array.from({ length: count }, (_, i) => ({
    at: log.startedAt + i * bucketMs,
    rec: [0, 0] as [number, number],
    plain: [0, 0] as [number, number],
  }))
  const byStream = new Map<string, Array<Send>>()
  for (const send of log.sends) {
    let list = byStream.get(send.stream)
    if (list === undefined) byStream.set(send.stream, (list = []))
    list.push(send)
  }
  for (const list of byStream.values()) list.sort((a, b) => a.t - b.t)
  for (const client of log.clients) {
    const spans = sessions(client.connections)
    for (const [stream, sends] of byStream) {
      const info = parseStreamKey(stream)
      if (!owes(client, info)) continue
      const got = new Set((client.receipts[stream] ?? []).map((r) => r.seq))
      for (const span of spans) {
        const from = span.from + rules.startMarginMs
        const to = Math.min(span.to, runEnd) - rules.endMarginMs
        for (let i = lowerBound(sends, from); i < sends.length && sends[i]!.t <= to; i++) {
          const send = sends[i]!
          const bucket = buckets[Math.floor((send.t - log.startedAt) / bucketMs)]
          if (bucket === undefined) continue
          bucket[info.cluster][0]++
          if (got.has(send.seq)) bucket[info.cluster][1]++
        }
      }
    }
  }
  return buckets
}
