/**
 * The wire format: how a cluster message becomes a NOTIFY payload or an attachment, and back.
 * What a message may hold is the protocol's business (`Protocol.decodeMessage` checks what these
 * decoders give back); here, how it travels.
 *
 * @since 0.1.0
 */
import { Decoder, Encoder } from "@msgpack/msgpack"
import { constants as zlibConstants, deflateRawSync, inflateRawSync } from "node:zlib"
import * as Result from "effect/Result"
import { MAX_NOTIFY_BYTES } from "./AdapterConfig.js"
import * as Protocol from "./Protocol.js"

export { EMITTER_UID, isOffset, MessageType, RESERVED_EVENTS } from "./Protocol.js"

/**
 * What `encode` takes: a message with `uid` first (receivers recognise their own notifications by
 * that prefix, unparsed), `type`, usually `nsp` and `data`; a stored broadcast's `offset` last.
 */
export interface WireMessage {
  readonly uid: string
  readonly type: number
  readonly nsp?: string
  readonly data?: unknown
  readonly [key: string]: unknown
}

/**
 * What a notification carries: a whole message (not checked against the protocol yet), the id
 * of an attachment that holds it, or one part of a packed message too large for one notification.
 */
export type Notification =
  | { readonly _tag: "Inline"; readonly message: WireMessage }
  | Part
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

/**
 * One part of a packed message: its base64 text is the slice `part` of `parts`; parts of one
 * message share `mid` and arrive one after the other (one statement sends them all).
 */
export interface Part {
  readonly _tag: "Part"
  readonly uid: string
  readonly type: number
  readonly nsp: string | undefined
  /** Set on responses, so that nodes other than the requester skip the parts. */
  readonly requestId?: string | undefined
  readonly mid: string
  readonly part: number
  readonly parts: number
  /**
   * What the joined text is: the message's JSON, its msgpack in base64, or its JSON deflated
   * (raw deflate) in base64.
   */
  readonly enc: Encoding
  readonly text: string
}

/** How the text of a packed message is encoded: JSON, msgpack or deflated JSON (see `encode`). */
export type Encoding = "j" | "m" | "z"

/**
 * The version of our wire every node reading a channel speaks (`Capability.VERSION`), as `encode`
 * uses it: 0 when a node of another kind (0.5.0) reads it, 1 for packed messages, 2 for packed
 * messages whose JSON is deflated.
 */
export type Wire = 0 | 1 | 2

/**
 * The largest JSON (in UTF-8 bytes) that is sent deflated, and the most bytes a deflated text may
 * inflate to: a small notification cannot make a receiver inflate more (a deflate bomb).
 */
export const MAX_INFLATED_BYTES = 16 * 1024 * 1024

/** How a message is to be sent. */
export type Encoded =
  | { readonly _tag: "Inline"; readonly payload: string }
  /** A packed message in several notifications, sent in this order by one statement. */
  | { readonly _tag: "Parts"; readonly payloads: ReadonlyArray<string> }
  | {
      readonly _tag: "Attachment"
      readonly bytes: Uint8Array
      readonly header: (id: string) => string
    }

// One encoder for the process: its buffer grows once instead of once per message. One decoder too
// (the package's `decode` makes one per call); both are safe to re-enter.
const encoder = new Encoder({ ignoreUndefined: true, initialBufferSize: 64 * 1024 })
const decoder = new Decoder()

const MAX_BIGINT = 2n ** 63n - 1n

/** Depth from which `hasBinary` remembers what it visited: shallower, no cycle can hide. */
const CYCLE_DEPTH = 32

/** True when `value` holds a Buffer, ArrayBuffer or typed array at any depth. */
export const hasBinary = (value: unknown): boolean => binaryIn(value, 0, undefined)

