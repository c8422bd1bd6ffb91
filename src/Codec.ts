/**
 * The wire format: how a cluster message becomes a NOTIFY payload or an attachment, and back.
 *
 * @since 0.1.0
 */
import { decode as msgpackDecode, Encoder } from "@msgpack/msgpack"
import * as Result from "effect/Result"
import { MAX_NOTIFY_BYTES } from "./Config.js"

/** The uid of messages sent by an emitter; never counted as a cluster member. */
export const EMITTER_UID = "emitter"

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

/** A message as it travels: `uid`, `type`, usually `nsp` and `data`, extra fields allowed. */
export interface WireMessage {
  readonly uid: string
  readonly type: number
  readonly nsp?: string
  readonly data?: unknown
  readonly [key: string]: unknown
}

/** What a notification carries: a whole message, or the id of an attachment that holds it. */
export type Notification =
  | { readonly _tag: "Inline"; readonly message: WireMessage }
  | {
      readonly _tag: "Attachment"
      readonly uid: string
      readonly type: number
      readonly nsp: string | undefined
      readonly attachmentId: string
      /** Set on responses, so that nodes other than the requester skip the fetch. */
      readonly requestId?: string | undefined
      /** The packet's recovery offset, for stored broadcasts (connection state recovery). */
      readonly offset?: string | undefined
    }

/** How a message is to be sent. */
export type Encoded =
  | { readonly _tag: "Inline"; readonly payload: string }
  | {
      readonly _tag: "Attachment"
      readonly bytes: Uint8Array
      readonly header: (id: string) => string
    }

// One encoder for the process: its buffer grows once instead of once per message.
const encoder = new Encoder({ ignoreUndefined: true, initialBufferSize: 64 * 1024 })

const MAX_BIGINT = 2n ** 63n - 1n

const isResponse = (type: number): boolean =>
  type === MessageType.FETCH_SOCKETS_RESPONSE ||
  type === MessageType.SERVER_SIDE_EMIT_RESPONSE ||
  type === MessageType.BROADCAST_CLIENT_COUNT ||
  type === MessageType.BROADCAST_ACK

/** True when `value` holds a Buffer, ArrayBuffer or typed array at any depth. */
export const hasBinary = (value: unknown, seen?: Set<object>): boolean => {
  if (value === null || typeof value !== "object") return false
  if (value instanceof ArrayBuffer || ArrayBuffer.isView(value)) return true
  const visited = seen ?? new Set<object>()
  if (visited.has(value)) return false
  visited.add(value)
  if (Array.isArray(value)) return value.some((item) => hasBinary(item, visited))
  const toJSON = (value as { toJSON?: unknown }).toJSON
  if (typeof toJSON === "function") return hasBinary(toJSON.call(value), visited)
  for (const key in value) {
    if (
      Object.prototype.hasOwnProperty.call(value, key) &&
      hasBinary((value as Record<string, unknown>)[key], visited)
    ) {
      return true
    }
  }
  return false
}

/**
 * Decides how a message travels: inline JSON when it holds no binary and its JSON is at most
 * `min(threshold, 7999)` bytes, else msgpack into the attachments table with a JSON header.
 */
