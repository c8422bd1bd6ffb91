/**
 * The signature envelope and the replay window, as pure code: what a signer seals opens under the
 * same key on the same channel, and under nothing else; a changed byte anywhere fails; the numbers
 * PostgreSQL fills in are the only unsigned parts; a sequence number is accepted once. A batch
 * (one MAC for a statement's notifications on a channel) is delivered whole or not at all.
 */
import { assert, describe, it, vi } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Result from "effect/Result"
import * as fc from "fast-check"
import { inspect } from "node:util"
import * as AdapterConfig from "../src/AdapterConfig.js"
import * as Codec from "../src/Codec.js"
import type { ConfigError } from "../src/Errors.js"
import * as Signing from "../src/Signing.js"
import { makeRejectLogger } from "../src/internal/inbox.js"
import { ID_MARKER } from "../src/internal/statements.js"

const KEY_A = "a-secret-of-32-bytes-for-tests!!"
const KEY_B = "another-secret-of-32-bytes-here!"
const keys = (...secrets: Array<string>) =>
  new Signing.Keys(secrets.map((s) => Buffer.from(s, "utf8")))

// fast-check's arbitraries say more here than Schemas: it.prop takes only the latter.
const prop = <T extends Array<unknown>>(
  name: string,
  arbitraries: { [K in keyof T]: fc.Arbitrary<T[K]> },
  predicate: (values: T) => void,
) =>
  it(name, () => {
    fc.assert(
      fc.property(fc.tuple(...(arbitraries as Array<fc.Arbitrary<unknown>>)), (values) =>
        predicate(values as unknown as T),
      ),
    )
  })

const opened = (k: Signing.Keys, channel: string, payload: string) => {
  const result = Signing.open(k, channel, payload)
  if (Result.isFailure(result)) return assert.fail(`expected it to open: ${result.failure}`)
  return result.success
}

const failure = (k: Signing.Keys, channel: string, payload: string) => {
  const result = Signing.open(k, channel, payload)
  if (Result.isSuccess(result)) return assert.fail("expected it not to open")
  return result.failure
}

// JSON texts as the Codec makes them: any string data, nsp and uid.
const wire = fc
  .record({ uid: fc.string(), nsp: fc.string(), data: fc.string({ unit: "grapheme" }) })
  .map(({ uid, nsp, data }) => JSON.stringify({ uid, type: 3, nsp, data }))

