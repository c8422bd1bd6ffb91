/**
 * The wire format as a specification: when a message travels inline or as an attachment, that both
 * paths give back the same shape, and that nothing a peer can send makes the decoders throw.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Result from "effect/Result"
import * as fc from "fast-check"
import * as Codec from "../src/Codec.js"
import { MAX_NOTIFY_BYTES } from "../src/AdapterConfig.js"
import {
  failure,
  jsonValue as jsonValueOf,
  success,
  wireJsonValue as wireJsonValueOf,
} from "./utils/results.js"

type Attachment = Extract<Codec.Encoded, { _tag: "Attachment" }>
type AttachmentHeader = Extract<Codec.Notification, { _tag: "Attachment" }>

const { MessageType } = Codec

/** Characters of every UTF-8 length: 1, 2, 3 and 4 bytes (the last is two UTF-16 units). */
const CHARS = ["a", "é", "€", "😀"] as const

/**
 * A BROADCAST whose JSON is exactly `bytes` bytes: the padding repeats `pattern` while it fits,
 * then fills the rest with ASCII, so its string length differs from its byte length.
 */
const messageOfBytes = (bytes: number, pattern: ReadonlyArray<string>): Codec.WireMessage => {
  const make = (pad: string): Codec.WireMessage => ({
    uid: "node-1",
    type: MessageType.BROADCAST,
    nsp: "/",
    data: { opts: { rooms: [], except: [], flags: {} }, packet: { type: 2, data: ["e", pad] } },
  })
  let budget = bytes - Buffer.byteLength(JSON.stringify(make("")))
  let pad = ""
  for (let i = 0; pattern.length > 0 && budget > 0; i = (i + 1) % pattern.length) {
    const char = pattern[i]!
    const size = Buffer.byteLength(char)
    if (size > budget) break
    pad += char
    budget -= size
  }
  const message = make(pad + "a".repeat(Math.max(0, budget)))
  assert.strictEqual(Buffer.byteLength(JSON.stringify(message)), bytes)
  return message
}

const expectInline = (encoded: Codec.Encoded): Extract<Codec.Encoded, { _tag: "Inline" }> => {
  assert.strictEqual(encoded._tag, "Inline")
  return encoded as Extract<Codec.Encoded, { _tag: "Inline" }>
}

const expectAttachment = (
  encoded: Codec.Encoded,
): Extract<Codec.Encoded, { _tag: "Attachment" }> => {
  assert.strictEqual(encoded._tag, "Attachment")
  return encoded as Extract<Codec.Encoded, { _tag: "Attachment" }>
}

/** JSON values, including nested arrays and objects, with unicode strings. */
const jsonValue = jsonValueOf(3)
const wireJsonValue = wireJsonValueOf(3)

/** The binary kinds a Socket.IO user may send, each holding `bytes`. */
const binaryOf = (bytes: Uint8Array, kind: number): unknown => {
  const copy = new Uint8Array(bytes)
  switch (kind) {
    case 0:
      return Buffer.from(copy)
    case 1:
      return copy.buffer
    case 2:
      return copy
    case 3:
      return new Float32Array(copy.buffer.slice(0, copy.byteLength - (copy.byteLength % 4)))
    default:
      return new DataView(copy.buffer)
  }
}

/** `value` with `leaf` put somewhere inside it, at any depth (arrays and objects). */
const nestIn = (path: ReadonlyArray<boolean>, leaf: unknown): unknown =>
  path.reduceRight<unknown>((inner, asArray) => (asArray ? [1, inner] : { x: "y", inner }), leaf)

