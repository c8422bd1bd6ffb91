/**
 * The Publisher's statements as a specification (pure, property-tested): how queued messages are
 * split into statements, and what each statement notifies once PostgreSQL runs it. PostgreSQL
 * folds identical (channel, payload) notifications of one transaction, so no statement may carry
 * one twice; order is kept; each attachment header names its own row. The statements are read by
 * a small evaluator of the SQL forms the builder writes (attachment ids and stored offsets
 * assigned as PostgreSQL does: in row order). Signed, a statement's consecutive notifications on a
 * channel share one MAC: verified per channel, they give back exactly what the unsigned statement
 * notifies.
 */
import { assert, describe, it } from "@effect/vitest"
import * as fc from "fast-check"
import * as Codec from "../src/Codec.js"
import { sealerOf } from "../src/Publisher.js"
import * as Signing from "../src/Signing.js"
import {
  ASYNC_COMMIT,
  ASYNC_COMMIT_CALL,
  makeStatement,
  type Outgoing,
  runEnd,
  type RunSealer,
  sealRun,
  splitRuns,
  storedOffsets,
  type StoredPacketsSql,
  type StoredRun,
} from "../src/internal/statements.js"
import { notificationsOfScript } from "./utils/sql.js"

const { MessageType } = Codec

/** Few channels and payloads, so that runs meet repeated pairs often. */
const channel = fc.constantFrom("a", "b", "c")
const word = fc.constantFrom("tick", "tock", "x")
const nsp = fc.constantFrom("/", "/admin")

const message = (data: unknown, n?: string): Codec.WireMessage => ({
  uid: "node",
  type: MessageType.BROADCAST,
  nsp: n ?? "/",
  data,
})

const inline: fc.Arbitrary<Outgoing> = fc.record({ channel, word }).map(({ channel, word }) => ({
  channel,
  encoded: Codec.encode(message([word]), 8000),
  stored: undefined,
}))

const attachment: fc.Arbitrary<Outgoing> = fc
  .record({ channel, byte: fc.integer({ min: 0, max: 255 }) })
  .map(({ channel, byte }) => ({
    channel,
    encoded: Codec.encode(message([Buffer.from([byte])]), 8000),
    stored: undefined,
  }))

/** A stored packet: notified inline, through an attachment, or not at all. */
const stored: fc.Arbitrary<Outgoing> = fc
  .record({
    channel,
    nsp,
    word,
    how: fc.constantFrom("inline", "attachment", "none"),
    byte: fc.integer({ min: 0, max: 255 }),
  })
  .map(({ channel, nsp, word, how, byte }) => ({
    channel,
    encoded:
      how === "none"
        ? undefined
        : Codec.encode(
            Codec.withOffsetPlaceholder(
              message(how === "inline" ? [word] : [Buffer.from([byte])], nsp),
            ),
            8000,
          ),
    stored: { nsp, rooms: ["r"], except: [], bytes: Uint8Array.of(byte) },
  }))

const items = fc.array(fc.oneof(inline, inline, attachment, stored), { maxLength: 40 })

/** A stand-in for the packet store's SQL: offsets the evaluator computes, the run recorded. */
const fakeStored =
  (runs: Array<StoredRun>): StoredPacketsSql =>
  (run) => {
    runs.push(run)
    return {
      ctes: ["c AS (SELECT 1)"],
      offset: (position) => `offset_of(${position})`,
      columns: ["c.last::text AS last"],
      from: "c",
    }
  }

/** Offsets and attachment ids the evaluator hands out. */
const OFFSET_BASE = 500
const ID_BASE = 1000

interface Evaluated {
  readonly notifications: ReadonlyArray<{ readonly channel: string; readonly payload: string }>
  /** The attachment rows' payloads, by id. */
  readonly rows: ReadonlyMap<string, Uint8Array>
}