describe("the signature envelope", () => {
  prop(
    "opens what it sealed, body intact, on the same channel",
    [wire, fc.string()],
    ([body, channel]) => {
      const signer = new Signing.Signer(keys(KEY_A))
      const payload = signer.seal(channel, body)
      const { body: back, envelope } = opened(signer.keys, channel, payload)
      assert.strictEqual(back, body)
      assert.strictEqual(envelope.sender, signer.sender)
      assert.isTrue(
        Buffer.byteLength(payload) - Buffer.byteLength(body) <= Signing.ENVELOPE_MAX_BYTES,
      )
    },
  )

  prop(
    "fails on another channel, another key, and any changed character",
    [wire, fc.nat()],
    ([body, at]) => {
      const signer = new Signing.Signer(keys(KEY_A))
      const payload = signer.seal("c", body)
      failure(signer.keys, "d", payload)
      failure(keys(KEY_B), "c", payload)
      const i = at % payload.length
      const changed = payload.slice(0, i) + (payload[i] === "x" ? "y" : "x") + payload.slice(i + 1)
      failure(signer.keys, "c", changed)
    },
  )

  it("fails an unsigned payload and a truncated envelope, with reasons that quote no payload", () => {
    const k = keys(KEY_A)
    const body = JSON.stringify({ uid: "x", type: 3, nsp: "/", data: "SECRET-TEXT" })
    assert.strictEqual(failure(k, "c", body), "unsigned notification")
    const sealed = new Signing.Signer(k).seal("c", body)
    // The MAC's last base64url character has 4 unused bits: no second spelling opens.
    const end = sealed.indexOf(":{")
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    const spellings = [...alphabet].filter((ch) =>
      Result.isSuccess(Signing.open(k, "c", sealed.slice(0, end - 1) + ch + sealed.slice(end))),
    )
    assert.deepStrictEqual(spellings, [sealed[end - 1]])
    for (const cut of [3, 10, 30, 50]) {
      assert.notInclude(failure(k, "c", sealed.slice(0, cut)), "SECRET")
    }
  })

  it("verifies with any of the keys and signs with the first (rotation)", () => {
    const oldFirst = new Signing.Signer(keys(KEY_A, KEY_B)).seal("c", "{}")
    const newFirst = new Signing.Signer(keys(KEY_B, KEY_A)).seal("c", "{}")
    for (const payload of [oldFirst, newFirst]) {
      opened(keys(KEY_A, KEY_B), "c", payload)
      opened(keys(KEY_B, KEY_A), "c", payload)
    }
    opened(keys(KEY_A), "c", oldFirst)
    failure(keys(KEY_A), "c", newFirst)
    opened(keys(KEY_B), "c", newFirst)
  })

  prop(
    "leaves only a stored packet's offset unsigned, whatever offset PostgreSQL gives",
    [fc.bigInt({ min: 1n, max: 2n ** 63n - 1n }), fc.string()],
    ([offset, data]) => {
      const signer = new Signing.Signer(keys(KEY_A))
      const encoded = Codec.encode(
        Codec.withOffsetPlaceholder({ uid: "u", type: 3, nsp: "/", data }),
        7999,
      )
      assert.strictEqual(encoded._tag, "Inline")
      const sealed = signer.seal("c", (encoded as { payload: string }).payload)
      const [before, after] = Codec.splitAtOffsetPlaceholder(sealed)
      const { body } = opened(signer.keys, "c", `${before}${offset}${after}`)
      assert.strictEqual(Codec.storedOffsetOf(body), String(offset))
    },
  )

  prop(
    "binds an attachment row to its header: the row id is the header's only unsigned part",
    [fc.bigInt({ min: 1n, max: 2n ** 63n - 1n }), fc.uint8Array({ minLength: 1 })],
    ([id, blob]) => {
      const signer = new Signing.Signer(keys(KEY_A))
      const encoded = Codec.encode({ uid: "u", type: 3, nsp: "/", data: Buffer.from(blob) }, 7999)
      if (encoded._tag !== "Attachment") return assert.fail("expected an attachment")
      const sealed = signer.sealAttachment("c", encoded.bytes, encoded.header)
      // The statement builder asks for the header with the marker, then splices the id in.
      const text = sealed.header(ID_MARKER)
      const at = text.lastIndexOf(ID_MARKER)
      const header = text.slice(0, at) + String(id) + text.slice(at + ID_MARKER.length)
      const { envelope, body } = opened(signer.keys, "c", header)
      assert.strictEqual(JSON.parse(body).attachmentId, String(id))
      const row = Signing.openRow(signer.keys, envelope, "c", sealed.bytes)
      assert.isTrue(Result.isSuccess(row))
      assert.deepStrictEqual(Buffer.from(Result.getOrThrow(row)), Buffer.from(encoded.bytes))
      // The row of another attachment of the same sender does not fit this header.
      const other = signer.sealAttachment("c", encoded.bytes, encoded.header)
      assert.isTrue(Result.isFailure(Signing.openRow(signer.keys, envelope, "c", other.bytes)))
      // Nor unsigned bytes, nor a flipped bit.
      assert.isTrue(Result.isFailure(Signing.openRow(signer.keys, envelope, "c", encoded.bytes)))
      const flipped = Buffer.from(sealed.bytes)
      flipped[flipped.length - 1]! ^= 1
      assert.isTrue(Result.isFailure(Signing.openRow(signer.keys, envelope, "c", flipped)))
    },
  )
})