describe("Codec.encode routing by size", () => {
  it("sends a message inline iff its JSON is at most min(threshold, 7999) bytes, for 7990..8010 bytes of 1 to 4-byte characters", () => {
    for (const char of CHARS) {
      for (let bytes = 7990; bytes <= 8010; bytes++) {
        const message = messageOfBytes(bytes, [char])
        for (const threshold of [
          0,
          7989,
          7998,
          7999,
          8000,
          8001,
          9000,
          bytes - 1,
          bytes,
          bytes + 1,
        ]) {
          const encoded = Codec.encode(message, threshold)
          const inline = bytes <= Math.min(threshold, MAX_NOTIFY_BYTES)
          assert.strictEqual(
            encoded._tag,
            inline ? "Inline" : "Attachment",
            `${char} ${bytes} ${threshold}`,
          )
          if (inline) assert.strictEqual(expectInline(encoded).payload, JSON.stringify(message))
        }
      }
    }
  })

  it("never sends 8000 bytes or more inline, even with a threshold above the limit", () => {
    for (const char of CHARS) {
      assert.strictEqual(Codec.encode(messageOfBytes(7999, [char]), 100_000)._tag, "Inline")
      assert.strictEqual(Codec.encode(messageOfBytes(8000, [char]), 100_000)._tag, "Attachment")
    }
  })

  it("routes by byte length, not string length, for mixed multi-byte text near the limit", () => {
    fc.assert(
      fc.property(
        fc.record({
          bytes: fc.integer({ min: 7900, max: 8100 }),
          pattern: fc.array(fc.constantFrom(...CHARS), { minLength: 1, maxLength: 8 }),
          threshold: fc.oneof(
            fc.integer({ min: 7900, max: 8100 }),
            fc.integer({ min: 0, max: 100_000 }),
            fc.constantFrom(7999, 8000),
          ),
        }),
        ({ bytes, pattern, threshold }) => {
          const message = messageOfBytes(bytes, pattern)
          const encoded = Codec.encode(message, threshold)
          assert.strictEqual(
            encoded._tag,
            bytes <= Math.min(threshold, MAX_NOTIFY_BYTES) ? "Inline" : "Attachment",
          )
        },
      ),
    )
  })

  it("sends any binary-free message inline iff its JSON fits, and the payload decodes back to it", () => {
    fc.assert(
      fc.property(
        fc.record({
          uid: fc.string({ maxLength: 20 }),
          type: fc.integer({ min: 1, max: 13 }),
          nsp: fc.string({ unit: "binary", maxLength: 30 }),
          data: jsonValue,
          threshold: fc.integer({ min: 0, max: 9000 }),
        }),
        ({ uid, type, nsp, data, threshold }) => {
          const message: Codec.WireMessage = { uid, type, nsp, data }
          const json = JSON.stringify(message)
          const encoded = Codec.encode(message, threshold)
          if (Buffer.byteLength(json) > Math.min(threshold, MAX_NOTIFY_BYTES)) {
            expectAttachment(encoded)
            return
          }
          const payload = expectInline(encoded).payload
          assert.strictEqual(payload, json)
          const decoded = success(Codec.decodeNotification(payload))
          assert.strictEqual(decoded._tag, "Inline")
          assert.deepStrictEqual(
            (decoded as Extract<Codec.Notification, { _tag: "Inline" }>).message,
            JSON.parse(json),
          )
        },
      ),
    )
  })
})