// Every published message is walked: the set that guards against cycles is only made for deep
// values (a cycle gets deep), not for each message.
const binaryIn = (value: unknown, depth: number, seen: Set<object> | undefined): boolean => {
  if (value === null || typeof value !== "object") return false
  if (value instanceof ArrayBuffer || ArrayBuffer.isView(value)) return true
  let visited = seen
  if (depth >= CYCLE_DEPTH) {
    visited ??= new Set<object>()
    if (visited.has(value)) return false
    visited.add(value)
  }
  const next = depth + 1
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) if (binaryIn(value[i], next, visited)) return true
    return false
  }
  const toJSON = (value as { toJSON?: unknown }).toJSON
  if (typeof toJSON === "function") return binaryIn(toJSON.call(value), next, visited)
  for (const key in value) {
    if (
      Object.prototype.hasOwnProperty.call(value, key) &&
      binaryIn((value as Record<string, unknown>)[key], next, visited)
    ) {
      return true
    }
  }
  return false
}

/** The most parts a packed message may have (about 7.9 KB each): larger ones take the table. */
export const MAX_PARTS = 1024

/**
 * Decides how a message travels: inline JSON when it holds no binary and its JSON is at most
 * `min(threshold, 7999 - overhead)` bytes. Otherwise, with `wire` 1 or more (every node of the
 * cluster is ours), packed in the notifications: msgpack (with binary) or, from `wire` 2, the JSON
 * deflated, as base64, alone when it fits in one notification, else in several parts (or, for a
 * JSON that deflating would not shrink and at `wire` 1, the JSON itself in parts). A stored
 * broadcast, whose offset goes in one notification, is packed only when it fits in one. Otherwise
 * msgpack into the attachments table with a JSON header, as 0.5.0 reads it. `overhead`: bytes
 * something (a signature envelope) will add in front of each payload.
 */
