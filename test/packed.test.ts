/**
 * The packed wire (every node of the cluster is ours): a message that does not fit as JSON travels
 * as msgpack in base64 in the notification, in parts when it needs several, instead of through the
 * attachments table. Every part fits PostgreSQL's limit, parts join back to the same message, and
 * anything out of place is dropped with a reason, never delivered half.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Result from "effect/Result"
import * as fc from "fast-check"
import { randomBytes } from "node:crypto"
import { deflateRawSync } from "node:zlib"
import { MAX_NOTIFY_BYTES } from "../src/AdapterConfig.js"
import * as Codec from "../src/Codec.js"
import { MAX_SENDERS, PartsBuffer } from "../src/internal/parts.js"
import {
  ASYNC_COMMIT,
  makeStatement,
  type Outgoing,
  runCounts,
} from "../src/internal/statements.js"
import * as Signing from "../src/Signing.js"
import { success } from "./utils/results.js"
import { notificationsOfScript } from "./utils/sql.js"

const { MessageType } = Codec

const broadcast = (nsp: string, args: ReadonlyArray<unknown>): Codec.WireMessage => ({
  uid: "node-1",
  type: MessageType.BROADCAST,
  nsp,
  data: {
    opts: { rooms: [], except: [], flags: {} },
    packet: { type: 2, data: ["e", ...args], nsp },
  },
})

/** Decodes what `encode` gave, as a receiver does: one payload, or parts joined in order. */
const receive = (encoded: Codec.Encoded): Codec.WireMessage => {
  if (encoded._tag === "Attachment") return assert.fail("went through the table")
  if (encoded._tag === "Inline") {
    const notification = success(Codec.decodeNotification(encoded.payload))
    assert.strictEqual(notification._tag, "Inline")
    return (notification as { message: Codec.WireMessage }).message
  }
  const buffer = new PartsBuffer()
  let text: string | undefined
  encoded.payloads.forEach((payload, i) => {
    const part = success(Codec.decodeNotification(payload))
    assert.strictEqual(part._tag, "Part")
    const got = buffer.add(part as Codec.Part, (reason) => assert.fail(reason))
    if (i < encoded.payloads.length - 1) assert.isUndefined(got)
    else text = got
  })
  assert.strictEqual(buffer.size, 0)
  const part = success(Codec.decodeNotification(encoded.payloads[0]!)) as Codec.Part
  return success(Codec.unpack(text!, part))
}

const payloadsOf = (encoded: Codec.Encoded): ReadonlyArray<string> =>
  encoded._tag === "Inline"
    ? [encoded.payload]
    : encoded._tag === "Parts"
      ? encoded.payloads
      : assert.fail("went through the table")

/** A fetchSockets answer of node-2 with 200 sockets (about 30 KB of JSON). */
const answer: Codec.WireMessage = {
  uid: "node-2",
  type: MessageType.FETCH_SOCKETS_RESPONSE,
  nsp: "/",
  data: {
    requestId: "r-1",
    sockets: Array.from({ length: 200 }, (_, i) => ({
      id: `s${i}`,
      handshake: { headers: { "user-agent": "x".repeat(100) } },
      rooms: [],
    })),
  },
}

/** A stored broadcast in one notification, as received once PostgreSQL gave it offset 42. */
const receivedAt42 = (encoded: Codec.Encoded): unknown => {
  assert.strictEqual(encoded._tag, "Inline")
  const [before, after] = Codec.splitAtOffsetPlaceholder(payloadsOf(encoded)[0]!)
  const payload = `${before}42${after}`
  assert.strictEqual(Codec.storedOffsetOf(payload), "42")
  return (success(Codec.decodeNotification(payload)) as { message: unknown }).message
}

/** Namespaces with characters of every UTF-8 length. */
const nsp = fc.constantFrom("/", "/chat", "/é€😀", `/${"€".repeat(300)}`)

