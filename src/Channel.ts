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

/** Quotes a possibly schema-qualified table name (`table` or `schema.table`). */
export const quoteTableName = (tableName: string): string =>
  tableName.split(".").map(quoteIdentifier).join(".")