describe("Codec.encode with binary data", () => {
  it("recognises every binary kind: Buffer, ArrayBuffer, Uint8Array, Float32Array, DataView", () => {
    const bytes = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8])
    for (let kind = 0; kind < 5; kind++) {
      assert.isTrue(Codec.hasBinary({ data: [binaryOf(bytes, kind)] }), `kind ${kind}`)
    }
    assert.isFalse(Codec.hasBinary({ data: [1, "two", { three: null }] }))
  })

  it("does not loop on cyclic values", () => {
    const cyclic: Record<string, unknown> = { a: 1 }
    cyclic.self = cyclic
    assert.isFalse(Codec.hasBinary(cyclic))
    cyclic.buffer = Buffer.from("x")
    assert.isTrue(Codec.hasBinary(cyclic))
  })

  it("finds binary deeper than where it starts guarding against cycles, and cycles that start deep", () => {
    const nest = (depth: number, leaf: unknown): unknown =>
      depth === 0 ? leaf : depth % 2 === 0 ? [nest(depth - 1, leaf)] : { in: nest(depth - 1, leaf) }
    assert.isTrue(Codec.hasBinary(nest(100, new Uint8Array([1]))))
    assert.isFalse(Codec.hasBinary(nest(100, "text")))
    const ring: Array<unknown> = []
    ring.push(nest(50, ring))
    assert.isFalse(Codec.hasBinary(nest(50, ring)))
    ring.push(Buffer.from("x"))
    assert.isTrue(Codec.hasBinary(nest(50, ring)))
  })

  it("sends a message holding binary at any depth, in any message type, as an attachment, whatever the threshold", () => {
    fc.assert(
      fc.property(
        fc.record({
          type: fc.integer({ min: 1, max: 13 }),
          bytes: fc.uint8Array({ maxLength: 64 }),
          kind: fc.integer({ min: 0, max: 4 }),
          path: fc.array(fc.boolean(), { maxLength: 6 }),
          threshold: fc.integer({ min: 0, max: 100_000 }),
        }),
        ({ type, bytes, kind, path, threshold }) => {
          const message: Codec.WireMessage = {
            uid: "node-1",
            type,
            nsp: "/",
            data: nestIn(path, binaryOf(bytes, kind)),
          }
          const attachment = expectAttachment(Codec.encode(message, threshold))
          assert.isAbove(attachment.bytes.byteLength, 0)
        },
      ),
    )
  })

  it("gives back an equal message from the attachment bytes, binary values as Buffers", () => {
    fc.assert(
      fc.property(
        fc.record({
          type: fc.integer({ min: 1, max: 13 }),
          bytes: fc.uint8Array({ maxLength: 64 }),
          path: fc.array(fc.boolean(), { maxLength: 6 }),
          // A `__proto__` key is refused at encode time (see the test below).
          // -0 becomes 0 on the wire (as through JSON): generate what JSON gives back.
          extra: jsonValue
            .filter((value) => !JSON.stringify(value ?? null).includes('"__proto__"'))
            .map((value) => (value === undefined ? value : JSON.parse(JSON.stringify(value)))),
        }),
        ({ type, bytes, path, extra }) => {
          const buffer = Buffer.from(bytes)
          const message: Codec.WireMessage = {
            uid: "node-1",
            type,
            nsp: "/chat",
            data: { extra, binary: nestIn(path, buffer) },
          }
          const attachment = expectAttachment(Codec.encode(message, 8000))
          const decoded = success(Codec.decodeAttachment(attachment.bytes))
          assert.deepStrictEqual(decoded, message)
          let found: unknown = (decoded.data as { binary: unknown }).binary
          for (const asArray of path)
            found = asArray ? (found as Array<unknown>)[1] : (found as { inner: unknown }).inner
          assert.isTrue(Buffer.isBuffer(found))
          assert.isTrue(buffer.equals(found as Buffer))
        },
      ),
    )
  })

  it("refuses an object key named __proto__ at encode time, which msgpack decoders reject", () => {
    const data = JSON.parse('{"__proto__": {"x": 1}, "binary": null}')
    data.binary = Buffer.from([1])
    assert.throws(() => Codec.encode({ uid: "u", type: 3, nsp: "/", data }, 8000), /__proto__/)
  })

  it("decodes every binary kind as a Buffer holding the same bytes (an ArrayBuffer included)", () => {
    const bytes = new Uint8Array([0, 1, 2, 3, 250, 251, 252, 253])
    for (let kind = 0; kind < 5; kind++) {
      const message = { uid: "u", type: MessageType.BROADCAST, data: { b: binaryOf(bytes, kind) } }
      const decoded = success(
        Codec.decodeAttachment(expectAttachment(Codec.encode(message, 8000)).bytes),
      )
      const b = (decoded.data as { b: unknown }).b
      assert.isTrue(Buffer.isBuffer(b), `kind ${kind}`)
      assert.deepStrictEqual([...(b as Buffer)], [...bytes])
    }
  })

  it("keeps the bytes of every binary kind at any depth through the attachment", () => {
    fc.assert(
      fc.property(
        fc.record({
          bytes: fc.uint8Array({ maxLength: 64 }),
          kind: fc.integer({ min: 0, max: 4 }),
          path: fc.array(fc.boolean(), { maxLength: 6 }),
        }),
        ({ bytes, kind, path }) => {
          const binary = binaryOf(bytes, kind) as ArrayBuffer | ArrayBufferView
          const expected =
            binary instanceof ArrayBuffer
              ? Buffer.from(binary)
              : Buffer.from(binary.buffer, binary.byteOffset, binary.byteLength)
          const message = { uid: "u", type: MessageType.BROADCAST, data: nestIn(path, binary) }
          const decoded = success(
            Codec.decodeAttachment(expectAttachment(Codec.encode(message, 8000)).bytes),
          )
          assert.deepStrictEqual(decoded.data, nestIn(path, expected))
          // The message handed to encode is left as it was.
          let found: unknown = message.data
          for (const asArray of path)
            found = asArray ? (found as Array<unknown>)[1] : (found as { inner: unknown }).inner
          assert.strictEqual(found, binary)
        },
      ),
    )
  })

  it("gives the attachment a header that decodes to its uid, type, nsp and id", () => {
    const message = {
      uid: "node-7",
      type: MessageType.BROADCAST,
      nsp: "/admin",
      data: Buffer.from("x"),
    }
    const header = expectAttachment(Codec.encode(message, 8000)).header("42")
    assert.deepStrictEqual(success(Codec.decodeNotification(header)), {
      _tag: "Attachment",
      uid: "node-7",
      type: MessageType.BROADCAST,
      nsp: "/admin",
      attachmentId: "42",
    })
  })
})