export const encode = (message: WireMessage, threshold: number): Encoded => {
  if (!hasBinary(message)) {
    const payload = JSON.stringify(message)
    // UTF-8 needs at most 3 bytes per UTF-16 unit: skip the byte count when it surely fits.
    const limit = Math.min(threshold, MAX_NOTIFY_BYTES)
    if (payload.length * 3 <= limit || Buffer.byteLength(payload) <= limit) {
      return { _tag: "Inline", payload }
    }
  }
  const bytes = encoder.encode(viewArrayBuffers(message, new Map()))
  return {
    _tag: "Attachment",
    bytes,
    header: (attachmentId) => {
      const requestId = isResponse(message.type)
        ? ((message.data as { requestId?: unknown } | undefined)?.requestId as string | undefined)
        : undefined
      // `offset` last: its placeholder is found from the end (see splitAtOffsetPlaceholder).
      const header = JSON.stringify({
        uid: message.uid,
        type: message.type,
        nsp: message.nsp,
        attachmentId,
        requestId: typeof requestId === "string" ? requestId : undefined,
        offset: typeof message.offset === "string" ? message.offset : undefined,
      })
      // A namespace name of kilobytes would not fit: receivers take the namespace from the channel.
      return Buffer.byteLength(header) <= MAX_NOTIFY_BYTES
        ? header
        : JSON.stringify({
            uid: message.uid,
            type: message.type,
            attachmentId,
            offset: typeof message.offset === "string" ? message.offset : undefined,
          })
    },
  }
}

/** The args of a stored packet (connection state recovery), as msgpack. */
export const encodePacketData = (data: ReadonlyArray<unknown>): Uint8Array =>
  encoder.encode(viewArrayBuffers(data, new Map()))

/** Decodes stored packet args back; binary values come back as `Buffer`s. */
export const decodePacketData = (bytes: Uint8Array): Result.Result<Array<unknown>, string> => {
  let decoded: unknown
  try {
    decoded = msgpackDecode(bytes)
  } catch (e) {
    return Result.fail(`stored packet is not msgpack: ${(e as Error).message}`)
  }
  return Array.isArray(decoded)
    ? Result.succeed(toBuffers(decoded) as Array<unknown>)
    : Result.fail("stored packet is not an array")
}

/** A recovery offset as it travels: the text of a positive bigint. */
export const isOffset = (u: unknown): u is string =>
  typeof u === "string" && /^\d{1,19}$/.test(u) && BigInt(u) <= MAX_BIGINT

// Stands for a stored packet's offset until PostgreSQL gives it out, in the statement that stores
// the packet: 19 digits, so that the payload's length is checked with the longest offset.
const OFFSET_PLACEHOLDER = "9223372036854775806"

// How a stored packet's notification ends (inline or attachment header): `"offset":"<digits>"}`.
const OFFSET_FIELD = `"offset":"`

/**
 * The message of a stored packet before its offset is known: its `offset` field, last, holds a
 * placeholder. Encoded, the placeholder is the last field of the payload or header, so nothing a
 * user controls comes after it.
 */
export const withOffsetPlaceholder = (message: WireMessage): WireMessage => {
  if (!("offset" in message)) return { ...message, offset: OFFSET_PLACEHOLDER }
  // A key already there would keep its place: put it last.
  const { offset: _, ...rest } = message
  return { ...rest, offset: OFFSET_PLACEHOLDER }
}

/**
 * The text of an encoded {@link withOffsetPlaceholder} message (inline payload or attachment
 * header) around its placeholder: the offset goes in between, e.g. in SQL.
 */
export const splitAtOffsetPlaceholder = (text: string): readonly [string, string] => {
  const at = text.lastIndexOf(OFFSET_PLACEHOLDER)
  return [text.slice(0, at), text.slice(at + OFFSET_PLACEHOLDER.length)]
}

/**
 * The offset of a stored packet read from the text of its notification (as this package writes
 * it: the offset is its last field), without parsing it; `undefined` when it carries none.
 */
export const storedOffsetOf = (payload: string): string | undefined => {
  const at = payload.lastIndexOf(OFFSET_FIELD)
  if (at === -1) return undefined
  const offset = payload.slice(at + OFFSET_FIELD.length, -2)
  return isOffset(offset) ? offset : undefined
}