/** What PostgreSQL would notify and insert for one statement of the builder. */
const evaluate = (sql: string, params: ReadonlyArray<unknown>): Evaluated => {
  if (sql.startsWith(ASYNC_COMMIT)) {
    assert.deepStrictEqual(params, [], "a notify script has no parameters")
    return { notifications: notificationsOfScript(sql, ASYNC_COMMIT), rows: new Map() }
  }
  const param = (placeholder: string) => params[Number(placeholder.slice(1)) - 1]
  const rows = new Map<string, Uint8Array>()
  const values = /INSERT INTO \S+ \(payload\) VALUES (.*?) RETURNING id/.exec(sql)
  if (values !== null) {
    ;[...values[1]!.matchAll(/\((\$\d+)::bytea\)/g)].forEach((match, j) =>
      rows.set(String(ID_BASE + j + 1), param(match[1]!) as Uint8Array),
    )
  }
  const term = (text: string): string => {
    let match: RegExpExecArray | null
    if (/^\$\d+$/.test(text)) return param(text) as string
    if ((match = /^\(SELECT a\[(\d+)\] FROM ids\)::text$/.exec(text)) !== null)
      return String(ID_BASE + Number(match[1]))
    if ((match = /^offset_of\((\d+)\)::text$/.exec(text)) !== null)
      return String(OFFSET_BASE + Number(match[1]))
    throw new Error(`unknown term: ${text}`)
  }
  const notifications = [
    ...sql.matchAll(/pg_notify\((\$\d+), (.+?)\)(?=, pg_notify\(| FROM |$)/g),
  ].map((match) => ({
    channel: param(match[1]!) as string,
    payload: match[2]!.split(" || ").map(term).join(""),
  }))
  return { notifications, rows }
}

/** The key PostgreSQL folds notifications of one transaction by. */
const pair = (channel: string, payload: string) => `${channel}\u0000${payload}`

describe("splitRuns", () => {
  it("keeps every message, in order, in non-empty runs", () => {
    fc.assert(
      fc.property(items, (all) => {
        const runs = splitRuns(all)
        assert.isTrue(runs.every((run) => run.length > 0))
        assert.deepStrictEqual(runs.flat(), all)
      }),
    )
  })

  it("never puts the same inline (channel, payload) pair twice in a run", () => {
    fc.assert(
      fc.property(items, (all) => {
        for (const run of splitRuns(all)) {
          const keys = run
            .filter((item) => item.stored === undefined && item.encoded?._tag === "Inline")
            .map((item) => pair(item.channel, (item.encoded as { payload: string }).payload))
          assert.strictEqual(new Set(keys).size, keys.length)
        }
      }),
    )
  })

  it("keeps the stored packets of a run in one namespace", () => {
    fc.assert(
      fc.property(items, (all) => {
        for (const run of splitRuns(all)) {
          const namespaces = new Set(run.flatMap((item) => item.stored?.nsp ?? []))
          assert.isAtMost(namespaces.size, 1)
        }
      }),
    )
  })

  it("ends a run only where the next message could not join it", () => {
    fc.assert(
      fc.property(items, (all) => {
        let start = 0
        for (const run of splitRuns(all)) {
          const end = start + run.length
          if (end < all.length) {
            const next = all[end]!
            const repeats =
              next.stored === undefined &&
              next.encoded?._tag === "Inline" &&
              run.some(
                (item) =>
                  item.stored === undefined &&
                  item.channel === next.channel &&
                  item.encoded?._tag === "Inline" &&
                  item.encoded.payload === (next.encoded as { payload: string }).payload,
              )
            const otherNamespace =
              next.stored !== undefined &&
              run.some((item) => item.stored !== undefined && item.stored.nsp !== next.stored!.nsp)
            assert.isTrue(repeats || otherNamespace, `run broken at ${end} without a reason`)
          }
          assert.strictEqual(runEnd(all, start), end)
          start = end
        }
      }),
    )
  })

  it("splits a thousand identical messages into a thousand runs", () => {
    const same = Array.from({ length: 1000 }, () => ({
      channel: "a",
      encoded: Codec.encode(message(["tick"]), 8000),
      stored: undefined,
    }))
    assert.strictEqual(splitRuns(same).length, 1000)
  })
})

describe.each([
  { name: "notify scripts (node-postgres)", scripts: true },
  { name: "one statement at a time (@effect/sql-pg)", scripts: false },
])("makeStatement, $name", ({ scripts }) => {
  const build = (runs: Array<StoredRun>) =>
    makeStatement({ scripts, attachmentsTable: `"att"`, storedPackets: fakeStored(runs) })

  it("notifies each message of a run once, in order, with its own attachment row and offset", () => {
    fc.assert(
      fc.property(items, (all) => {
        for (const run of splitRuns(all)) {
          const storedRuns: Array<StoredRun> = []
          const [sql, params] = build(storedRuns)(run)
          const { notifications, rows } = evaluate(sql, params)
          // Each notified message, in order: its channel, and its payload with the id of the
          // row that holds its own bytes and the offset of its own place among the stored.
          const notified = run.filter((item) => item.encoded !== undefined)
          assert.strictEqual(notifications.length, notified.length)
          let position = 0
          const offsetOf = new Map<Outgoing, string>()
          for (const item of run) {
            if (item.stored !== undefined) offsetOf.set(item, String(OFFSET_BASE + ++position))
          }
          notified.forEach((item, i) => {
            const got = notifications[i]!
            assert.strictEqual(got.channel, item.channel)
            const offset = offsetOf.get(item)
            const withOffset = (text: string) =>
              offset === undefined ? text : Codec.splitAtOffsetPlaceholder(text).join(offset)
            const encoded = item.encoded!
            if (encoded._tag === "Inline") {
              assert.strictEqual(got.payload, withOffset(encoded.payload))
              return
            }
            assert.strictEqual(encoded._tag, "Attachment")
            if (encoded._tag !== "Attachment") return
            const header = JSON.parse(got.payload) as { attachmentId: string; offset?: string }
            assert.deepStrictEqual(rows.get(header.attachmentId), Buffer.from(encoded.bytes))
            assert.strictEqual(got.payload, withOffset(encoded.header(header.attachmentId)))
          })
          // Every row inserted belongs to one notification.
          assert.strictEqual(
            rows.size,
            notified.filter((item) => item.encoded!._tag === "Attachment").length,
          )
          // The stored packets' SQL got this run's packets, in order.
          const storedRows = run.flatMap((item) => (item.stored === undefined ? [] : [item.stored]))
          assert.deepStrictEqual(storedRuns[0]?.rows ?? [], storedRows)
        }
      }),
    )
  })

  it("never notifies the same (channel, payload) pair twice in one statement", () => {
    fc.assert(
      fc.property(items, (all) => {
        for (const run of splitRuns(all)) {
          const [sql, params] = build([])(run)
          const keys = evaluate(sql, params).notifications.map((n) => pair(n.channel, n.payload))
          assert.strictEqual(new Set(keys).size, keys.length)
        }
      }),
    )
  })

  it("tells the stored packets' SQL the position of the last notified packet", () => {
    fc.assert(
      fc.property(fc.array(stored, { minLength: 1, maxLength: 10 }), (packets) => {
        const run = packets.map((item) => ({ ...item, stored: { ...item.stored!, nsp: "/" } }))
        const storedRuns: Array<StoredRun> = []
        build(storedRuns)(run)
        const notified = run.map((item, i) => (item.encoded === undefined ? 0 : i + 1))
        assert.strictEqual(storedRuns[0]!.lastNotified, Math.max(0, ...notified))
        assert.strictEqual(storedRuns[0]!.nsp, "/")
      }),
    )
  })

  it.runIf(scripts)(
    "sends a run that only notifies as NOTIFY statements with no parameters, every channel and payload quoted",
    () => {
      const tricky = ["it's", 'say "hi"', "back\\slash", "E'x'; DROP TABLE t; --", "$$", "é€😀"]
      const run = tricky.map((text, i) => ({
        channel: `${text}${i}`,
        encoded: Codec.encode(message([text]), 8000),
        stored: undefined,
      }))
      const [sql, params] = build([])(run)
      assert.deepStrictEqual(params, [])
      assert.strictEqual(sql.split("; NOTIFY ").length, tricky.length + 1)
      assert.deepStrictEqual(
        notificationsOfScript(sql, ASYNC_COMMIT),
        run.map((item) => ({
          channel: item.channel,
          payload: (item.encoded as { payload: string }).payload,
        })),
      )
    },
  )

  it.runIf(!scripts)(
    "sends a run of inline messages as the same statement text for the same length",
    () => {
      const run = (word: string) =>
        Array.from({ length: 3 }, (_, i) => ({
          channel: `c${i}`,
          encoded: Codec.encode(message([word]), 8000),
          stored: undefined,
        }))
      const [a] = build([])(run("x"))
      const [b] = build([])(run("y"))
      assert.strictEqual(a, b)
      assert.strictEqual(
        a,
        `SELECT ${ASYNC_COMMIT_CALL}, pg_notify($1, $2), pg_notify($3, $4), pg_notify($5, $6)`,
      )
    },
  )

  it("commits asynchronously exactly the statements that write no row", () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(inline, parts, attachment, stored), { maxLength: 20 }),
        (all) => {
          for (const run of splitRuns(all)) {
            const [sql] = build([])(run)
            const writes = run.some(
              (item) => item.stored !== undefined || item.encoded?._tag === "Attachment",
            )
            // Notify-only: the commit does not wait for the WAL flush; rows keep the server's
            // synchronous_commit (a crash must not lose what a listener was told of).
            const start = scripts ? `${ASYNC_COMMIT}; ` : `SELECT ${ASYNC_COMMIT_CALL}, `
            assert.strictEqual(sql.startsWith(start), !writes, sql)
            assert.strictEqual(sql.includes("synchronous_commit"), !writes, sql)
          }
        },
      ),
    )
  })
})

