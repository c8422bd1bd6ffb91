/**
 * The connection state recovery tables of a prefix, and their DDL.
 *
 * - `<prefix>_offsets`: one counter row per namespace. The Publisher takes each stored packet's
 *   offset from it in the statement that stores the packet (see `PacketStore.storeSql`); the row
 *   stays locked until commit, so offsets are consecutive and become visible in their order (no
 *   gap a reader could skip for good, unlike a `bigserial` read by "every id above mine").
 *   `cleaned` is the highest offset deleted by the cleanup: an offset below it may have lost
 *   packets after it.
 * - `<prefix>_packets`: the stored broadcasts, keyed by `(nsp, offset)`.
 * - `<prefix>_sessions`: sockets by private id. A connected socket's row is "live" (no expiry) and
 *   names the backend pid of its server's LISTEN connection: when that backend is gone (the server
 *   was killed), the row can be restored. A disconnected socket's row expires
 *   `maxDisconnectionDuration` after the disconnection.
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import * as Ref from "effect/Ref"
import { quoteIdentifier, quoteTableName, shortIdentifier } from "../Channel.js"
import { retryCatalogRace, type Database } from "../Database.js"
import type { DatabaseError } from "../Errors.js"

/** The tables' quoted names for a prefix, their schema's, and their indexes'. */
export interface TableNames {
  readonly schema: string | undefined
  readonly packets: string
  readonly sessions: string
  readonly offsets: string
  readonly packetsCreatedAt: string
  readonly sessionsExpiresAt: string
}

/** The tables' quoted names for a prefix (may be `schema.prefix`), and their index names. */
export const tableNames = (prefix: string): TableNames => {
  const dot = prefix.lastIndexOf(".")
  const schema = dot === -1 ? undefined : prefix.slice(0, dot)
  const base = prefix.slice(dot + 1)
  // Indexes live in their table's schema: only their own name is given.
  const index = (suffix: string) => quoteIdentifier(shortIdentifier(`${base}_${suffix}`))
  return {
    schema: schema === undefined ? undefined : quoteIdentifier(schema),
    packets: quoteTableName(`${prefix}_packets`),
    sessions: quoteTableName(`${prefix}_sessions`),
    offsets: quoteTableName(`${prefix}_offsets`),
    packetsCreatedAt: index("packets_created_at"),
    sessionsExpiresAt: index("sessions_expires_at"),
  }
}

/** The statements that create the tables and their indexes when missing, in order. */
export const ddl = (t: TableNames): ReadonlyArray<string> => [
  ...(t.schema === undefined ? [] : [`CREATE SCHEMA IF NOT EXISTS ${t.schema}`]),
  `CREATE TABLE IF NOT EXISTS ${t.offsets} (nsp text PRIMARY KEY, last bigint NOT NULL, ` +
    `notified bigint NOT NULL DEFAULT 0, prev_notified bigint NOT NULL DEFAULT 0, cleaned bigint NOT NULL DEFAULT 0)`,
  `CREATE TABLE IF NOT EXISTS ${t.packets} (nsp text NOT NULL, "offset" bigint NOT NULL, ` +
    `created_at timestamptz NOT NULL DEFAULT clock_timestamp(), rooms text[] NOT NULL, ` +
    `excepts text[] NOT NULL, data bytea NOT NULL, PRIMARY KEY (nsp, "offset"))`,
  `CREATE INDEX IF NOT EXISTS ${t.packetsCreatedAt} ON ${t.packets} (created_at)`,
  `CREATE TABLE IF NOT EXISTS ${t.sessions} (pid text PRIMARY KEY, nsp text NOT NULL, ` +
    `sid text NOT NULL, rooms text[] NOT NULL, data bytea NOT NULL, expires_at timestamptz, ` +
    `owner_pid int, owner_start timestamptz)`,
  `CREATE INDEX IF NOT EXISTS ${t.sessionsExpiresAt} ON ${t.sessions} (expires_at)`,
]

/**
 * An effect that creates the tables when missing: once it succeeded it does nothing, and a
 * failure is tried again by the next caller. Concurrent `CREATE … IF NOT EXISTS` of several
 * servers may collide in the catalog: retried a few times.
 */
export const makeEnsureTables = Effect.fnUntraced(function* (
  database: Database["Service"],
  t: TableNames,
) {
  const create = Effect.forEach(ddl(t), (statement) => database.query(statement), {
    discard: true,
  }).pipe(retryCatalogRace)
  const created = yield* Ref.make(false)
  return Effect.suspend(() =>
    Ref.get(created).pipe(
      Effect.flatMap((done) =>
        done ? Effect.void : create.pipe(Effect.andThen(Ref.set(created, true))),
      ),
    ),
  ) as Effect.Effect<void, DatabaseError>
})
