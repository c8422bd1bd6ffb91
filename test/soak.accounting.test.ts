/**
 * The soak's judge (`soak/accounting.ts`) on fabricated logs: what is owed to whom, what counts as
 * lost, duplicated and reordered, which losses fail a run (outside fault windows; stored packets
 * a recovery client missed within its session) and which are only reported, recovery times, and
 * the resource rules. The soak itself (`soak.test.ts`) only shows that a real run passes; these
 * show that the verdict can fail.
 */
import { assert, describe, it } from "@effect/vitest"
import * as fc from "fast-check"
import {
  account,
  type ClientLog,
  type Connection,
  type Fault,
  grows,
  type Probe,
  type Receipt,
  recovery,
  type Rules,
  type Sample,
  type Send,
  sessions,
  type SoakLog,
} from "../soak/accounting.js"

const RULES: Rules = {
  startMarginMs: 100,
  endMarginMs: 1500,
  beforeFaultMs: 1000,
  graceMs: 10_000,
  recoveryLimitMs: 60_000,
  maxConnectionsPerServer: 6,
  growthMinSpanMs: 60_000,
  warmupMs: 0,
  growthFactor: 1.5,
  growthMinRssMb: 32,
  growthMinRows: 2000,
}

const T0 = 1_000_000
const ALL = "plain/s0.1/all"
const REC = "rec/s0.1/all"
const ROOM = "plain/s0.1/room"

/** `count` packets of `stream`, one every 100 ms from T0 + 1 s. */
const sendsOf = (stream: string, count: number): Array<Send> =>
  Array.from({ length: count }, (_, seq) => ({ stream, seq, t: T0 + 1000 + seq * 100 }))

const connection = (at: number, until: number, recovered = false): Connection => ({
  at,
  until,
  recovered,
  blip: false,
  hadOffset: recovered,
})

/** A client connected for the whole run that got the packets of `seqs` (in that order). */
const clientOf = (
  id: string,
  stream: string,
  seqs: ReadonlyArray<number>,
  options: {
    readonly server?: number
    readonly inRoom?: boolean
    readonly connections?: ReadonlyArray<Connection>
    readonly offset?: boolean
    readonly at?: (seq: number) => number
  } = {},
): ClientLog => ({
  id,
  cluster: stream.startsWith("rec") ? "rec" : "plain",
  server: options.server ?? 1,
  inRoom: options.inRoom ?? true,
  connections: options.connections ?? [connection(T0, T0 + 100_000)],
  receipts: {
    [stream]: seqs.map((seq): Receipt => ({
      seq,
      at: options.at?.(seq) ?? T0 + 1000 + seq * 100 + 5,
      offset: options.offset ?? false,
    })),
  },
})

/** Probes between every pair of 2 servers in both clusters, every 250 ms, `delay` ms on the way. */
const probesBetween = (from: number, to: number, delay = 5): Array<Probe> => {
  const probes: Array<Probe> = []
  for (let t = from; t < to; t += 250) {
    for (const cluster of ["rec", "plain"] as const) {
      probes.push({ cluster, from: 0, to: 1, sentAt: t, at: t + delay })
      probes.push({ cluster, from: 1, to: 0, sentAt: t, at: t + delay })
    }
  }
  return probes
}

const logOf = (overrides: Partial<SoakLog>): SoakLog => ({
  startedAt: T0,
  trafficEnd: T0 + 60_000,
  servers: 2,
  sends: [],
  clients: [],
  faults: [],
  probes: probesBetween(T0, T0 + 60_000),
  requests: [],
  samples: [],
  ...overrides,
})

const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i)

const A_FAULT: Fault = {
  kind: "black-hole",
  start: T0 + 20_000,
  end: T0 + 20_000,
  recoverFrom: T0 + 20_000,
}

