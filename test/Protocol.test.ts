/**
 * The protocol as a specification: every message a node sends decodes back to itself through both
 * paths of the wire (inline and attachment), fields peers add are kept, and anything else is
 * rejected with a reason, never thrown.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Result from "effect/Result"
import * as fc from "fast-check"
import { MessageType as AdapterMessageType } from "socket.io-adapter"
import * as Codec from "../src/Codec.js"
import * as Protocol from "../src/Protocol.js"
import { failure, success, wireJsonValue } from "./utils/results.js"

const { MessageType } = Protocol

/** JSON values as they come back from the wire. */
const json = wireJsonValue(2)

/** An argument of a packet: JSON, or binary (which sends the message through an attachment). */
const arg = fc.oneof(
  json,
  fc.uint8Array({ maxLength: 16 }).map((bytes) => Buffer.from(bytes)),
)

const room = fc.oneof(fc.string({ maxLength: 8 }), fc.integer())
const requestId = fc.string({ minLength: 1, maxLength: 16 })

const opts = fc.record(
  {
    rooms: fc.array(room, { maxLength: 3 }),
    except: fc.array(room, { maxLength: 3 }),
    flags: fc.record(
      {
        volatile: fc.boolean(),
        compress: fc.boolean(),
        local: fc.boolean(),
        broadcast: fc.boolean(),
        binary: fc.boolean(),
        timeout: fc.nat(),
      },
      { requiredKeys: [] },
    ),
  },
  { requiredKeys: ["rooms", "except"] },
)

const packet = fc.record(
  {
    type: fc.constant(2 as const),
    data: fc
      .tuple(
        fc.oneof(
          fc.string().filter((event) => !Protocol.RESERVED_EVENTS.has(event)),
          fc.integer(),
        ),
        fc.array(arg, { maxLength: 3 }),
      )
      .map(([event, args]) => [event, ...args]),
    id: fc.nat(),
    nsp: fc.string({ maxLength: 8 }),
  },
  { requiredKeys: ["type", "data"] },
)

const socket = fc.record(
  {
    id: fc.string({ maxLength: 20 }),
    handshake: fc.dictionary(
      fc.string({ maxLength: 8 }).filter((k) => k !== "__proto__"),
      json,
    ),
    rooms: fc.array(room, { maxLength: 3 }),
    data: arg,
  },
  { requiredKeys: ["id", "handshake", "rooms"] },
)

/** `uid` first, as nodes send them; `nsp` missing as from emitters before ours. */
const envelope = <T extends Protocol.MessageType, D>(type: T, data?: fc.Arbitrary<D>) =>
  fc
    .record({
      uid: fc.string({ minLength: 1, maxLength: 20 }),
      nsp: fc.option(fc.string({ maxLength: 20 }), { nil: undefined }),
      data: data ?? fc.constant(undefined),
    })
    .map(({ uid, nsp, data }) => ({
      uid,
      ...(nsp === undefined ? {} : { nsp }),
      type,
      ...(data === undefined ? {} : { data }),
    }))

const optionally = <A>(arbitrary: fc.Arbitrary<A>) => fc.option(arbitrary, { nil: undefined })

/** Every message of the protocol, as our nodes, 0.5.0's and the emitters send them. */
const message: fc.Arbitrary<Record<string, unknown>> = fc.oneof(
  envelope(MessageType.INITIAL_HEARTBEAT),
  envelope(MessageType.HEARTBEAT),
  envelope(MessageType.ADAPTER_CLOSE),
  fc
    .tuple(
      envelope(
        MessageType.BROADCAST,
        fc.record({ opts, packet, requestId }, { requiredKeys: ["opts", "packet"] }),
      ),
      optionally(fc.bigInt({ min: 1n, max: 2n ** 63n - 1n }).map(String)),
    )
    .map(([message, offset]) => (offset === undefined ? message : { ...message, offset })),
  envelope(MessageType.SOCKETS_JOIN, fc.record({ opts, rooms: fc.array(room) })),
  envelope(MessageType.SOCKETS_LEAVE, fc.record({ opts, rooms: fc.array(room) })),
  envelope(
    MessageType.DISCONNECT_SOCKETS,
    fc.record({ opts, close: fc.boolean() }, { requiredKeys: ["opts"] }),
  ),
  envelope(MessageType.FETCH_SOCKETS, fc.record({ opts, requestId })),
  envelope(
    MessageType.FETCH_SOCKETS_RESPONSE,
    fc.record({ requestId, sockets: fc.array(socket, { maxLength: 3 }) }),
  ),
  envelope(
    MessageType.SERVER_SIDE_EMIT,
    fc.record(
      { requestId, packet: fc.array(arg, { minLength: 1, maxLength: 3 }) },
      { requiredKeys: ["packet"] },
    ),
  ),
  envelope(
    MessageType.SERVER_SIDE_EMIT_RESPONSE,
    fc.record({ requestId, packet: arg }, { requiredKeys: ["requestId"] }),
  ),
  envelope(MessageType.BROADCAST_CLIENT_COUNT, fc.record({ requestId, clientCount: fc.nat() })),
  envelope(
    MessageType.BROADCAST_ACK,
    fc.record({ requestId, packet: arg }, { requiredKeys: ["requestId"] }),
  ),
)