describe("Codec.encode with undefined fields", () => {
  /** A JSON value with `undefined` sprinkled in objects and arrays. */
  const withUndefined = fc.letrec<{ value: unknown }>((tie) => ({
    value: fc.oneof(
      { depthSize: "small", withCrossShrink: true },
      fc.oneof(fc.string(), fc.integer(), fc.boolean(), fc.constant(null), fc.constant(undefined)),
      fc.array(tie("value"), { maxLength: 4 }),
      fc.dictionary(
        fc.string({ maxLength: 6 }).filter((k) => k !== "__proto__"),
        fc.oneof(tie("value"), fc.constant(undefined)),
        { maxKeys: 4 },
      ),
    ),
  })).value

  it("drops undefined fields on both paths, so decoding gives the same shape", () => {
    const message = {
      uid: "u",
      type: MessageType.BROADCAST,
      nsp: undefined,
      data: {
        opts: { rooms: [], except: [], flags: undefined },
        packet: { data: ["e", undefined] },
      },
    }
    const inline = JSON.parse(expectInline(Codec.encode(message, 8000)).payload)
    const viaAttachment = success(
      Codec.decodeAttachment(expectAttachment(Codec.encode(message, 0)).bytes),
    )
    const expected = {
      uid: "u",
      type: MessageType.BROADCAST,
      data: { opts: { rooms: [], except: [] }, packet: { data: ["e", null] } },
    }
    assert.deepStrictEqual(inline, expected)
    assert.deepStrictEqual(viaAttachment, expected)
    assert.isFalse("nsp" in viaAttachment)
  })

  it("decodes an inline and an attachment copy of the same message to the same value", () => {
    fc.assert(
      fc.property(
        fc.record({ data: withUndefined, nsp: fc.option(fc.string(), { nil: undefined }) }),
        ({ data, nsp }) => {
          const message: Codec.WireMessage = {
            uid: "u",
            type: MessageType.SERVER_SIDE_EMIT,
            nsp,
            data,
          }
          const inline = JSON.parse(expectInline(Codec.encode(message, 8000)).payload)
          const viaAttachment = success(
            Codec.decodeAttachment(expectAttachment(Codec.encode(message, 0)).bytes),
          )
          assert.deepStrictEqual(viaAttachment, inline)
        },
      ),
    )
  })
})