export const encode = (
  message: WireMessage,
  threshold: number,
  overhead = 0,
  wire: Wire = 0,
): Encoded => {
  const max = MAX_NOTIFY_BYTES - overhead
  const limit = Math.min(threshold, max)
  let json: string | undefined
  if (!hasBinary(message)) {
    json = JSON.stringify(message)
    // UTF-8 needs at most 3 bytes per UTF-16 unit: skip the byte count when it surely fits.
    if (json.length * 3 <= limit || Buffer.byteLength(json) <= limit) {
      return { _tag: "Inline", payload: json }
    }
  }
  if (wire >= 1) {
    const encoded = pack(message, json, limit, max, wire >= 2)
    if (encoded !== undefined) return encoded
  }
  const bytes = encoder.encode(viewed(message))
  return {
    _tag: "Attachment",
    bytes,
    header: (attachmentId) => {
      const requestId = Protocol.isResponse(message.type)
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
      return Buffer.byteLength(header) <= max
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

let lastMid = 0

// The JSON of a message deflated, in base64; `undefined` when that is not shorter than the JSON
// (text that is already dense, like base64 strings) or the JSON is too long to be inflated back.
const deflated = (json: string): string | undefined => {
  if (json.length > MAX_INFLATED_BYTES / 3 && Buffer.byteLength(json) > MAX_INFLATED_BYTES) {
    return undefined
  }
  const text = deflateRawSync(json, { level: zlibConstants.Z_BEST_SPEED }).toString("base64")
  return text.length < json.length ? text : undefined
}

// A packed message: its header (what receivers need before decoding it: uid first, type, nsp, the
// request an answer is for), then the message. Alone: its text (msgpack in base64 in `mp`, or its
// JSON deflated in base64 in `mz`) in the header. In parts: each part is the header with `mid`,
// `part`, `parts` and `enc`, a newline, and a slice of the text (or of the message's JSON as it is,
// which holds no raw newline). `undefined` when it takes the table instead: a stored broadcast too
// large for one notification, a namespace name of kilobytes, more than MAX_PARTS parts.
const pack = (
  message: WireMessage,
  json: string | undefined,
  limit: number,
  max: number,
  deflate: boolean,
): Encoded | undefined => {
  const { offset, ...rest } = message
  const requestId = Protocol.isResponse(message.type)
    ? (message.data as { requestId?: unknown } | undefined)?.requestId
    : undefined
  const head = JSON.stringify({
    uid: message.uid,
    type: message.type,
    nsp: message.nsp,
    requestId: typeof requestId === "string" ? requestId : undefined,
  }).slice(0, -1)
  const stored = typeof offset === "string"
  // The offset travels in the header, not in the text (see withOffsetPlaceholder).
  const zipped =
    json !== undefined && deflate ? deflated(stored ? JSON.stringify(rest) : json) : undefined
  if (json !== undefined && zipped === undefined && !stored) {
    return split(head, Buffer.from(json), "j", max)
  }
  const enc = zipped === undefined ? "m" : "z"
  const text = zipped ?? msgpackBase64(rest)
  // `offset` last: its placeholder is found from the end (see splitAtOffsetPlaceholder).
  const tail = stored ? `,"offset":${JSON.stringify(offset)}}` : "}"
  const whole = `${head},"${enc === "m" ? "mp" : "mz"}":"${text}"${tail}`
  // Base64 is ASCII: only the header may hold wider characters.
  if (whole.length + Buffer.byteLength(head) - head.length <= limit) {
    return { _tag: "Inline", payload: whole }
  }
  if (stored) return undefined
  return split(head, Buffer.from(text, "latin1"), enc, max)
}

// The msgpack of a value in base64, from a view of the encoder's buffer read at once (no copy of
// the bytes before base64).
const msgpackBase64 = (value: unknown): string => {
  const bytes = encoder.encodeSharedRef(viewed(value))
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64")
}

// The parts of a packed message's text (as UTF-8), cut between characters.
const split = (head: string, bytes: Buffer, enc: Encoding, max: number): Encoded | undefined => {
  const mid = (++lastMid).toString(36)
  const frame = (part: number, parts: number) =>
    `${head},"mid":"${mid}","part":${part},"parts":${parts},"enc":"${enc}"}\n`
  const room = max - Buffer.byteLength(frame(MAX_PARTS, MAX_PARTS))
  if (room < 1024) return undefined
  const ends: Array<number> = []
  for (let start = 0; start < bytes.length;) {
    let end = Math.min(start + room, bytes.length)
    // Never inside a UTF-8 sequence: continuation bytes are 10xxxxxx.
    while (end < bytes.length && (bytes[end]! & 0xc0) === 0x80) end--
    ends.push(end)
    start = end
  }
  const parts = ends.length
  if (parts > MAX_PARTS) return undefined
  const payloads: Array<string> = []
  let start = 0
  for (let i = 0; i < parts; i++) {
    payloads.push(frame(i, parts) + bytes.toString("utf8", start, ends[i]))
    start = ends[i]!
  }
  return { _tag: "Parts", payloads }
}

/**
 * The message of a packed notification (`mp` or `mz`, or parts joined), with the header's offset
 * (stored broadcasts); `Failure` of a reason when it is not one.
 */
export const unpack = (
  text: string,
  header: { readonly uid: string; readonly offset?: unknown; readonly enc?: Encoding },
): Result.Result<WireMessage, string> => {
  let decoded: Result.Result<WireMessage, string>
  if (header.enc === "m") {
    const bytes = fromBase64(text)
    if (bytes === undefined) return Result.fail("packed message is not base64")
    decoded = decodeAttachment(bytes)
  } else if (header.enc === "z") {
    const json = inflated(text)
    if (json === undefined) return Result.fail("packed message is not deflated JSON in base64")
    decoded = jsonMessage(json)
  } else {
    decoded = jsonMessage(text)
  }
  if (Result.isFailure(decoded)) {
    return Result.fail(`packed ${decoded.failure.replace(/^attachment /, "message ")}`)
  }
  if (decoded.success.uid !== header.uid) return Result.fail("packed message of another uid")
  return Result.succeed(
    Protocol.isOffset(header.offset)
      ? { ...decoded.success, offset: header.offset }
      : decoded.success,
  )
}

// The JSON text of deflated base64, at most MAX_INFLATED_BYTES; `undefined` when it is not one.
const inflated = (text: string): string | undefined => {
  const bytes = fromBase64(text)
  if (bytes === undefined) return undefined
  try {
    return inflateRawSync(bytes, { maxOutputLength: MAX_INFLATED_BYTES }).toString()
  } catch {
    return undefined
  }
}

const jsonMessage = (text: string): Result.Result<WireMessage, string> => {
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {
    return Result.fail("message is not JSON")
  }
  return isRecord(parsed) && typeof parsed.uid === "string" && typeof parsed.type === "number"
    ? Result.succeed(parsed as WireMessage)
    : Result.fail("message does not hold a cluster message")
}

/** The args of a stored packet (connection state recovery), as msgpack. */
export const encodePacketData = (data: ReadonlyArray<unknown>): Uint8Array =>
  encoder.encode(viewed(data))

/** Decodes stored packet args back; binary values come back as `Buffer`s. */
export const decodePacketData = (bytes: Uint8Array): Result.Result<Array<unknown>, string> => {
  let decoded: unknown
  try {
    decoded = decoder.decode(asBuffer(bytes))
  } catch (e) {
    return Result.fail(`stored packet is not msgpack: ${(e as Error).message}`)
  }
  return Array.isArray(decoded)
    ? Result.succeed(decoded)
    : Result.fail("stored packet is not an array")
}

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
  return Protocol.isOffset(offset) ? offset : undefined
}

/** What msgpack is to encode of `value`: itself, unless {@link viewArrayBuffers} has work. */
const viewed = (value: unknown): unknown =>
  needsViews(value, 0) ? viewArrayBuffers(value, new Map()) : value

/**
 * Whether {@link viewArrayBuffers} would change or refuse `value`: a bare ArrayBuffer, or a key
 * named `__proto__`, in its arrays and plain objects (what it walks). Walked without allocating:
 * every message with binary is; deep values (a cycle gets deep) are left to it, which handles
 * cycles.
 */
export const needsViews = (value: unknown, depth: number): boolean => {
  if (value instanceof ArrayBuffer) return true
  if (value === null || typeof value !== "object") return false
  if (depth >= CYCLE_DEPTH) return true
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) if (needsViews(value[i], depth + 1)) return true
    return false
  }
  const proto = Object.getPrototypeOf(value)
  if (proto !== Object.prototype && proto !== null) return false
  for (const key of Object.keys(value)) {
    if (key === "__proto__" || needsViews((value as Record<string, unknown>)[key], depth + 1)) {
      return true
    }
  }
  return false
}