/** A verifier of channel "c" that records what it delivers and what it rejects, with how many. */
const receiver = (k: Signing.Keys = keys(KEY_A), own?: Signing.Own) => {
  const delivered: Array<string> = []
  const rejected: Array<{ reason: string; count: number }> = []
  const verifier = new Signing.Verifier(
    k,
    "c",
    30_000,
    (reason, count = 1) => rejected.push({ reason, count }),
    Date.now,
    own,
  )
  const take = (...payloads: ReadonlyArray<string>) => {
    for (const payload of payloads) verifier.take(payload, (body) => delivered.push(body))
  }
  const dropped = () => rejected.reduce((n, r) => n + r.count, 0)
  return { verifier, take, delivered, rejected, dropped }
}

/** `n` distinct messages, as the Codec writes them. */
const texts = (n: number, tag = "m") =>
  Array.from({ length: n }, (_, i) =>
    JSON.stringify({ uid: "u", type: 3, nsp: "/", data: [`${tag}-${i}`] }),
  )

describe("batches (one MAC for a statement's notifications on a channel)", () => {
  prop(
    "delivers a batch whole, in order, when its last notification comes, and nothing before",
    [fc.array(wire, { minLength: 1, maxLength: Signing.MAX_BATCH })],
    ([bodies]) => {
      const signer = new Signing.Signer(keys(KEY_A))
      const sealed = signer.sealBatch("c", bodies)
      assert.strictEqual(sealed.length, bodies.length)
      const r = receiver()
      sealed.forEach((payload, i) => {
        assert.strictEqual(r.delivered.length, 0, "delivered before the batch was complete")
        r.take(payload)
        const room = i === 0 ? Signing.ENVELOPE_MAX_BYTES : 3
        assert.isAtMost(Buffer.byteLength(payload) - Buffer.byteLength(bodies[i]!), room)
      })
      assert.deepStrictEqual(r.delivered, bodies)
      assert.deepStrictEqual(r.rejected, [])
      assert.strictEqual(r.verifier.gathering, 0)
    },
  )

  it("seals a batch of one as before (S1), delivered at once", () => {
    const [payload] = new Signing.Signer(keys(KEY_A)).sealBatch("c", texts(1))
    assert.isTrue(payload!.startsWith("S1:"))
    const r = receiver()
    r.take(payload!)
    assert.deepStrictEqual(r.delivered, texts(1))
  })

  it("drops a replayed whole batch, counting each of its notifications", () => {
    const sealed = new Signing.Signer(keys(KEY_A)).sealBatch("c", texts(5))
    const r = receiver()
    r.take(...sealed)
    assert.strictEqual(r.delivered.length, 5)
    r.take(...sealed)
    assert.strictEqual(r.delivered.length, 5)
    assert.deepStrictEqual(r.rejected, [{ reason: "replayed", count: 5 }])
  })

  it("drops a replayed part of a batch: its start alone, or notifications that continue it", () => {
    const signer = new Signing.Signer(keys(KEY_A))
    const first = signer.sealBatch("c", texts(4, "a"))
    const next = signer.sealBatch("c", texts(3, "b"))
    const r = receiver()
    r.take(...first)
    // Its start alone: gathered, never delivered; the next batch's start discards it.
    r.take(first[0]!)
    assert.strictEqual(r.delivered.length, 4)
    assert.strictEqual(r.verifier.gathering, 1)
    r.take(...next)
    assert.deepStrictEqual(r.delivered, [...texts(4, "a"), ...texts(3, "b")])
    // Its middle alone: continues nothing.
    r.take(first[1]!, first[2]!)
    assert.strictEqual(r.delivered.length, 7)
    assert.deepStrictEqual(
      r.rejected.map((x) => x.reason),
      [
        "a batch of 4 ended after 1 (one lost, or forged)",
        "continues no batch",
        "continues no batch",
      ],
    )
  })

  it("drops a batch with a notification missing, and delivers the next one", () => {
    for (const missing of [1, 2, 3]) {
      const signer = new Signing.Signer(keys(KEY_A))
      const batch = signer.sealBatch("c", texts(4, "a"))
      const next = signer.sealBatch("c", texts(2, "b"))
      const r = receiver()
      r.take(...batch.filter((_, i) => i !== missing), ...next)
      assert.deepStrictEqual(r.delivered, texts(2, "b"))
      assert.strictEqual(r.dropped(), 3)
    }
  })

  it("drops a batch whose notifications were reordered, or spliced from another batch", () => {
    const signer = new Signing.Signer(keys(KEY_A))
    const a = signer.sealBatch("c", texts(4, "a"))
    const b = signer.sealBatch("c", texts(4, "b"))
    const r = receiver()
    r.take(a[0]!, a[2]!, a[1]!, a[3]!)
    r.take(b[0]!, b[1]!, a[2]!, b[3]!)
    assert.deepStrictEqual(r.delivered, [])
    assert.deepStrictEqual(
      r.rejected.map((x) => [x.reason, x.count]),
      [
        ["bad signature (altered, forged, or signed with another key)", 4],
        ["bad signature (altered, forged, or signed with another key)", 4],
      ],
    )
  })

  it("drops a batch altered anywhere: a body, its count, its channel, or its key", () => {
    const a = new Signing.Signer(keys(KEY_A)).sealBatch("c", texts(3))
    const r = receiver()
    r.take(a[0]!, a[1]!.replace("m-1", "m-X"), a[2]!)
    // One more notification, the count raised to match.
    const head = a[0]!.split(":")
    const more = [[...head.slice(0, 4), "4", ...head.slice(5)].join(":"), a[1]!, a[2]!, a[2]!]
    r.take(...more)
    const other = receiver(keys(KEY_B))
    other.take(...a)
    const elsewhere = new Signing.Verifier(keys(KEY_A), "d", 30_000, () => {})
    const got: Array<string> = []
    for (const p of a) elsewhere.take(p, (body) => got.push(body))
    assert.deepStrictEqual([r.delivered, other.delivered, got], [[], [], []])
    // 3 altered, 4 with the raised count, 3 under another key.
    assert.deepStrictEqual([r.dropped(), other.dropped()], [7, 3])
  })

  it("never lets a forged notification of its own transaction break a genuine batch", () => {
    const signer = new Signing.Signer(keys(KEY_A))
    const genuine = signer.sealBatch("c", texts(3, "g"))
    const later = signer.sealBatch("c", texts(2, "h"))
    const forger = new Signing.Signer(keys(KEY_B))
    const forged = forger.sealBatch("c", texts(5, "f"))
    const r = receiver()
    // Before a batch: a forged start that leaves its batch open, and forged continuations.
    r.take(forged[0]!, forged[1]!, "S+:" + texts(1, "x")[0])
    r.take(...genuine)
    // After it: continuations claiming to extend it, an unsigned message, a forged batch.
    r.take("S+:" + texts(1, "y")[0], texts(1, "z")[0]!, ...forged)
    r.take(...later)
    assert.deepStrictEqual(r.delivered, [...texts(3, "g"), ...texts(2, "h")])
    assert.isTrue(r.rejected.length >= 4)
  })

  it("verifies a batch with any of the keys (rotation)", () => {
    const a = new Signing.Signer(keys(KEY_A, KEY_B)).sealBatch("c", texts(3))
    const r = receiver(keys(KEY_B, KEY_A))
    r.take(...a)
    assert.deepStrictEqual(r.delivered, texts(3))
  })

  it("skips the node's own batches unchecked, or tells `seen` each authentic one", () => {
    const signer = new Signing.Signer(keys(KEY_A))
    const own = signer.sealBatch("c", texts(3, "o"))
    const alone = signer.sealBatch("c", texts(1, "p"))
    const quiet = receiver(keys(KEY_A), { sender: signer.sender })
    quiet.take(...own, ...alone)
    assert.deepStrictEqual([quiet.delivered, quiet.rejected], [[], []])
    const seen: Array<string> = []
    const watching = receiver(keys(KEY_A), { sender: signer.sender, seen: (b) => seen.push(b) })
    watching.take(...own, ...alone)
    // Our sender id with another key's MAC: not ours.
    const impostor = new Signing.Signer(keys(KEY_B)) as { sender: string }
    Object.defineProperty(impostor, "sender", { value: signer.sender })
    watching.take(...(impostor as Signing.Signer).sealBatch("c", texts(2, "i")))
    assert.deepStrictEqual(seen, [...texts(3, "o"), ...texts(1, "p")])
    assert.deepStrictEqual(watching.delivered, [])
  })

  it("refuses a count above the most a receiver holds, or below two", () => {
    const [first] = new Signing.Signer(keys(KEY_A)).sealBatch("c", texts(2))
    const r = receiver()
    for (const count of [Signing.MAX_BATCH + 1, 1, 0]) {
      const head = first!.split(":")
      r.take([...head.slice(0, 4), count.toString(36), ...head.slice(5)].join(":"))
      assert.strictEqual(r.verifier.gathering, 0)
    }
    assert.deepStrictEqual(
      r.rejected.map((x) => x.reason),
      Array(3).fill("malformed signature envelope"),
    )
  })
})