// msgpack encodes typed arrays and DataViews as binary, but a bare ArrayBuffer as an empty map:
// wrap those in a Uint8Array, copying only the arrays and plain objects on the way to one.
const viewArrayBuffers = (value: unknown, done: Map<object, unknown>): unknown => {
  if (value instanceof ArrayBuffer) return new Uint8Array(value)
  if (value === null || typeof value !== "object") return value
  // Shared or cyclic: reuse the first result (msgpack rejects cycles itself).
  if (done.has(value)) return done.get(value)
  done.set(value, value)
  let result: unknown = value
  if (Array.isArray(value)) {
    const items = value.map((item) => viewArrayBuffers(item, done))
    if (items.some((item, i) => item !== value[i])) result = items
  } else {
    const proto = Object.getPrototypeOf(value)
    if (proto !== Object.prototype && proto !== null) return value
    let copy: Record<string, unknown> | undefined
    for (const key of Object.keys(value)) {
      // msgpack decoders refuse this key: fail here, with a reason, rather than on every receiver.
      if (key === "__proto__") {
        throw new TypeError("an object key named __proto__ cannot go through the attachments table")
      }
      const item = (value as Record<string, unknown>)[key]
      const viewed = viewArrayBuffers(item, done)
      if (viewed !== item) (copy ??= { ...(value as Record<string, unknown>) })[key] = viewed
    }
    if (copy !== undefined) result = copy
  }
  done.set(value, result)
  return result
}

const isRecord = (u: unknown): u is Record<string, unknown> =>
  typeof u === "object" && u !== null && !Array.isArray(u)

/** Parses a notification payload; `Failure` of a reason for anything that is not ours. */
export const decodeNotification = (payload: string): Result.Result<Notification, string> => {
  let parsed: unknown
  try {
    parsed = JSON.parse(payload)
  } catch {
    return Result.fail("payload is not JSON")
  }
  if (!isRecord(parsed)) return Result.fail("payload is not a JSON object")
  const { uid, type, nsp, attachmentId } = parsed
  if (typeof uid !== "string") return Result.fail("uid is missing or not a string")
  if (typeof type !== "number" || !Number.isInteger(type)) {
    return Result.fail("type is missing or not an integer")
  }
  if (nsp !== undefined && typeof nsp !== "string") return Result.fail("nsp is not a string")
  if (attachmentId !== undefined) {
    if (typeof attachmentId !== "string" && typeof attachmentId !== "number") {
      return Result.fail("attachmentId is not a string or number")
    }
    const id = String(attachmentId)
    if (!/^\d{1,19}$/.test(id) || BigInt(id) > MAX_BIGINT) {
      return Result.fail("attachmentId is not a row id")
    }
    const notification: Notification = {
      _tag: "Attachment",
      uid,
      type,
      nsp,
      attachmentId: id,
      ...(typeof parsed.requestId === "string" ? { requestId: parsed.requestId } : {}),
      ...(isOffset(parsed.offset) ? { offset: parsed.offset } : {}),
    }
    return Result.succeed(notification)
  }
  return Result.succeed({ _tag: "Inline", message: parsed as WireMessage })
}

/** Decodes an attachment back into its message; binary values come back as `Buffer`s. */
export const decodeAttachment = (bytes: Uint8Array): Result.Result<WireMessage, string> => {
  let decoded: unknown
  try {
    decoded = msgpackDecode(bytes)
  } catch (e) {
    return Result.fail(`attachment is not msgpack: ${(e as Error).message}`)
  }
  if (!isRecord(decoded) || typeof decoded.uid !== "string" || typeof decoded.type !== "number") {
    return Result.fail("attachment does not hold a cluster message")
  }
  return Result.succeed(toBuffers(decoded) as WireMessage)
}

// msgpack decodes binary as Uint8Array; Socket.IO users expect the Buffers they sent.
const toBuffers = (value: unknown): unknown => {
  if (value instanceof Uint8Array) {
    return Buffer.isBuffer(value)
      ? value
      : Buffer.from(value.buffer, value.byteOffset, value.byteLength)
  }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) value[i] = toBuffers(value[i])
    return value
  }
  if (isRecord(value)) {
    for (const key of Object.keys(value)) value[key] = toBuffers(value[key])
  }
  return value
}