/**
 * msgpack encodes typed arrays and DataViews as binary, but a bare ArrayBuffer as an empty map:
 * wraps those in a Uint8Array, copying only the arrays and plain objects on the way to one (`value`
 * itself when there is none). Exported for tests.
 *
 * @internal
 */
export const viewArrayBuffers = (value: unknown, done: Map<object, unknown>): unknown => {
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
  // A part of a packed message: a JSON header, a newline, a slice (JSON text holds no raw newline).
  const newline = payload.indexOf("\n")
  let parsed: unknown
  try {
    parsed = newline === -1 ? parsePayload(payload) : JSON.parse(payload.slice(0, newline))
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
  if (newline !== -1) return decodePart(parsed, uid, type, nsp, payload.slice(newline + 1))
  if (parsed.mp !== undefined || parsed.mz !== undefined) return decodePacked(parsed, uid)
  if (attachmentId !== undefined) {
    // Not worth a SELECT: a type no node sends.
    if (!Object.hasOwn(Protocol.members, type)) return Result.fail(`unknown message type ${type}`)
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
      ...(Protocol.isOffset(parsed.offset) ? { offset: parsed.offset } : {}),
    }
    return Result.succeed(notification)
  }
  return Result.succeed({ _tag: "Inline", message: parsed as WireMessage })
}

// What follows the text of a stored broadcast's packed notification.
const OFFSET_TAIL = /^,"offset":"\d{1,19}"\}$/

/**
 * `JSON.parse(payload)`, without parsing the base64 text that is most of a packed notification
 * (`{header,"mp":"text"}` or `"mz"`, an offset after it for stored broadcasts): its header is
 * parsed and the text sliced. An unescaped `,"` cannot be inside a JSON string, so the first
 * `,"mp":"` is a key of the header's object or of an object inside it; in the latter case the
 * header alone does not parse, and the whole payload goes to `JSON.parse`, as does any payload
 * not of that exact shape. Keys keep JSON's rule (the last of a name wins). Throws as it does.
 */