/** Sends a message through the codec (inline or attachment, as it decides) and decodes it back. */
const roundTrip = (
  sent: Codec.WireMessage,
  threshold: number,
): Result.Result<Protocol.Message, string> => {
  const encoded = Codec.encode(sent, threshold)
  if (encoded._tag === "Inline") {
    const notification = success(Codec.decodeNotification(encoded.payload))
    assert.strictEqual(notification._tag, "Inline")
    return Protocol.decodeMessage((notification as { message: unknown }).message)
  }
  assert.strictEqual(encoded._tag, "Attachment")
  const attachment = encoded as Extract<Codec.Encoded, { _tag: "Attachment" }>
  const header = success(Codec.decodeNotification(attachment.header("1")))
  assert.strictEqual(header._tag, "Attachment")
  return Result.flatMap(Codec.decodeAttachment(attachment.bytes), Protocol.decodeMessage)
}

describe("Protocol messages on the wire", () => {
  it("numbers message types as socket.io-adapter does", () => {
    for (const [name, type] of Object.entries(MessageType)) {
      assert.strictEqual(type, AdapterMessageType[name as keyof typeof AdapterMessageType], name)
    }
    assert.strictEqual(Object.keys(Protocol.members).length, 13)
  })

  it("decodes every message we encode back to itself, inline and through an attachment", () => {
    fc.assert(
      fc.property(message, fc.constantFrom(0, 8000), (sent, threshold) => {
        const decoded = success(roundTrip(sent as unknown as Codec.WireMessage, threshold))
        assert.deepStrictEqual(decoded, sent)
      }),
    )
  })

  it("keeps, untouched, the fields peers add (0.5.0's source, nodeId, requesterUid, packet.nsp)", () => {
    const sent = {
      uid: "a",
      nsp: "/",
      type: MessageType.BROADCAST,
      data: {
        opts: { rooms: [], except: [], flags: {} },
        packet: { type: 2, data: ["e"], nsp: "/" },
      },
      source: "primary",
      nodeId: "n1",
      requesterUid: "r",
    }
    const decoded = success(Protocol.decodeMessage(sent))
    assert.strictEqual<unknown>(decoded, sent)
    assert.deepStrictEqual(decoded, JSON.parse(JSON.stringify(sent)))
  })

  it("rejects a message with one field broken, with a reason that names its type and the field", () => {
    const breakages: ReadonlyArray<
      readonly [string, (m: Record<string, unknown>) => Record<string, unknown> | undefined]
    > = [
      ['["uid"]', (m) => ({ ...m, uid: 42 })],
      ['["nsp"]', (m) => ({ ...m, nsp: ["/"] })],
      ['["data"]', (m) => ("data" in m ? { ...m, data: "junk" } : undefined)],
      [
        '["requestId"]',
        (m) => {
          const data = m.data as Record<string, unknown> | undefined
          return data !== undefined && typeof data.requestId === "string"
            ? { ...m, data: { ...data, requestId: 7 } }
            : undefined
        },
      ],
    ]
    fc.assert(
      fc.property(message, fc.constantFrom(...breakages), (sent, [field, breakIt]) => {
        const broken = breakIt(sent)
        if (broken === undefined) return
        const reason = failure(Protocol.decodeMessage(broken))
        const name = Object.entries(MessageType).find(([, type]) => type === sent.type)![0]
        assert.isTrue(reason.startsWith(`${name}: `), reason)
        assert.include(reason, field)
      }),
    )
  })

  it("rejects unknown types and what is not an object, with a reason", () => {
    for (const junk of [null, 1, "x", [], [{ uid: "a", type: 2 }], { uid: "a" }]) {
      assert.isAbove(failure(Protocol.decodeMessage(junk)).length, 0, JSON.stringify(junk))
    }
    for (const type of [0, 14, -1, 1.5, "2", null]) {
      assert.strictEqual(
        failure(Protocol.decodeMessage({ uid: "a", type })),
        `unknown message type ${String(type)}`,
      )
    }
  })

  it("never throws, whatever the value, and gives a reason for every rejection", () => {
    fc.assert(
      fc.property(fc.anything(), (value) => {
        const result = Protocol.decodeMessage(value)
        if (Result.isFailure(result)) assert.isAbove(result.failure.length, 0)
      }),
    )
  })
})