describe("soak accounting", () => {
  it("passes a run where every client got every packet, once and in order", () => {
    const sends = sendsOf(ALL, 100)
    const result = account(
      logOf({
        sends,
        clients: [clientOf("a", ALL, range(0, 100)), clientOf("b", ALL, range(0, 100))],
      }),
      RULES,
    )
    assert.deepStrictEqual(result.verdict, { ok: true, failures: [] })
    assert.strictEqual(result.totals.plain.sent, 100)
    assert.strictEqual(result.totals.plain.expected, 200)
    assert.strictEqual(result.totals.plain.delivered, 200)
    assert.strictEqual(result.totals.plain.lost, 0)
  })

  it("fails a run that lost one packet outside every fault window", () => {
    const sends = sendsOf(ALL, 100)
    const got = range(0, 100).filter((seq) => seq !== 40)
    const result = account(logOf({ sends, clients: [clientOf("a", ALL, got)] }), RULES)
    assert.isFalse(result.verdict.ok)
    assert.match(result.verdict.failures[0]!, /1 deliveries lost outside fault windows/)
    assert.strictEqual(result.totals.plain.lost, 1)
  })

  it("reports, without failing, what a client without recovery lost in a fault's window", () => {
    // Packet 190 is sent at T0 + 20 s, when the fault strikes; recovered 2 s later.
    const sends = sendsOf(ALL, 300)
    const got = range(0, 300).filter((seq) => seq < 190 || seq > 200)
    const probes = [
      ...probesBetween(T0, T0 + 20_000),
      ...probesBetween(T0 + 20_000, T0 + 60_000, 2000),
    ]
    const result = account(
      logOf({ sends, clients: [clientOf("a", ALL, got)], faults: [A_FAULT], probes }),
      RULES,
    )
    assert.deepStrictEqual(result.verdict, { ok: true, failures: [] })
    assert.strictEqual(result.faults[0]!.lost.plain, 11)
    assert.strictEqual(result.faults[0]!.recoveryMaxMs, 2000)
    assert.strictEqual(result.windows.length, 2)
    assert.strictEqual(result.windows[1]!.plain.lost, 11)
    assert.strictEqual(result.windows[1]!.lostOutsideFaults, 0)
  })

  it("fails when a recovery client missed a stored packet that reached its server in its session", () => {
    const sends = sendsOf(REC, 300)
    const all = range(0, 300)
    const witness = clientOf("witness", REC, all, { offset: true })
    // The client's transport closed at 19.5 s; it came back restored at 22 s, without 195.
    const restored = clientOf(
      "restored",
      REC,
      all.filter((seq) => seq !== 195),
      {
        offset: true,
        connections: [connection(T0, T0 + 19_500), connection(T0 + 22_000, T0 + 100_000, true)],
      },
    )
    const result = account(logOf({ sends, clients: [witness, restored], faults: [A_FAULT] }), RULES)
    assert.isFalse(result.verdict.ok)
    assert.match(result.verdict.failures.join("\n"), /connection state recovery missed 1 stored/)
    assert.deepStrictEqual(
      result.recoveryMisses.map((m) => [m.client, m.lost]),
      [["restored", 1]],
    )
  })

  it("counts a packet that reached the client's server only after it left as late, not lost", () => {
    const sends = sendsOf(REC, 300)
    // Packets 190..200 were held up by the fault and reached server 1 only at T0 + 40 s.
    const late = (seq: number) => (seq >= 190 && seq <= 200 ? T0 + 40_000 : T0 + 1005 + seq * 100)
    const witness = clientOf("witness", REC, range(0, 300), { offset: true, at: late })
    const onTime = range(0, 276).filter((seq) => seq < 190 || seq > 200)
    const leaver = clientOf("leaver", REC, onTime, {
      offset: true,
      connections: [connection(T0, T0 + 30_000)],
    })
    const result = account(logOf({ sends, clients: [witness, leaver], faults: [A_FAULT] }), RULES)
    assert.deepStrictEqual(result.verdict, { ok: true, failures: [] })
    assert.strictEqual(result.faults[0]!.lost.rec, 0)
    assert.strictEqual(result.faults[0]!.late.rec, 11)
    assert.strictEqual(result.totals.rec.late, 11)
  })

  it("fails when a recovery client missed a stored packet its server never delivered at all", () => {
    const sends = sendsOf(REC, 300)
    const missing = (seq: number) => seq < 190 || seq > 193
    // The packets' origin, server 0, delivered them to its own client: they were stored.
    const origin = clientOf("origin", REC, range(0, 300), { offset: true, server: 0 })
    const remote = clientOf("remote", REC, range(0, 300).filter(missing), { offset: true })
    const result = account(logOf({ sends, clients: [origin, remote], faults: [A_FAULT] }), RULES)
    assert.deepStrictEqual(
      result.recoveryMisses.map((m) => [m.client, m.lost]),
      [["remote", 4]],
    )
    assert.isFalse(result.verdict.ok)
  })

  it("does not hold a recovery client to packets that were never stored (no offset anywhere)", () => {
    const sends = sendsOf(REC, 300)
    const got = range(0, 300).filter((seq) => seq !== 195)
    const result = account(
      logOf({
        sends,
        clients: [clientOf("a", REC, range(0, 300)), clientOf("b", REC, got)],
        faults: [A_FAULT],
      }),
      RULES,
    )
    assert.deepStrictEqual(result.verdict, { ok: true, failures: [] })
  })

  it("counts duplicates and reorders, and fails on them outside fault windows", () => {
    const sends = sendsOf(ALL, 10)
    const result = account(
      logOf({ sends, clients: [clientOf("a", ALL, [0, 1, 3, 2, 4, 4, 5, 6, 7, 8, 9])] }),
      RULES,
    )
    assert.strictEqual(result.totals.plain.duplicated, 1)
    assert.strictEqual(result.totals.plain.reordered, 1)
    assert.strictEqual(result.totals.plain.lost, 0)
    assert.deepStrictEqual(result.verdict.failures, [
      "1 duplicates outside fault windows",
      "1 reordered packets outside fault windows",
    ])
  })

  it("owes a room's packets only to its members, and fails when they reach anyone else", () => {
    const sends = sendsOf(ROOM, 10)
    const outsider = clientOf("outsider", ROOM, [3], { inRoom: false })
    const result = account(logOf({ sends, clients: [outsider] }), RULES)
    assert.strictEqual(result.totals.plain.expected, 0)
    assert.strictEqual(result.misdelivered, 1)
    assert.deepStrictEqual(result.verdict.failures, [
      "1 room packets reached clients outside the room",
    ])
  })

  it("owes nothing sent before a connection or in its last end margin", () => {
    const sends = sendsOf(ALL, 100) // sent from T0 + 1 s to T0 + 10.9 s
    const client = clientOf("a", ALL, range(30, 60), {
      connections: [connection(T0 + 3950, T0 + 11_400)],
    })
    const result = account(logOf({ sends, clients: [client] }), RULES)
    // Owed: sent from 4.05 s (connect + 100 ms) to 9.9 s (disconnect - 1.5 s): seq 31..89.
    assert.strictEqual(result.totals.plain.expected, 59)
    assert.strictEqual(result.totals.plain.lost, 30)
    assert.isFalse(result.verdict.ok)
  })

  it("fails requests that failed outside fault windows, excuses those in one", () => {
    const request = (start: number, outcome: "ok" | "partial" | "failed") => ({
      op: "serverSideEmitWithAck" as const,
      cluster: "plain" as const,
      server: 0,
      start,
      end: start + 5000,
      outcome,
    })
    const inside = account(
      logOf({ faults: [A_FAULT], requests: [request(T0 + 21_000, "failed")] }),
      RULES,
    )
    assert.deepStrictEqual(inside.verdict.failures, [])
    const outside = account(logOf({ requests: [request(T0 + 5000, "partial")] }), RULES)
    assert.deepStrictEqual(outside.verdict.failures, [
      "1 requests failed or were answered partly outside fault windows",
    ])
  })

  it("fails a fault that cross-server delivery never recovered from", () => {
    const probes = probesBetween(T0, T0 + 20_000).concat(
      probesBetween(T0 + 20_000, T0 + 60_000).filter((p) => p.from !== 1 || p.cluster !== "rec"),
    )
    const result = account(logOf({ faults: [A_FAULT], probes }), RULES)
    assert.isNull(result.faults[0]!.recoveredAt)
    assert.match(
      result.verdict.failures[0]!,
      /black-hole .* not back .* 1 pair\(s\), e\.g\. rec s1->s0/,
    )
  })

  it("fails connections above the limit outside fault windows, not inside", () => {
    const sample = (at: number, connections: Array<number>): Sample => ({
      at,
      rssMb: [],
      connections,
      attachmentRows: 0,
      attachmentBytes: 0,
    })
    const samples = [sample(T0 + 5000, [6, 6]), sample(T0 + 21_000, [9, 9])]
    assert.deepStrictEqual(
      account(logOf({ faults: [A_FAULT], samples }), RULES).verdict.failures,
      [],
    )
    const after = [...samples, sample(T0 + 50_000, [6, 7])]
    assert.match(
      account(logOf({ faults: [A_FAULT], samples: after }), RULES).verdict.failures[0]!,
      /server s1 held 7 PostgreSQL connections/,
    )
  })

  it("merges a restored connection into the session before it", () => {
    assert.deepStrictEqual(
      sessions([
        connection(0, 10),
        connection(12, 20, true),
        connection(25, 30),
        connection(31, 40, true),
      ]),
      [
        { from: 0, to: 20, restored: 1 },
        { from: 25, to: 40, restored: 1 },
      ],
    )
  })

  it("finds growth only over a long enough series that grew by the factor and the minimum", () => {
    const series = (values: ReadonlyArray<number>, stepMs = 10_000) =>
      values.map((value, i) => ({ at: i * stepMs, value }))
    const rules = { growthMinSpanMs: 60_000, warmupMs: 0, growthFactor: 1.5 }
    assert.isUndefined(grows(series([100, 101, 99, 100, 102, 100, 101, 99, 100]), rules, 32))
    assert.deepStrictEqual(
      grows(series([100, 100, 100, 150, 150, 150, 200, 200, 200]), rules, 32),
      { first: 100, last: 200 },
    )
    // Short, or grown by less than the minimum.
    assert.isUndefined(
      grows(series([100, 100, 100, 150, 150, 150, 200, 200, 200], 1000), rules, 32),
    )
    assert.isUndefined(grows(series([10, 10, 10, 15, 15, 15, 20, 20, 20]), rules, 32))
  })
})

