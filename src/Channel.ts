/**
 * Channel names and SQL identifiers.
 *
 * PostgreSQL channel names are identifiers of at most 63 bytes: `LISTEN` silently truncates a
 * longer name while `pg_notify` rejects it, so a namespace whose channel would be longer is mapped
 * to a stable shortened form, the same on every node.
 *
 * @since 0.1.0
 */
import { createHash } from "node:crypto"

/** The longest identifier PostgreSQL keeps (NAMEDATALEN - 1). */
export const MAX_IDENTIFIER_BYTES = 63

const HASH_HEX_LENGTH = 16

/**
 * The channel of a namespace: `${prefix}#${nsp}` when it fits in 63 bytes (the wire format of
 * `@socket.io/postgres-adapter`), else the longest prefix of it that fits, cut on a character
 * boundary, then `~` and 16 hex digits of the SHA-256 of the full name.
 */
export const channelName = (prefix: string, nsp: string): string =>
  shortIdentifier(`${prefix}#${nsp}`)

/**
 * Which channels a server listens on (the Redis sharded adapter's option of the same name):
 * `"static"`, one per namespace; `"dynamic"`, public rooms too; `"dynamic-private"`, every room,
 * socket-id rooms included.
 */
export type SubscriptionMode = "static" | "dynamic" | "dynamic-private"

// What Socket.IO's ids look like: 15 random bytes in URL-safe base64.
const SOCKET_ID = /^[A-Za-z0-9_-]{20}$/

/**
 * Whether a room may be a socket's own room: its name looks like a Socket.IO socket id. Publishers
 * and listeners decide on the name alone, so they always agree, whoever holds the socket.
 */
export const looksLikeSocketId = (room: unknown): boolean =>
  typeof room === "string" && SOCKET_ID.test(room)

/** Whether a room has a channel of its own in this mode. */
export const hasRoomChannel = (mode: SubscriptionMode | undefined, room: unknown): boolean =>
  mode === "dynamic-private" || (mode === "dynamic" && !looksLikeSocketId(room))

/**
 * The channel of a room of a namespace in the dynamic modes: `${prefix}$${nsp}#${room}`, shortened
 * as namespace channels are when longer than 63 bytes. `$` after the prefix keeps room channels
 * apart from namespace channels (`${prefix}#…`), which 0.5.0 nodes and emitters may use.
 */
export const roomChannelName = (prefix: string, nsp: string, room: unknown): string =>
  shortIdentifier(`${prefix}$${nsp}#${String(room)}`)

/**
 * The room channel a broadcast without acknowledgement goes to: its one room's, when that room has
 * a channel in this mode; `undefined` (the namespace channel) otherwise.
 */
export const broadcastChannel = (
  config: {
    readonly channelPrefix: string
    readonly subscriptionMode?: SubscriptionMode | undefined
  },
  nsp: string,
  rooms: Iterable<unknown>,
): string | undefined => {
  const mode = config.subscriptionMode
  if (mode === undefined || mode === "static") return undefined
  let only: unknown
  let count = 0
  for (const room of rooms) {
    if (++count > 1) return undefined
    only = room
  }
  return count === 1 && hasRoomChannel(mode, only)
    ? roomChannelName(config.channelPrefix, nsp, only)
    : undefined
}

/**
 * The private channel of one namespace node in the dynamic modes with connection state recovery:
 * `${prefix}!${uid}` (shortened as namespace channels are). Only that node listens on it; a stored
 * packet for one of its own sockets is notified there, so that the node hears its offset in commit
 * order with the channels it listens on (see `recovery/Sequencer.ts`).
 */
export const privateChannelName = (prefix: string, uid: string): string =>
  shortIdentifier(`${prefix}!${uid}`)

/**
 * The server-level channel of a cluster: `${prefix}~servers` (shortened as namespace channels are).
 * Namespace channels are `${prefix}#/…`: no namespace's channel can be this one.
 */
export const serverChannelName = (prefix: string): string => shortIdentifier(`${prefix}~servers`)

/**
 * `name` when it is a valid identifier of at most 63 bytes, else its longest prefix that fits with
 * `~` and 16 hex digits of its SHA-256: stable, and distinct for distinct names.
 */
export const shortIdentifier = (name: string): string => {
  if (Buffer.byteLength(name) <= MAX_IDENTIFIER_BYTES && !name.includes("\u0000")) return name
  const hash = createHash("sha256").update(name).digest("hex").slice(0, HASH_HEX_LENGTH)
  const budget = MAX_IDENTIFIER_BYTES - HASH_HEX_LENGTH - 1
  return `${truncateUtf8(name.replaceAll("\u0000", ""), budget)}~${hash}`
}

/** The longest prefix of `s` whose UTF-8 encoding fits in `maxBytes`, never splitting a character. */
export const truncateUtf8 = (s: string, maxBytes: number): string => {
  let bytes = 0
  let end = 0
  for (const char of s) {
    const size = Buffer.byteLength(char)
    if (bytes + size > maxBytes) break
    bytes += size
    end += char.length
  }
  return s.slice(0, end)
}

/** Quotes one identifier for SQL: wrapped in double quotes, inner quotes doubled. */
export const quoteIdentifier = (identifier: string): string => {
  if (identifier.includes("\u0000")) throw new TypeError("identifier must not contain NUL")
  return `"${identifier.replaceAll('"', '""')}"`
}

/**
 * Quotes a string constant for SQL, read the same whatever `standard_conforming_strings` says: inner
 * quotes doubled, and with a backslash, an escape string (`E'…'`) with backslashes doubled.
 */
export const quoteLiteral = (text: string): string => {
  if (text.includes("\u0000")) throw new TypeError("a string constant must not contain NUL")
  const quoted = text.replaceAll("'", "''")
  return text.includes("\\") ? `E'${quoted.replaceAll("\\", "\\\\")}'` : `'${quoted}'`
}

/** Quotes a possibly schema-qualified table name (`table` or `schema.table`). */
export const quoteTableName = (tableName: string): string =>
  tableName.split(".").map(quoteIdentifier).join(".")