describe("Codec.decodeNotification", () => {
  it("accepts an inline message as it is, extra fields included", () => {
    const payload = JSON.stringify({ uid: "a", type: 3, nsp: "/", data: { x: 1 }, nodeId: "n" })
    assert.deepStrictEqual(success(Codec.decodeNotification(payload)), {
      _tag: "Inline",
      message: { uid: "a", type: 3, nsp: "/", data: { x: 1 }, nodeId: "n" },
    })
  })

  it("accepts an attachment header with a string or a numeric id, as a string", () => {
    for (const attachmentId of ["17", 17]) {
      const payload = JSON.stringify({ uid: "a", type: 3, attachmentId })
      assert.deepStrictEqual(success(Codec.decodeNotification(payload)), {
        _tag: "Attachment",
        uid: "a",
        type: 3,
        nsp: undefined,
        attachmentId: "17",
      })
    }
  })

  it("rejects junk with a reason", () => {
    const junk = [
      "",
      "not json",
      "{",
      "[]",
      '[{"uid":"a","type":3}]',
      "null",
      "42",
      '"string"',
      '{"type":3}',
      '{"uid":1,"type":3}',
      '{"uid":"a"}',
      '{"uid":"a","type":"3"}',
      '{"uid":"a","type":3.5}',
      '{"uid":"a","type":3,"nsp":5}',
      '{"uid":"a","type":3,"attachmentId":"1; DROP TABLE x"}',
      '{"uid":"a","type":3,"attachmentId":""}',
      '{"uid":"a","type":3,"attachmentId":-1}',
      '{"uid":"a","type":3,"attachmentId":1.5}',
      '{"uid":"a","type":3,"attachmentId":1e300}',
      '{"uid":"a","type":3,"attachmentId":"12345678901234567890"}',
      '{"uid":"a","type":3,"attachmentId":null}',
      '{"uid":"a","type":3,"attachmentId":{}}',
      '{"uid":"a","type":14,"attachmentId":"1"}',
    ]
    for (const payload of junk) {
      const reason = failure(Codec.decodeNotification(payload))
      assert.isString(reason, payload)
      assert.isAbove(reason.length, 0, payload)
    }
  })

  it("never throws, whatever the payload", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary", maxLength: 200 }), (payload) => {
        Codec.decodeNotification(payload)
      }),
    )
  })

  it("never throws on any JSON text, and accepts exactly the objects with a string uid and an integer type", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.jsonValue(),
          fc.record(
            { uid: fc.jsonValue(), type: fc.jsonValue(), attachmentId: fc.jsonValue() },
            { requiredKeys: [] },
          ),
        ),
        (value) => {
          const result = Codec.decodeNotification(JSON.stringify(value) ?? "")
          const plausible =
            typeof value === "object" &&
            value !== null &&
            !Array.isArray(value) &&
            typeof (value as { uid?: unknown }).uid === "string" &&
            Number.isInteger((value as { type?: unknown }).type)
          if (!plausible) assert.isTrue(Result.isFailure(result))
        },
      ),
    )
  })
})

describe("Codec.parsePayload", () => {
  // Members of a header: any JSON, including nested objects with an "mp" key and strings that
  // hold `,"mp":"`, and repeated names.
  const member = fc.tuple(
    fc.constantFrom("uid", "type", "nsp", "mp", "mz", "offset", "x", ',"mp":"', "__proto__"),
    fc.oneof(
      fc.jsonValue({ maxDepth: 2 }),
      fc.constant({ a: 1, mp: "QUJD" }),
      fc.constant('a","mp":"QUJD'),
      fc.constant("a\\"),
    ),
  )
  const text = fc.oneof(
    fc.stringMatching(/^[A-Za-z0-9+/]*={0,2}$/),
    fc.constantFrom("QU\\JD", "QU\\u0041", 'QU\\"D', "", "é"),
  )
  const tail = fc.constantFrom(
    "}",
    ',"offset":"123"}',
    ',"offset":"9223372036854775806"}',
    ',"offset":"12a"}',
    ',"offset":12}',
    ',"mp":"QUJD"}',
    ',"x":"}"}',
    '"}',
    "",
    "}}",
    '}"}',
  )
  const payload = fc
    .tuple(fc.array(member, { maxLength: 4 }), fc.constantFrom("mp", "mz"), text, tail)
    .map(([members, key, body, end]) => {
      const head = members.map(
        ([name, value]) => `${JSON.stringify(name)}:${JSON.stringify(value)}`,
      )
      return `{${[...head, `"${key}":"${body}"`].join(",")}${end}`
    })

  const outcome = (parse: (text: string) => unknown, text: string) => {
    try {
      return { value: parse(text) }
    } catch {
      return { threw: true }
    }
  }

  it("gives what JSON.parse gives, and throws where it throws, for packed payloads and any others", () => {
    fc.assert(
      fc.property(fc.oneof(payload, fc.string(), fc.json()), (text) => {
        assert.deepStrictEqual(outcome(Codec.parsePayload, text), outcome(JSON.parse, text), text)
      }),
      { numRuns: 5_000 },
    )
  })

  it("reads a packed payload's text and offset", () => {
    assert.deepStrictEqual(
      Codec.parsePayload('{"uid":"u","type":3,"nsp":"/","mz":"QUJD","offset":"42"}'),
      { uid: "u", type: 3, nsp: "/", mz: "QUJD", offset: "42" },
    )
  })
})

