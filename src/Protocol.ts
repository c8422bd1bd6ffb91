/**
 * The wire protocol: socket.io-adapter's cluster messages (`ClusterMessage`, `ClusterResponse`)
 * as one typed union, one Schema per `MessageType`. Every message a node delivers was checked
 * against its member; every message it sends is built as one.
 *
 * Fields peers add (0.5.0's `source`, `nodeId`, `requesterUid`, a packet's `nsp`) are accepted
 * and kept: checking never copies a message.
 *
 * @since 0.2.0
 */
import * as Result from "effect/Result"
import * as SchemaJITCompiler from "effect/schema/SchemaJITCompiler"
import * as Schema from "effect/Schema"
import * as SchemaIssue from "effect/SchemaIssue"
import * as Capability from "./Capability.js"

/** socket.io-adapter's message types (wire numbers). */
export const MessageType = {
  INITIAL_HEARTBEAT: 1,
  HEARTBEAT: 2,
  BROADCAST: 3,
  SOCKETS_JOIN: 4,
  SOCKETS_LEAVE: 5,
  DISCONNECT_SOCKETS: 6,
  FETCH_SOCKETS: 7,
  FETCH_SOCKETS_RESPONSE: 8,
  SERVER_SIDE_EMIT: 9,
  SERVER_SIDE_EMIT_RESPONSE: 10,
  BROADCAST_CLIENT_COUNT: 11,
  BROADCAST_ACK: 12,
  ADAPTER_CLOSE: 13,
} as const

/** One of socket.io-adapter's message type numbers. */
export type MessageType = (typeof MessageType)[keyof typeof MessageType]

/** The uid of messages sent by an emitter; never counted as a cluster member. */
export const EMITTER_UID = "emitter"

/** Event names Socket.IO reserves: clients' parsers refuse them, emitters must not send them. */
export const RESERVED_EVENTS: ReadonlySet<string> = new Set([
  "connect",
  "connect_error",
  "disconnect",
  "disconnecting",
  "newListener",
  "removeListener",
])

const MAX_BIGINT = 2n ** 63n - 1n

/** A recovery offset as it travels: the text of a positive bigint. */
export const isOffset = (u: unknown): u is string =>
  typeof u === "string" && /^\d{1,19}$/.test(u) && BigInt(u) <= MAX_BIGINT

/** A recovery offset: the decimal text of a PostgreSQL bigint. */
export const Offset = Schema.String.check(
  Schema.makeFilter((s: string) => isOffset(s) || "an offset (the decimal text of a bigint)"),
)

/** A room name (Socket.IO's are strings; plain JavaScript users may join numbers). */
export const Room = Schema.Union([Schema.String, Schema.Number])

/** How a packet is sent: socket.io-adapter's `BroadcastFlags`. */
export const Flags = Schema.Struct({
  volatile: Schema.optional(Schema.Boolean),
  compress: Schema.optional(Schema.Boolean),
  local: Schema.optional(Schema.Boolean),
  broadcast: Schema.optional(Schema.Boolean),
  binary: Schema.optional(Schema.Boolean),
  timeout: Schema.optional(Schema.Number),
})

/** Which sockets a message targets: socket.io-adapter's encoded `BroadcastOptions`. */
export const Opts = Schema.Struct({
  rooms: Schema.Array(Room),
  except: Schema.Array(Room),
  flags: Schema.optional(Flags),
})

/** The encoded `BroadcastOptions`. */
export type Opts = typeof Opts.Type

/** Encodes socket.io-adapter's `BroadcastOptions` (sets of rooms) for the wire. */
export const encodeOpts = (opts: {
  readonly rooms: ReadonlySet<string>
  readonly except?: ReadonlySet<string> | undefined
  readonly flags?: typeof Flags.Type | undefined
}): Opts => ({
  rooms: [...opts.rooms],
  except: [...(opts.except ?? [])],
  flags: opts.flags ?? {},
})

// Clients' parsers reject another packet type, no event name or a reserved one, and every client
// of the server that forwards such a packet drops its connection.
const EventName = Schema.Union([
  Schema.Number,
  Schema.String.check(
    Schema.makeFilter(
      (event: string) => !RESERVED_EVENTS.has(event) || `"${event}" is a reserved event name`,
    ),
  ),
])

// Arrays are written as tuples with a rest, never with a check: the compiled guards (below) skip
// a member that has a check on an array, and checking it interpreted costs ten times more.
const nonEmpty = <S extends Schema.Top>(first: S) =>
  Schema.TupleWithRest(Schema.Tuple([first]), [Schema.Unknown])

/** What Socket.IO broadcasts: an EVENT (type 2) whose args start with an event name. */
export const EventPacket = Schema.Struct({
  type: Schema.Literal(2),
  data: nonEmpty(EventName),
  id: Schema.optional(Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))),
})