describe("signed recovery rows", () => {
  it("open with the same domain, fields and key, and with nothing else", () => {
    const k = keys(KEY_A, KEY_B)
    const bytes = Buffer.from([1, 2, 3])
    const fields = ["pid", "/", "sid", ["room"]]
    const row = Signing.sealRecord(k, Signing.SESSION, fields, bytes)
    assert.deepStrictEqual(Buffer.from(Signing.openRecord(k, Signing.SESSION, fields, row)!), bytes)
    assert.isDefined(Signing.openRecord(keys(KEY_B, KEY_A), Signing.SESSION, fields, row))
    assert.isUndefined(Signing.openRecord(keys(KEY_B), Signing.SESSION, fields, row))
    assert.isUndefined(Signing.openRecord(k, Signing.PACKET, fields, row))
    assert.isUndefined(
      Signing.openRecord(k, Signing.SESSION, ["pid", "/", "sid", ["room", "admin"]], row),
    )
    assert.isUndefined(Signing.openRecord(k, Signing.SESSION, fields, bytes))
  })
})

describe("the replay window", () => {
  prop(
    "accepts each sequence number at most once, in any order",
    [fc.array(fc.integer({ min: 1, max: 400 }), { maxLength: 300 })],
    ([seqs]) => {
      const window = new Signing.Window(1)
      const accepted = new Set<number>([1])
      for (const seq of seqs) {
        if (window.accept(seq)) {
          assert.isFalse(accepted.has(seq), `seq ${seq} accepted twice`)
          accepted.add(seq)
        }
      }
    },
  )

  prop(
    "accepts every number of an increasing sequence with gaps, once",
    [fc.array(fc.integer({ min: 1, max: 300 }), { maxLength: 200 })],
    ([gaps]) => {
      const window = new Signing.Window(1)
      let seq = 1
      for (const gap of gaps) {
        seq += gap
        assert.isTrue(window.accept(seq))
        assert.isFalse(window.accept(seq))
      }
    },
  )

  it("accepts late numbers within the window once, and refuses what is behind it or before the first", () => {
    const window = new Signing.Window(10)
    assert.isFalse(window.accept(10))
    assert.isFalse(window.accept(9))
    assert.isTrue(window.accept(12))
    assert.isTrue(window.accept(11))
    assert.isFalse(window.accept(11))
    assert.isTrue(window.accept(12 + Signing.WINDOW))
    assert.isFalse(window.accept(12))
  })

  it("refuses old and future timestamps, and a first contact signed before it started", () => {
    let now = 1_000_000
    const guard = new Signing.ReplayGuard(30_000, 2_000, () => now)
    const env = (sender: string, seq: number, ts: number) => ({ sender, seq, ts, head: "" })
    assert.match(guard.check(env("a", 1, now - 31_000))!, /too old/)
    assert.match(guard.check(env("a", 1, now + 31_000))!, /future/)
    assert.match(guard.check(env("a", 1, now - 5_000))!, /before this node listened/)
    assert.isUndefined(guard.check(env("a", 5, now - 1_000)))
    assert.strictEqual(guard.check(env("a", 5, now - 1_000)), "replayed")
    assert.strictEqual(guard.check(env("a", 4, now - 1_000)), "replayed")
    assert.isUndefined(guard.check(env("a", 6, now)))
  })

  it("forgets a silent sender after twice the maximum age, when its notifications are too old anyway", () => {
    let now = 1_000_000
    const guard = new Signing.ReplayGuard(30_000, 2_000, () => now)
    const env = (sender: string, seq: number, ts: number) => ({ sender, seq, ts, head: "" })
    assert.isUndefined(guard.check(env("a", 1, now)))
    const captured = env("a", 2, now)
    assert.isUndefined(guard.check(captured))
    now += 61_000
    assert.isUndefined(guard.check(env("b", 1, now)))
    assert.strictEqual(guard.size, 1)
    assert.match(guard.check(captured)!, /too old/)
  })
})