describe("Codec.needsViews", () => {
  // Values of every kind, with bare ArrayBuffers, views and __proto__ keys among them.
  const { value } = fc.letrec((tie) => ({
    value: fc.oneof(
      { depthSize: "small" },
      fc.jsonValue({ maxDepth: 1 }),
      fc.constantFrom(new ArrayBuffer(2), Buffer.from("ab"), new Uint8Array(2), new Date(0)),
      fc.constant(JSON.parse('{"__proto__":1}')),
      fc.array(tie("value"), { maxLength: 3 }),
      fc.dictionary(fc.constantFrom("a", "b", "__proto__"), tie("value"), { maxKeys: 3 }),
    ),
  }))

  it("is false only where viewArrayBuffers gives back the value itself, without throwing", () => {
    fc.assert(
      fc.property(value, (input) => {
        if (Codec.needsViews(input, 0)) return
        assert.strictEqual(Codec.viewArrayBuffers(input, new Map()), input)
      }),
      { numRuns: 5_000 },
    )
  })

  it("is true for a bare ArrayBuffer or a __proto__ key at any depth", () => {
    for (const leaf of [new ArrayBuffer(1), JSON.parse('{"__proto__":{}}')]) {
      for (let depth = 0; depth < 40; depth++) {
        assert.isTrue(Codec.needsViews(nestIn(Array(depth).fill(depth % 2 === 0), leaf), 0))
      }
    }
    assert.isFalse(Codec.needsViews({ a: [Buffer.from("x"), new Uint8Array(1)] }, 0))
  })
})

describe("Codec.fromBase64", () => {
  // What it accepts, as a grammar: base64 (or base64url) in groups of 4, padded at the end only.
  const strict = /^(?:[A-Za-z0-9+/_-]{4})*(?:[A-Za-z0-9+/_-]{2}==|[A-Za-z0-9+/_-]{3}=)?$/

  it("accepts exactly the texts of base64's grammar, whatever else they hold", () => {
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_==="
    const char = fc.constantFrom(...alphabet.split(""), " ", "\n", "!", "é", "\u0000", ".", '"')
    fc.assert(
      fc.property(fc.array(char, { maxLength: 24 }), (chars) => {
        const text = chars.join("")
        assert.strictEqual(Codec.fromBase64(text) !== undefined, strict.test(text), text)
      }),
      { numRuns: 20_000 },
    )
  })

  it("gives back the bytes that were encoded", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 256 }), (bytes) => {
        assert.deepStrictEqual(
          Codec.fromBase64(Buffer.from(bytes).toString("base64")),
          Buffer.from(bytes),
        )
      }),
    )
  })
})

describe("Codec.decodeAttachment", () => {
  it("rejects bytes that are not msgpack of a cluster message, without throwing", () => {
    assert.isTrue(Result.isFailure(Codec.decodeAttachment(new Uint8Array([0xc1]))))
    assert.isTrue(Result.isFailure(Codec.decodeAttachment(new Uint8Array([]))))
    assert.isTrue(Result.isFailure(Codec.decodeAttachment(new Uint8Array([0x93, 1, 2, 3]))))
  })

  it("never throws, whatever the bytes", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 100 }), (bytes) => {
        Codec.decodeAttachment(bytes)
      }),
    )
  })
})