/** A socket as a server describes it in a `FETCH_SOCKETS_RESPONSE`. */
export const SocketDescription = Schema.Struct({
  id: Schema.String,
  handshake: Schema.Record(Schema.String, Schema.Unknown),
  rooms: Schema.Array(Room),
  data: Schema.optional(Schema.Unknown),
})

/** A socket as a server describes it in a `FETCH_SOCKETS_RESPONSE`. */
export type SocketDescription = typeof SocketDescription.Type

// Every message says who sent it; `nsp` is missing from the messages of emitters before ours.
const from = <T extends MessageType>(type: T) => ({
  uid: Schema.String,
  nsp: Schema.optional(Schema.String),
  type: Schema.Literal(type),
})

/** Sent once a node listens, and after every re-LISTEN: every node answers with a HEARTBEAT. */
export const InitialHeartbeat = Schema.Struct({
  ...from(MessageType.INITIAL_HEARTBEAT),
  /** Our nodes' marker (see `Capability`); 0.5.0 nodes send none and ignore it. */
  ours: Schema.optional(Capability.Marker),
})
/** A node is alive (sent when it published nothing else for `heartbeatInterval`). */
export const Heartbeat = Schema.Struct({
  ...from(MessageType.HEARTBEAT),
  /** Our nodes' marker (see `Capability`); 0.5.0 nodes send none and ignore it. */
  ours: Schema.optional(Capability.Marker),
})
/** A node's adapter closes: it is no cluster member any more. */
export const AdapterClose = Schema.Struct(from(MessageType.ADAPTER_CLOSE))

/** A packet for the matching sockets; with `requestId`, their acknowledgements are wanted. */
export const Broadcast = Schema.Struct({
  ...from(MessageType.BROADCAST),
  data: Schema.Struct({
    opts: Opts,
    packet: EventPacket,
    requestId: Schema.optional(Schema.String),
  }),
  /** The packet's recovery offset (stored broadcasts, connection state recovery). */
  offset: Schema.optional(Offset),
})

/** The matching sockets join rooms. */
export const SocketsJoin = Schema.Struct({
  ...from(MessageType.SOCKETS_JOIN),
  data: Schema.Struct({ opts: Opts, rooms: Schema.Array(Room) }),
})

/** The matching sockets leave rooms. */
export const SocketsLeave = Schema.Struct({
  ...from(MessageType.SOCKETS_LEAVE),
  data: Schema.Struct({ opts: Opts, rooms: Schema.Array(Room) }),
})

/** The matching sockets are disconnected (`close`: their underlying connection too). */
export const DisconnectSockets = Schema.Struct({
  ...from(MessageType.DISCONNECT_SOCKETS),
  data: Schema.Struct({ opts: Opts, close: Schema.optional(Schema.Boolean) }),
})

/**
 * `1` on a request by a node of ours that listens on its private channel: nodes of ours answer it
 * there, where only the asker hears it, instead of on the namespace's channel (see
 * `internal/replies.ts`). 0.5.0 ignores it; another number (a later version's) is answered on the
 * namespace's channel, not dropped.
 */
const reply = Schema.optional(Schema.Number)

/** A request for the matching sockets; each node answers with a `FETCH_SOCKETS_RESPONSE`. */
export const FetchSockets = Schema.Struct({
  ...from(MessageType.FETCH_SOCKETS),
  data: Schema.Struct({ opts: Opts, requestId: Schema.String }),
  reply,
})

/** One node's answer to a `FETCH_SOCKETS`. */
export const FetchSocketsResponse = Schema.Struct({
  ...from(MessageType.FETCH_SOCKETS_RESPONSE),
  data: Schema.Struct({ requestId: Schema.String, sockets: Schema.Array(SocketDescription) }),
})

/** A server-side event; with `requestId`, each node answers with one value. */
export const ServerSideEmit = Schema.Struct({
  ...from(MessageType.SERVER_SIDE_EMIT),
  data: Schema.Struct({
    requestId: Schema.optional(Schema.String),
    packet: nonEmpty(Schema.Unknown),
  }),
  reply,
})

/** A server-side event's packet: its name first, then its arguments (as Socket.IO gives it). */
export type ServerSidePacket = typeof ServerSideEmit.Type.data.packet

/** One node's answer to a `SERVER_SIDE_EMIT` with `requestId` (`undefined` travels as no key). */
export const ServerSideEmitResponse = Schema.Struct({
  ...from(MessageType.SERVER_SIDE_EMIT_RESPONSE),
  data: Schema.Struct({ requestId: Schema.String, packet: Schema.optional(Schema.Unknown) }),
})

/** How many of a node's clients got a broadcast with acknowledgements. */
export const BroadcastClientCount = Schema.Struct({
  ...from(MessageType.BROADCAST_CLIENT_COUNT),
  data: Schema.Struct({ requestId: Schema.String, clientCount: Schema.Number }),
})