describe("Codec.encode, packed", () => {
  it("gives back an equal message, binary as Buffers, from one payload or parts of at most 7999 bytes (less the envelope when signed)", () => {
    fc.assert(
      fc.property(
        nsp,
        fc.integer({ min: 0, max: 60_000 }),
        fc.string({ maxLength: 30_000, unit: "binary" }),
        fc.boolean(),
        (nsp, size, text, signed) => {
          const bytes = Buffer.alloc(size, 7)
          const message = broadcast(nsp, [{ bytes, text }])
          const overhead = signed ? Signing.ENVELOPE_MAX_BYTES : 0
          const encoded = Codec.encode(message, 8000, overhead, 1)
          for (const payload of payloadsOf(encoded)) {
            assert.isAtMost(Buffer.byteLength(payload), MAX_NOTIFY_BYTES - overhead)
            // Own notifications are recognised by this prefix, unparsed.
            assert.isTrue(payload.startsWith(`{"uid":"node-1",`))
          }
          assert.deepStrictEqual(receive(encoded), message)
        },
      ),
      { numRuns: 60 },
    )
  })

  it("sends binary-free JSON too long for one notification as its own text in parts, cut between UTF-8 characters", () => {
    fc.assert(
      fc.property(
        nsp,
        fc.array(fc.constantFrom("a", "é", "€", "😀", '"', "\\", "\n", "\u2028"), {
          minLength: 2_000,
          maxLength: 12_000,
        }),
        fc.boolean(),
        (nsp, chars, signed) => {
          const message = broadcast(nsp, [chars.join(""), { n: chars.length }])
          const overhead = signed ? Signing.ENVELOPE_MAX_BYTES : 0
          const encoded = Codec.encode(message, 8000, overhead, 1)
          for (const payload of payloadsOf(encoded)) {
            assert.isAtMost(Buffer.byteLength(payload), MAX_NOTIFY_BYTES - overhead)
            assert.isFalse(payload.includes("\uFFFD"))
          }
          assert.deepStrictEqual(receive(encoded), message)
        },
      ),
      // Shrinking arrays of thousands of characters takes minutes: report the first failure.
      { numRuns: 40, endOnFailure: true },
    )
  })

  it("keeps JSON for what fits, and the table at wire 0 (0.5.0 reads neither packed form)", () => {
    const small = broadcast("/", [{ a: 1 }])
    assert.strictEqual(Codec.encode(small, 8000, 0, 1)._tag, "Inline")
    assert.isFalse(payloadsOf(Codec.encode(small, 8000, 0, 1))[0]!.includes('"mp"'))
    const binary = broadcast("/", [Buffer.alloc(10)])
    assert.strictEqual(Codec.encode(binary, 8000)._tag, "Attachment")
    assert.strictEqual(Codec.encode(binary, 8000, 0, 1)._tag, "Inline")
    const large = broadcast("/", ["x".repeat(20_000)])
    assert.strictEqual(Codec.encode(large, 8000)._tag, "Attachment")
    const parts = Codec.encode(large, 8000, 0, 1)
    assert.strictEqual(parts._tag, "Parts")
    // The JSON as it is, in 3 parts of at most 7999 bytes: no base64 for what has no binary.
    assert.strictEqual(payloadsOf(parts).length, 3)
  })

  it("puts a stored broadcast's offset last in one payload, or sends it through the table when it needs parts", () => {
    const stored = Codec.withOffsetPlaceholder(broadcast("/", [Buffer.alloc(100, 1)]))
    assert.deepStrictEqual(receivedAt42(Codec.encode(stored, 8000, 0, 1)), {
      ...broadcast("/", [Buffer.alloc(100, 1)]),
      offset: "42",
    })
    const big = Codec.withOffsetPlaceholder(broadcast("/", [Buffer.alloc(20_000, 1)]))
    assert.strictEqual(Codec.encode(big, 8000, 0, 1)._tag, "Attachment")
  })

  it("names the request an answer's parts belong to, so that other nodes skip them unjoined", () => {
    const encoded = Codec.encode(answer, 8000, 0, 1)
    assert.strictEqual(encoded._tag, "Parts")
    for (const payload of payloadsOf(encoded)) {
      const part = success(Codec.decodeNotification(payload)) as Codec.Part
      assert.strictEqual(part.requestId, "r-1")
      assert.strictEqual(part.type, MessageType.FETCH_SOCKETS_RESPONSE)
    }
    assert.deepStrictEqual(receive(encoded), answer)
  })

  it("rejects packed notifications that are not, with a reason, and never throws", () => {
    const bad = [
      `{"uid":"a","type":3,"mp":"***"}`,
      `{"uid":"a","type":3,"mp":"${Buffer.from("not msgpack at all").toString("base64")}"}`,
      `{"uid":"a","type":3,"mp":7}`,
      `{"uid":"a","type":3,"mid":"m","part":2,"parts":2,"enc":"j"}\n{}`,
      `{"uid":"a","type":3,"mid":"m","part":0,"parts":${Codec.MAX_PARTS + 1},"enc":"j"}\n{}`,
      `{"uid":"a","type":99,"mid":"m","part":0,"parts":2,"enc":"j"}\n{}`,
      `{"uid":"a","type":3,"mid":"","part":0,"parts":2,"enc":"j"}\n{}`,
      `{"uid":"a","type":3,"mid":"m","part":0,"parts":2,"enc":"x"}\n{}`,
      `{"uid":"a","type":3,"mid":"m","part":0,"parts":2,"enc":"m"}\n***`,
      `{"uid":"a","type":3,"mid":"m","part":0,"parts":2,"enc":"j"\n}`,
    ]
    for (const payload of bad)
      assert.isTrue(Result.isFailure(Codec.decodeNotification(payload)), payload)
    // A message of another uid than its header's (own-notification filtering relies on the header).
    const other = payloadsOf(Codec.encode(broadcast("/", [Buffer.alloc(3)]), 8000, 0, 1))[0]!
    const forged = other.replace('"uid":"node-1"', '"uid":"node-9"')
    assert.isTrue(Result.isFailure(Codec.decodeNotification(forged)))
  })
})