const isStringArray = (u: unknown): boolean =>
  Array.isArray(u) && u.every((s) => typeof s === "string" || typeof s === "number")

const validOpts = (opts: unknown): boolean =>
  isRecord(opts) &&
  isStringArray(opts.rooms) &&
  isStringArray(opts.except) &&
  (opts.flags === undefined || isRecord(opts.flags))

/** Event names Socket.IO reserves: clients' parsers refuse them, emitters must not send them. */
export const RESERVED_EVENTS: ReadonlySet<string> = new Set([
  "connect",
  "connect_error",
  "disconnect",
  "disconnecting",
  "newListener",
  "removeListener",
])

// What Socket.IO broadcasts: an EVENT (type 2) whose data starts with an event name, maybe with
// an ack id. Anything else is forwarded to the clients as is, and a packet their parser rejects
// (another type, no event name, a reserved one) makes every one of them drop its connection.
const validBroadcastPacket = (packet: unknown): boolean => {
  if (!isRecord(packet) || packet.type !== 2) return false
  const data = packet.data
  if (!Array.isArray(data) || data.length === 0) return false
  const event = data[0]
  if (typeof event !== "number" && (typeof event !== "string" || RESERVED_EVENTS.has(event))) {
    return false
  }
  const id = packet.id
  return id === undefined || (typeof id === "number" && Number.isSafeInteger(id) && id >= 0)
}

/**
 * Checks that a message has the shape its type requires, so that malformed input from another
 * program is skipped with a reason instead of throwing inside Socket.IO. `undefined` when valid.
 */
export const validateMessage = (message: WireMessage): string | undefined => {
  const data = message.data
  switch (message.type) {
    case MessageType.INITIAL_HEARTBEAT:
    case MessageType.HEARTBEAT:
    case MessageType.ADAPTER_CLOSE:
      return undefined
    case MessageType.BROADCAST:
      return isRecord(data) && validOpts(data.opts) && validBroadcastPacket(data.packet)
        ? undefined
        : "BROADCAST needs data.opts and data.packet (an EVENT packet with an event name)"
    case MessageType.SOCKETS_JOIN:
    case MessageType.SOCKETS_LEAVE:
      return isRecord(data) && validOpts(data.opts) && isStringArray(data.rooms)
        ? undefined
        : "SOCKETS_JOIN/LEAVE needs data.opts and data.rooms"
    case MessageType.DISCONNECT_SOCKETS:
      return isRecord(data) && validOpts(data.opts)
        ? undefined
        : "DISCONNECT_SOCKETS needs data.opts"
    case MessageType.FETCH_SOCKETS:
      return isRecord(data) && validOpts(data.opts) && typeof data.requestId === "string"
        ? undefined
        : "FETCH_SOCKETS needs data.opts and data.requestId"
    case MessageType.SERVER_SIDE_EMIT:
      return isRecord(data) && Array.isArray(data.packet) && data.packet.length > 0
        ? undefined
        : "SERVER_SIDE_EMIT needs data.packet (an array)"
    case MessageType.FETCH_SOCKETS_RESPONSE:
      return isRecord(data) && typeof data.requestId === "string" && Array.isArray(data.sockets)
        ? undefined
        : "FETCH_SOCKETS_RESPONSE needs data.requestId and data.sockets"
    case MessageType.SERVER_SIDE_EMIT_RESPONSE:
    case MessageType.BROADCAST_ACK:
      return isRecord(data) && typeof data.requestId === "string"
        ? undefined
        : "response needs data.requestId"
    case MessageType.BROADCAST_CLIENT_COUNT:
      return isRecord(data) &&
        typeof data.requestId === "string" &&
        typeof data.clientCount === "number"
        ? undefined
        : "BROADCAST_CLIENT_COUNT needs data.requestId and data.clientCount"
    default:
      return `unknown message type ${message.type}`
  }
}