describe("the secret options", () => {
  const decodeLeft = (input: unknown) => {
    const result = AdapterConfig.decode(input)
    if (Result.isSuccess(result)) return assert.fail("expected a ConfigError")
    return result.failure
  }

  it("rejects short, mistyped or doubled secrets with a message naming the option, never the value", () => {
    const cases: Array<[unknown, string]> = [
      [{ secret: "short-secret" }, "secret"],
      [{ secret: 42 }, "secret"],
      [{ secrets: [] }, "secrets"],
      [{ secrets: [KEY_A, "short-secret"] }, "secrets"],
      [{ secrets: KEY_A }, "secrets"],
      [{ secret: KEY_A, secrets: [KEY_B] }, "secret"],
    ]
    for (const [input, option] of cases) {
      const error = decodeLeft(input)
      assert.strictEqual(error.option, option)
      assert.include(error.message, option)
      assert.notInclude(error.message, "short-secret")
      assert.notInclude(error.message, KEY_A)
    }
  })

  it("fails the Effect layer's AdapterConfig the same way, and builds it with a valid secret", () => {
    const build = (options: AdapterConfig.AdapterOptions) =>
      Effect.runSyncExit(Effect.scoped(Layer.build(AdapterConfig.layer(options))))
    const bad = build({ secret: "short-secret" })
    assert.isTrue(Exit.isFailure(bad))
    assert.include(String(Cause.squash((bad as Exit.Failure<never, ConfigError>).cause)), "secret")
    assert.isTrue(Exit.isSuccess(build({ secrets: [KEY_A, KEY_B] })))
  })

  it("keeps the secrets redacted: printing the config or the keys shows no key material", () => {
    const config = Result.getOrThrow(AdapterConfig.decode({ secrets: [KEY_A, Buffer.from(KEY_B)] }))
    assert.strictEqual(Redacted.value(config.secrets!).length, 2)
    const printed = [
      JSON.stringify(config),
      inspect(config, { depth: 10 }),
      String(config.secrets),
      inspect(AdapterConfig.keysOf(config), { depth: 10 }),
      JSON.stringify(AdapterConfig.keysOf(config)),
    ].join("\n")
    for (const secret of [KEY_A, KEY_B, Buffer.from(KEY_A).toString("hex")]) {
      assert.notInclude(printed, secret)
    }
    assert.isUndefined(Result.getOrThrow(AdapterConfig.decode({})).secrets)
  })
})

describe("the reject logger", () => {
  it("logs at most one line a second, with the channel, a count and the reason, never a payload", () => {
    vi.useFakeTimers({ now: 1_000_000 })
    try {
      const lines: Array<string> = []
      const reject = makeRejectLogger((line) => lines.push(line), 'socket.io#/"chat"')
      const verifier = new Signing.Verifier(keys(KEY_A), "c", 30_000, reject)
      const payload = JSON.stringify({ uid: "x", type: 3, nsp: "/", data: "SECRET-TEXT" })
      for (let i = 0; i < 5; i++) assert.isUndefined(verifier.open(payload))
      assert.strictEqual(lines.length, 1)
      vi.advanceTimersByTime(1000)
      assert.isUndefined(verifier.open(payload))
      assert.strictEqual(lines.length, 2)
      assert.include(lines[1]!, JSON.stringify('socket.io#/"chat"'))
      assert.include(lines[1]!, "dropped 5 notification(s)")
      assert.include(lines[1]!, "unsigned notification")
      for (const line of lines) assert.notInclude(line, "SECRET")
    } finally {
      vi.useRealTimers()
    }
  })
})