describe("soak accounting, properties", () => {
  it("delivered + lost = owed, and the verdict fails exactly when something was lost", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 60 }),
        fc.array(fc.boolean(), { minLength: 60, maxLength: 60 }),
        fc.array(fc.boolean(), { minLength: 60, maxLength: 60 }),
        (count, gotA, gotB) => {
          const sends = sendsOf(ALL, count)
          const a = range(0, count).filter((seq) => gotA[seq])
          const b = range(0, count).filter((seq) => gotB[seq])
          const result = account(
            logOf({ sends, clients: [clientOf("a", ALL, a), clientOf("b", ALL, b)] }),
            RULES,
          )
          const t = result.totals.plain
          assert.strictEqual(t.expected, 2 * count)
          assert.strictEqual(t.delivered, a.length + b.length)
          assert.strictEqual(t.late, 0)
          assert.strictEqual(t.delivered + t.lost, t.expected)
          assert.strictEqual(result.verdict.ok, t.lost === 0)
        },
      ),
    )
  })

  it("counts every extra receipt of a packet as a duplicate and every late one as reordered", () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 19 }), { minLength: 0, maxLength: 80 }),
        (arrivals) => {
          const result = account(
            logOf({ sends: sendsOf(ALL, 20), clients: [clientOf("a", ALL, arrivals)] }),
            RULES,
          )
          const seen = new Set<number>()
          let highest = -1
          let reordered = 0
          for (const seq of arrivals) {
            if (!seen.has(seq) && seq < highest) reordered++
            seen.add(seq)
            highest = Math.max(highest, seq)
          }
          const t = result.totals.plain
          assert.strictEqual(t.duplicated, arrivals.length - seen.size)
          assert.strictEqual(t.reordered, reordered)
          assert.strictEqual(t.lost, 20 - seen.size)
        },
      ),
    )
  })

  it("a fault's recovery is the latest pair's first probe sent after it, p50 never above max", () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 30_000 }), { minLength: 4, maxLength: 4 }),
        (delays) => {
          const fault: Fault = { kind: "x", start: 0, end: 0, recoverFrom: 1000 }
          const pairs = [
            ["rec", 0, 1],
            ["rec", 1, 0],
            ["plain", 0, 1],
            ["plain", 1, 0],
          ] as const
          const probes: Array<Probe> = pairs.flatMap(([cluster, from, to], i) => [
            // Sent before recoverFrom: never counts, however early it arrives.
            { cluster, from, to, sentAt: 999, at: 1001 },
            { cluster, from, to, sentAt: 1000, at: 1000 + delays[i]! },
          ])
          const result = recovery(fault, probes, 2, RULES)
          assert.strictEqual(result.recoveryMaxMs, Math.max(...delays))
          assert.isAtMost(result.recoveryP50Ms!, result.recoveryMaxMs!)
          assert.strictEqual(result.recoveredAt, 1000 + Math.max(...delays))
        },
      ),
    )
  })
})