describe("Codec recovery offsets", () => {
  /** Offsets as PostgreSQL's bigint counter gives them: 1 to 2^63 - 1, as decimal text. */
  const offset = fc
    .oneof(
      fc.bigInt({ min: 1n, max: 1000n }),
      fc.bigInt({ min: 1n, max: 2n ** 63n - 1n }),
      fc.constant(2n ** 63n - 1n),
    )
    .map(String)

  const broadcastWith = (
    data: unknown,
    extra: Record<string, unknown> = {},
  ): Codec.WireMessage => ({
    uid: "node-1",
    type: MessageType.BROADCAST,
    nsp: "/chat",
    data: { opts: { rooms: [], except: [], flags: {} }, packet: { type: 2, data: ["e", data] } },
    ...extra,
  })

  it("isOffset accepts exactly the decimal text of 0 to 2^63 - 1, at most 19 digits", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          offset,
          fc.string({ maxLength: 22 }),
          fc.stringMatching(/^\d{1,21}$/),
          fc.constantFrom("0", "-1", "1.0", "1e3", " 1", "١", "9223372036854775808", ""),
          fc.anything(),
        ),
        (value) => {
          const expected =
            typeof value === "string" &&
            /^[0-9]{1,19}$/.test(value) &&
            BigInt(value) <= 2n ** 63n - 1n
          assert.strictEqual(Codec.isOffset(value), expected, JSON.stringify(value))
        },
      ),
    )
  })

  it("carries a stored message's offset as the last field of its attachment header, which decodes it", () => {
    fc.assert(
      fc.property(
        fc.record({
          offset,
          id: fc.bigInt({ min: 1n, max: 2n ** 63n - 1n }).map(String),
          bytes: fc.uint8Array({ maxLength: 16 }),
          nsp: fc.oneof(
            fc.string({ unit: "binary", maxLength: 30 }),
            fc.constant("/".repeat(8000)),
          ),
        }),
        ({ offset, id, bytes, nsp }) => {
          const message = { ...broadcastWith(Buffer.from(bytes), { offset }), nsp }
          const header = expectAttachment(Codec.encode(message, 8000)).header(id)
          assert.isTrue(header.endsWith(`,"offset":"${offset}"}`), header)
          assert.isAtMost(Buffer.byteLength(header), MAX_NOTIFY_BYTES)
          const decoded = success(Codec.decodeNotification(header))
          assert.strictEqual(decoded._tag, "Attachment")
          assert.strictEqual((decoded as { offset?: string }).offset, offset)
          assert.strictEqual((decoded as { attachmentId: string }).attachmentId, id)
        },
      ),
    )
  })

  it("gives no offset for a header without one, or with one that is not an offset", () => {
    for (const offset of [undefined, "", "abc", "-1", 7, "1.5", "92233720368547758070", null]) {
      const payload = JSON.stringify({ uid: "a", type: 3, nsp: "/", attachmentId: "5", offset })
      const decoded = success(Codec.decodeNotification(payload))
      assert.strictEqual(decoded._tag, "Attachment", payload)
      assert.isFalse("offset" in decoded, payload)
    }
    // A header without an offset field at all, as the encoder writes for a message without one.
    const header = expectAttachment(Codec.encode(broadcastWith(Buffer.from([1])), 8000)).header("9")
    assert.notInclude(header, "offset")
  })

  it("puts a stored message's offset in place of its placeholder, inline or in an attachment header", () => {
    fc.assert(
      fc.property(
        fc.record({
          offset,
          id: fc.bigInt({ min: 1n, max: 2n ** 63n - 1n }).map(String),
          data: fc.oneof(
            wireJsonValue,
            fc.uint8Array({ maxLength: 16 }).map((bytes) => Buffer.from(bytes)),
            fc.string({ minLength: 7990, maxLength: 8010 }),
          ),
          // A message that already has an offset field, not last.
          early: fc.boolean(),
        }),
        ({ offset, id, data, early }) => {
          const base = broadcastWith(data)
          const message = early ? { offset: "1", ...base } : base
          const encoded = Codec.encode(Codec.withOffsetPlaceholder(message), 8000)
          assert.notStrictEqual(encoded._tag, "Parts")
          const text =
            encoded._tag === "Inline" ? encoded.payload : (encoded as Attachment).header(id)
          const [before, after] = Codec.splitAtOffsetPlaceholder(text)
          const payload = `${before}${offset}${after}`
          assert.isAtMost(Buffer.byteLength(payload), MAX_NOTIFY_BYTES)
          // What the sender reads back from its own notification, without parsing it.
          assert.strictEqual(Codec.storedOffsetOf(payload), offset)
          const decoded = success(Codec.decodeNotification(payload))
          if (decoded._tag === "Inline") {
            assert.strictEqual(encoded._tag, "Inline")
            assert.deepStrictEqual(decoded.message, { ...message, offset })
          } else {
            assert.strictEqual(decoded._tag, "Attachment")
            assert.strictEqual((decoded as AttachmentHeader).offset, offset)
            assert.strictEqual((decoded as AttachmentHeader).attachmentId, id)
          }
        },
      ),
    )
  })

  it("reads no stored offset from a notification without one", () => {
    const payloads = [
      JSON.stringify(broadcastWith("x")),
      JSON.stringify(broadcastWith({ offset: "5" })),
      JSON.stringify(broadcastWith("x", { offset: "abc" })),
      JSON.stringify({ uid: "a", type: 2, nsp: '"offset":"5' }),
      JSON.stringify({ uid: "a", type: 3, nsp: "/", attachmentId: "5" }),
    ]
    for (const payload of payloads) assert.isUndefined(Codec.storedOffsetOf(payload), payload)
  })

  it("keeps an inline message's offset among its fields", () => {
    const payload = JSON.stringify(broadcastWith("x", { offset: "42" }))
    const decoded = success(Codec.decodeNotification(payload))
    assert.strictEqual(decoded._tag, "Inline")
    assert.strictEqual(
      (decoded as Extract<Codec.Notification, { _tag: "Inline" }>).message.offset,
      "42",
    )
  })
})