/** Structured JSON as applications send it: ~140 objects of 5 fields, about 20 KB. */
const structured = (seed: number) =>
  Array.from({ length: 140 }, (_, i) => ({
    id: seed * 1000 + i,
    name: `user number ${i}`,
    email: `user${i}@example.com`,
    score: (i * 7919) % 1000,
    tags: ["alpha", "beta", "gamma"],
  }))

describe("Codec.encode, deflated JSON (wire 2)", () => {
  it("gives back an equal message from one payload or parts of at most 7999 bytes (less the envelope when signed), whatever the JSON", () => {
    fc.assert(
      fc.property(
        nsp,
        fc.array(fc.jsonValue(), { minLength: 1, maxLength: 40 }),
        fc.string({ maxLength: 30_000, unit: "binary" }),
        fc.integer({ min: 0, max: 8000 }),
        fc.boolean(),
        (nsp, values, text, threshold, signed) => {
          // Through JSON: what a receiver can give back (no -0, no undefined).
          const message = JSON.parse(JSON.stringify(broadcast(nsp, [...values, text])))
          const overhead = signed ? Signing.ENVELOPE_MAX_BYTES : 0
          const encoded = Codec.encode(message, threshold, overhead, 2)
          for (const payload of payloadsOf(encoded)) {
            assert.isAtMost(Buffer.byteLength(payload), MAX_NOTIFY_BYTES - overhead)
            assert.isTrue(payload.startsWith(`{"uid":"node-1",`))
          }
          assert.deepStrictEqual(receive(encoded), message)
        },
      ),
      { numRuns: 80, endOnFailure: true },
    )
  })

  it("sends 20 KB of structured JSON, and a fetchSockets answer of 200 sockets, in one notification instead of parts", () => {
    const large = broadcast("/", [structured(1)])
    assert.isAbove(JSON.stringify(large).length, 15_000)
    assert.strictEqual(Codec.encode(large, 8000, 0, 1)._tag, "Parts")
    const one = Codec.encode(large, 8000, 0, 2)
    assert.strictEqual(one._tag, "Inline")
    assert.include(payloadsOf(one)[0]!, '"mz":"')
    assert.deepStrictEqual(receive(one), large)
    const encoded = Codec.encode(answer, 8000, 0, 2)
    assert.strictEqual(encoded._tag, "Inline")
    const notification = success(Codec.decodeNotification(payloadsOf(encoded)[0]!))
    assert.deepStrictEqual((notification as { message: unknown }).message, answer)
    // The header names the request unparsed, as for parts (other nodes skip it unjoined).
    assert.isTrue(
      payloadsOf(encoded)[0]!.startsWith('{"uid":"node-2","type":8,"nsp":"/","requestId":"r-1",'),
    )
  })

  it("keeps the JSON in parts when deflating would not shrink it (dense text)", () => {
    // 91 printable characters, none escaped in JSON: about 6.5 bits each, more once in base64.
    const alphabet = Array.from({ length: 92 }, (_, i) => String.fromCharCode(35 + i)).filter(
      (c) => c !== "\\",
    )
    const random = broadcast("/", [
      Array.from(randomBytes(20_000), (b) => alphabet[b % alphabet.length]).join(""),
    ])
    const encoded = Codec.encode(random, 8000, 0, 2)
    assert.strictEqual(encoded._tag, "Parts")
    for (const payload of payloadsOf(encoded)) assert.include(payload, '"enc":"j"')
    assert.deepStrictEqual(receive(encoded), random)
  })

  it("puts a stored broadcast's offset last, outside the deflated text, and it fits in one notification", () => {
    const message = broadcast("/", [structured(2)])
    const stored = Codec.withOffsetPlaceholder(message)
    assert.strictEqual(Codec.encode(stored, 8000, 0, 1)._tag, "Attachment")
    assert.deepStrictEqual(receivedAt42(Codec.encode(stored, 8000, 0, 2)), {
      ...message,
      offset: "42",
    })
  })

  it("packs a message above a low payloadThreshold that fits in one notification (one part), and receivers join it", () => {
    for (const wire of [1, 2] as const) {
      const message = broadcast("/", ["y".repeat(300), structured(3).slice(0, 2)])
      const encoded = Codec.encode(message, 100, 0, wire)
      assert.notStrictEqual(encoded._tag, "Attachment")
      assert.deepStrictEqual(receive(encoded), message)
    }
  })

  it("rejects deflated notifications that are not, and a deflate bomb, with a reason, never throwing", () => {
    const deflate = (text: string) => deflateRawSync(text).toString("base64")
    const bad = [
      `{"uid":"a","type":3,"mz":"***"}`,
      `{"uid":"a","type":3,"mz":"${Buffer.from("not deflated").toString("base64")}"}`,
      `{"uid":"a","type":3,"mz":"${deflate("not JSON")}"}`,
      `{"uid":"a","type":3,"mz":"${deflate('{"uid":"b","type":3}')}"}`,
      `{"uid":"a","type":3,"mz":"${deflate("[1]")}"}`,
      `{"uid":"a","type":3,"mz":7}`,
      `{"uid":"a","type":3,"mz":"${deflate('{"uid":"a","type":3}')}","mp":""}`,
      `{"uid":"a","type":3,"mid":"m","part":0,"parts":2,"enc":"z"}\n***`,
    ]
    for (const payload of bad)
      assert.isTrue(Result.isFailure(Codec.decodeNotification(payload)), payload)
    const good = `{"uid":"a","type":3,"mz":"${deflate('{"uid":"a","type":3}')}"}`
    assert.isTrue(Result.isSuccess(Codec.decodeNotification(good)))
    // 17 MB of spaces deflate to about 17 KB: the receiver stops at MAX_INFLATED_BYTES.
    const bomb = deflateRawSync(`{"uid":"a","type":3${" ".repeat(Codec.MAX_INFLATED_BYTES)}}`)
    assert.isBelow(bomb.length, 20_000)
    const unpacked = Codec.unpack(bomb.toString("base64"), { uid: "a", enc: "z" })
    assert.strictEqual(
      Result.isFailure(unpacked) && unpacked.failure,
      "packed message is not deflated JSON in base64",
    )
  })
})