/** One client's acknowledgement of a broadcast. */
export const BroadcastAck = Schema.Struct({
  ...from(MessageType.BROADCAST_ACK),
  data: Schema.Struct({ requestId: Schema.String, packet: Schema.optional(Schema.Unknown) }),
})

/** Every message of the protocol, by type number. */
export const members = {
  [MessageType.INITIAL_HEARTBEAT]: InitialHeartbeat,
  [MessageType.HEARTBEAT]: Heartbeat,
  [MessageType.BROADCAST]: Broadcast,
  [MessageType.SOCKETS_JOIN]: SocketsJoin,
  [MessageType.SOCKETS_LEAVE]: SocketsLeave,
  [MessageType.DISCONNECT_SOCKETS]: DisconnectSockets,
  [MessageType.FETCH_SOCKETS]: FetchSockets,
  [MessageType.FETCH_SOCKETS_RESPONSE]: FetchSocketsResponse,
  [MessageType.SERVER_SIDE_EMIT]: ServerSideEmit,
  [MessageType.SERVER_SIDE_EMIT_RESPONSE]: ServerSideEmitResponse,
  [MessageType.BROADCAST_CLIENT_COUNT]: BroadcastClientCount,
  [MessageType.BROADCAST_ACK]: BroadcastAck,
  [MessageType.ADAPTER_CLOSE]: AdapterClose,
} as const

/** A cluster message: what a node sends and what it delivers. */
export const Message = Schema.Union(Object.values(members) as Array<(typeof members)[MessageType]>)

/** A cluster message: what a node sends and what it delivers. */
export type Message = typeof Message.Type

/** The message of one type. */
export type MessageOf<T extends MessageType> = Extract<Message, { readonly type: T }>

/** The answers a pending request collects (see `Requests`). */
export type Answer = MessageOf<
  typeof MessageType.FETCH_SOCKETS_RESPONSE | typeof MessageType.SERVER_SIDE_EMIT_RESPONSE
>

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never

/** A message as a node composes it, without its `uid` and `nsp`. */
export type Body = DistributiveOmit<Message, "uid" | "nsp" | "offset">

/**
 * A node's message as it goes on the wire: `uid` first, as receivers recognise their own
 * notifications by that prefix, unparsed.
 */
export const message = (uid: string, nsp: string, body: Body): Message => ({ uid, nsp, ...body })

// Every notification is checked on the hot path: interpreted, the check of a broadcast took about
// 3 µs (as long as its JSON.parse), compiled about 0.2 µs. Where code generation is not allowed,
// Effect keeps interpreting.
for (const schema of Object.values(members)) SchemaJITCompiler.enable(schema.ast)

// One guard per member: a message is checked against its own type only, without copying it.
const guards = Object.fromEntries(
  Object.entries(members).map(([type, schema]) => [type, Schema.is(schema)]),
) as Record<number, (u: unknown) => boolean>

const names = Object.fromEntries(Object.entries(MessageType).map(([name, type]) => [type, name]))

const formatter = SchemaIssue.makeFormatterDefault()

const reason = (type: MessageType, u: unknown): string => {
  const result = Schema.decodeUnknownResult(members[type])(u)
  return Result.isFailure(result)
    ? `${names[type]}: ${formatter(result.failure.issue).replace(/\s*\n\s*/g, " ")}`
    : `${names[type]}: invalid`
}

/**
 * Checks an object from the wire (parsed JSON or msgpack) against the member of its `type`:
 * `Success` of the same object, typed, or `Failure` of a reason. Never throws.
 */
export const decodeMessage = (u: unknown): Result.Result<Message, string> => {
  if (typeof u !== "object" || u === null || Array.isArray(u)) {
    return Result.fail("a message is a JSON object")
  }
  const type = (u as { readonly type?: unknown }).type
  const guard = typeof type === "number" ? guards[type] : undefined
  if (guard === undefined) return Result.fail(`unknown message type ${String(type)}`)
  return guard(u) ? Result.succeed(u as Message) : Result.fail(reason(type as MessageType, u))
}

/** Whether a message is one of the answers pending requests collect. */
export const isAnswer = (type: number): boolean =>
  type === MessageType.FETCH_SOCKETS_RESPONSE || type === MessageType.SERVER_SIDE_EMIT_RESPONSE

/** Whether a message is a response (travels to the requester; carries `requestId`). */
export const isResponse = (type: number): boolean =>
  isAnswer(type) ||
  type === MessageType.BROADCAST_CLIENT_COUNT ||
  type === MessageType.BROADCAST_ACK

/** The request a response answers; `undefined` for anything but a response. */
export const responseTo = (message: Message): string | undefined => {
  switch (message.type) {
    case MessageType.FETCH_SOCKETS_RESPONSE:
    case MessageType.SERVER_SIDE_EMIT_RESPONSE:
    case MessageType.BROADCAST_CLIENT_COUNT:
    case MessageType.BROADCAST_ACK:
      return message.data.requestId
    default:
      return undefined
  }
}