describe("Codec stored packet data", () => {
  it("gives back the args of a stored packet, binary at any depth as Buffers", () => {
    fc.assert(
      fc.property(
        fc.record({
          args: fc.array(
            jsonValue
              .filter((value) => !JSON.stringify(value ?? null).includes('"__proto__"'))
              .map((value) => (value === undefined ? null : JSON.parse(JSON.stringify(value)))),
            { maxLength: 4 },
          ),
          bytes: fc.uint8Array({ maxLength: 64 }),
          kind: fc.integer({ min: 0, max: 4 }),
          path: fc.array(fc.boolean(), { maxLength: 5 }),
        }),
        ({ args, bytes, kind, path }) => {
          const data = [...args, nestIn(path, binaryOf(bytes, kind))]
          const decoded = success(Codec.decodePacketData(Codec.encodePacketData(data)))
          assert.strictEqual(decoded.length, data.length)
          assert.deepStrictEqual(decoded.slice(0, args.length), args)
          let found: unknown = decoded[args.length]
          for (const asArray of path)
            found = asArray ? (found as Array<unknown>)[1] : (found as { inner: unknown }).inner
          assert.isTrue(Buffer.isBuffer(found))
          const view = binaryOf(bytes, kind) as ArrayBufferView | ArrayBuffer
          const expected =
            view instanceof ArrayBuffer
              ? Buffer.from(view)
              : Buffer.from(view.buffer, view.byteOffset, view.byteLength)
          assert.isTrue(expected.equals(found as Buffer))
        },
      ),
    )
  })

  it("refuses what is not msgpack of an array, without throwing", () => {
    assert.isTrue(Result.isFailure(Codec.decodePacketData(new Uint8Array([0xc1]))))
    assert.isTrue(Result.isFailure(Codec.decodePacketData(new Uint8Array([]))))
    assert.isTrue(Result.isFailure(Codec.decodePacketData(Codec.encodePacketData({ a: 1 } as any))))
  })

  it("never throws, whatever the bytes", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 100 }), (bytes) => {
        Codec.decodePacketData(bytes)
      }),
    )
  })
})