export const parsePayload = (payload: string): unknown => {
  if (payload.endsWith('"}')) {
    let at = payload.indexOf(',"mp":"')
    if (at === -1) at = payload.indexOf(',"mz":"')
    const end = at === -1 ? -1 : payload.indexOf('"', at + 7)
    const tail = end === -1 ? "" : payload.slice(end + 1)
    if (tail === "}" || OFFSET_TAIL.test(tail)) {
      const text = payload.slice(at + 7, end)
      let head: unknown
      try {
        head = text.includes("\\") ? undefined : JSON.parse(`${payload.slice(0, at)}}`)
      } catch {
        head = undefined
      }
      if (isRecord(head)) {
        head[payload[at + 3] === "p" ? "mp" : "mz"] = text
        if (tail !== "}") head["offset"] = tail.slice(11, -2)
        return head
      }
    }
  }
  return JSON.parse(payload)
}

// A part's slice of base64 text (its length need not be a multiple of 4).
const BASE64_CHARS = /^[A-Za-z0-9+/]*={0,2}$/

/**
 * The bytes of a base64 text, `undefined` when it is not one. Node's decoder skips characters
 * outside its alphabet and stops at padding, so such a text decodes to fewer bytes than its length
 * promises: checked by the length, not by a regular expression over the text (which cost more than
 * decoding it). Base64url's `-` and `_` decode as `+` and `/`.
 */
export const fromBase64 = (text: string): Buffer | undefined => {
  if (text.length % 4 !== 0) return undefined
  const bytes = Buffer.from(text, "base64")
  const padding = text.endsWith("==") ? 2 : text.endsWith("=") ? 1 : 0
  return bytes.length === (text.length / 4) * 3 - padding ? bytes : undefined
}

// A whole packed message.
const decodePacked = (
  parsed: Record<string, unknown>,
  uid: string,
): Result.Result<Notification, string> => {
  const { mp, mz } = parsed
  if (mp !== undefined && mz !== undefined) return Result.fail("both mp and mz")
  const text = mp ?? mz
  if (typeof text !== "string")
    return Result.fail(`${mp === undefined ? "mz" : "mp"} is not a string`)
  const message = unpack(text, { uid, offset: parsed.offset, enc: mp === undefined ? "z" : "m" })
  return Result.map(message, (m): Notification => ({ _tag: "Inline", message: m }))
}

// One part of a packed message.
const decodePart = (
  parsed: Record<string, unknown>,
  uid: string,
  type: number,
  nsp: string | undefined,
  text: string,
): Result.Result<Notification, string> => {
  const { mid, part, parts, enc } = parsed
  if (typeof mid !== "string" || mid.length === 0 || mid.length > 32) {
    return Result.fail("mid is not a message id")
  }
  if (
    !Number.isInteger(parts) ||
    !Number.isInteger(part) ||
    (parts as number) < 1 ||
    (parts as number) > MAX_PARTS ||
    (part as number) < 0 ||
    (part as number) >= (parts as number)
  ) {
    return Result.fail("part/parts are not a part of a packed message")
  }
  if (enc !== "j" && enc !== "m" && enc !== "z") return Result.fail("enc is not j, m or z")
  if (enc !== "j" && !BASE64_CHARS.test(text)) return Result.fail("part is not base64")
  if (!Object.hasOwn(Protocol.members, type)) return Result.fail(`unknown message type ${type}`)
  return Result.succeed({
    _tag: "Part",
    uid,
    type,
    nsp,
    ...(typeof parsed.requestId === "string" ? { requestId: parsed.requestId } : {}),
    mid,
    part: part as number,
    parts: parts as number,
    enc,
    text,
  })
}

/** Decodes an attachment back into its message; binary values come back as `Buffer`s. */
export const decodeAttachment = (bytes: Uint8Array): Result.Result<WireMessage, string> => {
  let decoded: unknown
  try {
    decoded = decoder.decode(asBuffer(bytes))
  } catch (e) {
    return Result.fail(`attachment is not msgpack: ${(e as Error).message}`)
  }
  if (!isRecord(decoded) || typeof decoded.uid !== "string" || typeof decoded.type !== "number") {
    return Result.fail("attachment does not hold a cluster message")
  }
  return Result.succeed(decoded as WireMessage)
}

/**
 * The bytes to decode as a Buffer (a view, not a copy): msgpack decodes binary as views of what it
 * reads, which are then Buffers, as Socket.IO users expect the binary they sent to come back.
 */
const asBuffer = (bytes: Uint8Array): Buffer =>
  Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