describe("PartsBuffer", () => {
  const partsOf = (uid: string, size: number): Array<Codec.Part> => {
    const encoded = Codec.encode({ ...broadcast("/", ["y".repeat(size)]), uid }, 8000, 0, 1)
    return payloadsOf(encoded).map((p) => success(Codec.decodeNotification(p)) as Codec.Part)
  }

  it("drops a message whose parts come out of order, missing, or cut by the sender's next one, and delivers the next whole one", () => {
    const dropped: Array<string> = []
    const buffer = new PartsBuffer()
    const [a0, a1, a2] = partsOf("u", 20_000)
    const b = partsOf("u", 20_000)
    assert.isUndefined(buffer.add(a0!, (r) => dropped.push(r)))
    assert.isUndefined(buffer.add(a2!, (r) => dropped.push(r)))
    assert.strictEqual(dropped.length, 1)
    assert.isUndefined(buffer.add(a1!, (r) => dropped.push(r)))
    assert.strictEqual(dropped.length, 2)
    assert.isUndefined(buffer.add(a0!, (r) => dropped.push(r)))
    assert.isUndefined(buffer.add(b[0]!, (r) => dropped.push(r)))
    assert.strictEqual(dropped.length, 3)
    let whole: string | undefined
    for (const part of b.slice(1)) whole = buffer.add(part, (r) => dropped.push(r))
    assert.isString(whole)
    assert.strictEqual(dropped.length, 3)
    assert.strictEqual(buffer.size, 0)
  })

  it("gathers senders' messages side by side, and keeps at most MAX_SENDERS half gathered", () => {
    const buffer = new PartsBuffer()
    const x = partsOf("x", 10_000)
    const y = partsOf("y", 10_000)
    buffer.add(x[0]!, assert.fail)
    buffer.add(y[0]!, assert.fail)
    assert.isString(buffer.add(x[1]!, assert.fail))
    assert.isString(buffer.add(y[1]!, assert.fail))
    let dropped = 0
    for (let i = 0; i <= MAX_SENDERS; i++) {
      buffer.add({ ...x[0]!, uid: `s${i}` }, () => dropped++)
    }
    assert.strictEqual(buffer.size, MAX_SENDERS)
    assert.strictEqual(dropped, 1)
  })
})