/** A packed message too long for one notification: several parts. */
const parts: fc.Arbitrary<Outgoing> = fc
  .record({ channel, length: fc.integer({ min: 8_000, max: 20_000 }), word })
  .map(({ channel, length, word }) => ({
    channel,
    encoded: Codec.encode(message([word.repeat(length / word.length)]), 8000, 72, 1),
    stored: undefined,
  }))

const withParts = fc.array(fc.oneof(inline, inline, parts, attachment, stored), { maxLength: 40 })

/** The notifications of a run as the statement sends them, attachment headers with a made-up id. */
const payloadsOf = (run: ReadonlyArray<Outgoing>) =>
  run.flatMap((item) => {
    const encoded = item.encoded
    if (encoded === undefined) return []
    const texts =
      encoded._tag === "Inline"
        ? [encoded.payload]
        : encoded._tag === "Parts"
          ? encoded.payloads
          : [encoded.header("1")]
    return texts.map((payload) => ({ channel: item.channel, payload, tag: encoded._tag }))
  })

describe("sealRun", () => {
  // Records each batch as `channel:count`, each payload prefixed with its batch's number.
  const recording = (max: number) => {
    const batches: Array<string> = []
    const sealer: RunSealer = {
      max,
      batch: (channel, payloads) => {
        batches.push(`${channel}:${payloads.length}`)
        return payloads.map((payload) => `${batches.length}|${payload}`)
      },
      attachment: (channel, encoded) => {
        batches.push(`${channel}:attachment`)
        const n = batches.length
        return { ...encoded, header: (id: string) => `${n}|${encoded.header(id)}` }
      },
    }
    return { batches, sealer }
  }

  it("signs each stretch of consecutive payloads of a channel as one batch of at most max, attachments alone", () => {
    fc.assert(
      fc.property(withParts, fc.integer({ min: 1, max: 5 }), (all, max) => {
        for (const run of splitRuns(all)) {
          const { batches, sealer } = recording(max)
          const sealed = sealRun(run, sealer)
          assert.strictEqual(sealed.length, run.length)
          const before = payloadsOf(run)
          const after = payloadsOf(sealed)
          assert.strictEqual(after.length, before.length)
          // Every payload kept, in order, on its channel, behind the number of its batch.
          const numbers = after.map((n, i) => {
            const [batch, ...rest] = n.payload.split("|")
            assert.strictEqual(rest.join("|"), before[i]!.payload)
            assert.strictEqual(n.channel, before[i]!.channel)
            return Number(batch)
          })
          // Batches are consecutive, of one channel, and as long as they may be.
          for (let i = 1; i < after.length; i++) {
            const same = numbers[i] === numbers[i - 1]
            assert.isTrue(numbers[i]! >= numbers[i - 1]!)
            const joinable =
              after[i]!.tag !== "Attachment" &&
              after[i - 1]!.tag !== "Attachment" &&
              after[i]!.channel === after[i - 1]!.channel
            if (same) assert.isTrue(joinable)
            else if (joinable) {
              const size = numbers.filter((n) => n === numbers[i - 1]).length
              assert.strictEqual(size, max, "a batch ended before its max without a reason")
            }
          }
          for (const batch of batches) {
            const [, count] = batch.split(":")
            if (count !== "attachment") assert.isAtMost(Number(count), max)
          }
          // The stored rows travel as they were.
          assert.deepStrictEqual(
            sealed.map((item) => item.stored),
            run.map((item) => item.stored),
          )
        }
      }),
      { numRuns: 60 },
    )
  })

  it("notifies, once verified per channel, exactly what the unsigned statement notifies, with no pair twice", () => {
    const k = new Signing.Keys([Buffer.from("a-secret-of-32-bytes-for-tests!!")])
    const build = makeStatement({
      scripts: true,
      attachmentsTable: `"att"`,
      storedPackets: fakeStored([]),
    })
    fc.assert(
      fc.property(withParts, (all) => {
        const sealer = sealerOf(new Signing.Signer(k))
        const verifiers = new Map<string, Signing.Verifier>()
        const rejected: Array<string> = []
        for (const run of splitRuns(all)) {
          const plain = evaluate(...build(run)).notifications
          const signed = evaluate(...build(sealRun(run, sealer))).notifications
          const keys = signed.map((n) => pair(n.channel, n.payload))
          assert.strictEqual(new Set(keys).size, keys.length)
          const delivered: Array<{ channel: string; payload: string }> = []
          for (const { channel, payload } of signed) {
            let verifier = verifiers.get(channel)
            if (verifier === undefined) {
              verifier = new Signing.Verifier(k, channel, 30_000, (reason) => rejected.push(reason))
              verifiers.set(channel, verifier)
            }
            verifier.take(payload, (body) => delivered.push({ channel, payload: body }))
          }
          // Per channel, in order (a channel's batches end where another channel's begin).
          assert.deepStrictEqual(delivered, plain)
        }
        assert.deepStrictEqual(rejected, [])
      }),
      { numRuns: 60 },
    )
  })
})

describe("storedOffsets", () => {
  it("gives a run's stored packets consecutive offsets ending at the counter's new value", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 50 }),
        fc.bigInt({ min: 50n, max: 2n ** 62n }),
        (count, last) => {
          const offsets = storedOffsets(count, String(last))
          assert.strictEqual(offsets.length, count)
          assert.strictEqual(offsets.at(-1), String(last))
          offsets.forEach((offset, i) =>
            assert.strictEqual(BigInt(offset), last - BigInt(count) + 1n + BigInt(i)),
          )
        },
      ),
    )
  })
})