describe("Protocol members, as the hot path checks them", () => {
  // Every notification is checked against its member. Effect compiles a member's guard only if no
  // array in it carries a check (an array check sends every message of that type through the
  // interpreter, at several times the cost): non-empty arrays are tuples with a rest.
  const arraysWithChecks = (
    ast: unknown,
    path: string,
    seen = new Set<unknown>(),
  ): Array<string> => {
    if (typeof ast !== "object" || ast === null || seen.has(ast)) return []
    seen.add(ast)
    const node = ast as { _tag?: unknown; checks?: unknown }
    const here = node._tag === "Arrays" && node.checks !== undefined ? [path] : []
    return [
      ...here,
      ...Object.entries(ast).flatMap(([key, value]) =>
        key === "checks" || key === "annotations"
          ? []
          : arraysWithChecks(value, `${path}.${key}`, seen),
      ),
    ]
  }

  it("puts no check on an array, in any member", () => {
    for (const [type, schema] of Object.entries(Protocol.members)) {
      assert.deepStrictEqual(arraysWithChecks(schema.ast, `type ${type}`), [])
    }
  })

  it("rejects a broadcast without an event name, or with a reserved one, and an empty server-side event", () => {
    const broadcast = (data: ReadonlyArray<unknown>) => ({
      uid: "u",
      nsp: "/",
      type: MessageType.BROADCAST,
      data: { packet: { type: 2, data }, opts: { rooms: [], except: [] } },
    })
    for (const data of [[], ["connect"], ["disconnecting", 1], [{}], [null]]) {
      assert.isTrue(Result.isFailure(Protocol.decodeMessage(broadcast(data))), JSON.stringify(data))
    }
    for (const data of [["m"], [7, "x"], ["m", { a: [1] }]]) {
      assert.isTrue(Result.isSuccess(Protocol.decodeMessage(broadcast(data))), JSON.stringify(data))
    }
    const emit = (packet: ReadonlyArray<unknown>) => ({
      uid: "u",
      nsp: "/",
      type: MessageType.SERVER_SIDE_EMIT,
      data: { packet },
    })
    assert.isTrue(Result.isFailure(Protocol.decodeMessage(emit([]))))
    assert.isTrue(Result.isSuccess(Protocol.decodeMessage(emit(["ping"]))))
  })
})