describe("statements with packed parts", () => {
  const statement = makeStatement({
    scripts: true,
    attachmentsTable: '"t"',
    storedPackets: () => assert.fail("no stored packets here"),
  })
  const item = (encoded: Codec.Encoded): Outgoing => ({ channel: "c", encoded, stored: undefined })

  it("sends every part, in order, after what came before and before what comes after", () => {
    const parts = Codec.encode(broadcast("/", ["z".repeat(20_000)]), 8000, 0, 1)
    const small = Codec.encode(broadcast("/", [1]), 8000)
    const run = [item(small), item(parts), item(small)]
    const [sql, params] = statement(run)
    assert.deepStrictEqual(params, [])
    const payloads = notificationsOfScript(sql, ASYNC_COMMIT).map((n) => n.payload)
    assert.deepStrictEqual(payloads, [
      ...payloadsOf(small),
      ...payloadsOf(parts),
      ...payloadsOf(small),
    ])
    assert.strictEqual(runCounts(run).notified, payloads.length)
  })

  it("sends parts beside an attachment in one statement, in order", () => {
    const parts = Codec.encode(broadcast("/", ["z".repeat(20_000)]), 8000, 0, 1)
    const attachment = Codec.encode(broadcast("/", [Buffer.alloc(1)]), 8000)
    const [sql, params] = statement([item(attachment), item(parts)])
    assert.include(sql, "INSERT INTO")
    const texts = params.filter((p) => typeof p === "string" && p.includes('"mid"'))
    assert.deepStrictEqual(texts, [...payloadsOf(parts)])
    assert.isBelow(sql.indexOf("a[1]"), sql.lastIndexOf("pg_notify"))
  })
})