describe("Protocol.decodeMessage (was Codec.validateMessage)", () => {
  const opts = { rooms: ["r1"], except: [], flags: { volatile: true } }
  const wellFormed: ReadonlyArray<Codec.WireMessage> = [
    { uid: "a", type: MessageType.INITIAL_HEARTBEAT, nsp: "/" },
    { uid: "a", type: MessageType.HEARTBEAT, nsp: "/" },
    {
      uid: "a",
      type: MessageType.BROADCAST,
      nsp: "/",
      data: { opts, packet: { type: 2, data: ["e", 1], nsp: "/" } },
    },
    {
      uid: "a",
      type: MessageType.BROADCAST,
      nsp: "/",
      data: { opts, packet: { type: 2, data: ["e"] }, requestId: "r" },
    },
    { uid: "a", type: MessageType.SOCKETS_JOIN, nsp: "/", data: { opts, rooms: ["r2"] } },
    { uid: "a", type: MessageType.SOCKETS_LEAVE, nsp: "/", data: { opts, rooms: ["r2"] } },
    { uid: "a", type: MessageType.DISCONNECT_SOCKETS, nsp: "/", data: { opts, close: true } },
    { uid: "a", type: MessageType.FETCH_SOCKETS, nsp: "/", data: { opts, requestId: "r" } },
    {
      uid: "a",
      type: MessageType.FETCH_SOCKETS_RESPONSE,
      nsp: "/",
      data: { requestId: "r", sockets: [] },
    },
    { uid: "a", type: MessageType.SERVER_SIDE_EMIT, nsp: "/", data: { packet: ["hello", 1] } },
    {
      uid: "a",
      type: MessageType.SERVER_SIDE_EMIT,
      nsp: "/",
      data: { packet: ["hello"], requestId: "r" },
    },
    {
      uid: "a",
      type: MessageType.SERVER_SIDE_EMIT_RESPONSE,
      nsp: "/",
      data: { requestId: "r", packet: 1 },
    },
    {
      uid: "a",
      type: MessageType.BROADCAST_CLIENT_COUNT,
      nsp: "/",
      data: { requestId: "r", clientCount: 2 },
    },
    {
      uid: "a",
      type: MessageType.BROADCAST_ACK,
      nsp: "/",
      data: { requestId: "r", packet: ["ok"] },
    },
    { uid: "a", type: MessageType.ADAPTER_CLOSE, nsp: "/" },
  ]

  it("accepts every well-formed message type, 1 to 13, as the same object", () => {
    const types = new Set<number>()
    for (const message of wellFormed) {
      assert.strictEqual<unknown>(
        success(Protocol.decodeMessage(message)),
        message,
        JSON.stringify(message),
      )
      types.add(message.type)
    }
    assert.strictEqual(types.size, 13)
  })

  it("rejects malformed messages with a reason", () => {
    const malformed: ReadonlyArray<Codec.WireMessage> = [
      { uid: "a", type: MessageType.BROADCAST, data: null },
      { uid: "a", type: MessageType.BROADCAST, data: { packet: { data: [] } } },
      {
        uid: "a",
        type: MessageType.BROADCAST,
        data: { opts: { rooms: "r", except: [] }, packet: {} },
      },
      { uid: "a", type: MessageType.BROADCAST, data: { opts, packet: { data: "not an array" } } },
      { uid: "a", type: MessageType.BROADCAST, data: { opts: { ...opts, flags: 3 }, packet: {} } },
      { uid: "a", type: MessageType.SOCKETS_JOIN, data: { opts } },
      { uid: "a", type: MessageType.SOCKETS_LEAVE, data: { opts, rooms: [{}] } },
      { uid: "a", type: MessageType.DISCONNECT_SOCKETS, data: {} },
      { uid: "a", type: MessageType.FETCH_SOCKETS, data: { opts } },
      { uid: "a", type: MessageType.FETCH_SOCKETS_RESPONSE, data: { requestId: "r", sockets: {} } },
      { uid: "a", type: MessageType.SERVER_SIDE_EMIT, data: { packet: [] } },
      { uid: "a", type: MessageType.SERVER_SIDE_EMIT, data: { packet: "hello" } },
      { uid: "a", type: MessageType.SERVER_SIDE_EMIT_RESPONSE, data: { requestId: 1 } },
      {
        uid: "a",
        type: MessageType.BROADCAST_CLIENT_COUNT,
        data: { requestId: "r", clientCount: "2" },
      },
      { uid: "a", type: MessageType.BROADCAST_ACK, data: [] },
      { uid: "a", type: 0 },
      { uid: "a", type: 14 },
      { uid: "a", type: -1 },
    ]
    for (const message of malformed) {
      const reason = failure(Protocol.decodeMessage(message))
      assert.isAbove(reason.length, 0, JSON.stringify(message))
    }
  })

  it("never throws, whatever JSON value is under data, for any type", () => {
    fc.assert(
      fc.property(
        fc.record({
          type: fc.oneof(fc.integer({ min: 1, max: 13 }), fc.integer()),
          data: fc.oneof(
            fc.jsonValue({ maxDepth: 4 }),
            fc.record(
              {
                opts: fc.oneof(
                  fc.jsonValue(),
                  fc.record({
                    rooms: fc.jsonValue(),
                    except: fc.jsonValue(),
                    flags: fc.jsonValue(),
                  }),
                ),
                packet: fc.oneof(fc.jsonValue(), fc.record({ data: fc.jsonValue() })),
                rooms: fc.jsonValue(),
                requestId: fc.jsonValue(),
                sockets: fc.jsonValue(),
                clientCount: fc.jsonValue(),
              },
              { requiredKeys: [] },
            ),
          ),
        }),
        ({ type, data }) => {
          const result = Protocol.decodeMessage({ uid: "a", type, nsp: "/", data })
          if (Result.isFailure(result)) assert.isAbove(result.failure.length, 0)
        },
      ),
    )
  })
})
