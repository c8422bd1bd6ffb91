/**
 * The sessions of connection state recovery: live rows of connected sockets (tied to their
 * server's LISTEN backend, so that they survive that server being killed), rows of disconnected
 * sockets (expiring), restores, and the cleanup of expired rows.
 *
 * @since 0.2.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Result from "effect/Result"
import * as Codec from "../Codec.js"
import { AdapterConfig, keysOf } from "../AdapterConfig.js"
import { Database, withTimeout } from "../Database.js"
import { type DatabaseError, RecoveryError } from "../Errors.js"
import * as Signing from "../Signing.js"
import { openPacket } from "./PacketStore.js"
import { type TableNames, tableNames } from "./Tables.js"

/** What Socket.IO hands to `persistSession`, with the namespace. */
export interface SessionToPersist {
  readonly nsp: string
  readonly sid: string
  readonly pid: string
  readonly rooms: ReadonlyArray<string>
  readonly data: unknown
}

/** A restored session: what Socket.IO's `restoreSession` returns, plus the last offset read. */
export interface RestoredSession {
  readonly sid: string
  readonly pid: string
  readonly rooms: Array<string>
  readonly data: unknown
  /** Missed packets' args, in offset order, each ending with its offset. */
  readonly missedPackets: Array<Array<unknown>>
  /** The namespace's last offset when the packets were read: later ones arrive live. */
  readonly last: bigint
}

/** The SessionStore service. */
export class SessionStore extends Context.Service<
  SessionStore,
  {
    /** Saves connected sockets' sessions, tied to `ownerPid` (a LISTEN connection's backend). */
    readonly persistLive: (
      sessions: ReadonlyArray<Omit<SessionToPersist, "nsp">>,
      nsp: string,
      ownerPid: number,
    ) => Effect.Effect<void, DatabaseError>
    /** Forgets live sessions (their sockets left for good). */
    readonly forget: (pids: ReadonlyArray<string>) => Effect.Effect<void, DatabaseError>
    /** Saves disconnected sockets' sessions until `maxDisconnection` has passed. */
    readonly persistAll: (
      sessions: ReadonlyArray<SessionToPersist>,
      maxDisconnection: Duration.Duration,
    ) => Effect.Effect<void, DatabaseError | RecoveryError>
    /**
     * Takes a session (at most one restore wins) with the packets it missed: `undefined` when it
     * is unknown, expired, or its offset is unknown or older than what the cleanup kept.
     */
    readonly restore: (
      nsp: string,
      pid: string,
      offset: string,
    ) => Effect.Effect<RestoredSession | undefined, DatabaseError>
    /**
     * Starts expiring, `maxDisconnection` from now, the live sessions whose owner's backend is
     * gone, and deletes the expired ones; resolves with the count deleted.
     */
    readonly cleanup: (maxDisconnection: Duration.Duration) => Effect.Effect<number, DatabaseError>
  }
>()("socket.io-postgres-effect/SessionStore") {}

const seconds = (duration: Duration.Duration) => Duration.toMillis(duration) / 1000

const toBuffer = (bytes: Uint8Array) =>
  Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)

const chunks = <A>(items: ReadonlyArray<A>, size: number): Array<ReadonlyArray<A>> => {
  const result: Array<ReadonlyArray<A>> = []
  for (let i = 0; i < items.length; i += size) result.push(items.slice(i, i + size))
  return result
}

// What a session row's MAC covers besides its data: it is valid for this pid, namespace and sid only.
const sessionFields = (pid: string, nsp: string, sid: string, rooms: ReadonlyArray<string>) => [
  pid,
  nsp,
  sid,
  rooms,
]

// Sessions whose data cannot be encoded are left out (reported by persistAll); signed when the
// cluster signs.
const encodeSession =
  (keys: Signing.Keys | undefined, nsp: string | undefined) =>
  <S extends Omit<SessionToPersist, "nsp"> & { readonly nsp?: string }>(session: S) => {
    try {
      const bytes = Codec.encodePacketData([session.data])
      const fields = sessionFields(session.pid, nsp ?? session.nsp!, session.sid, session.rooms)
      const data =
        keys === undefined ? bytes : Signing.sealRecord(keys, Signing.SESSION, fields, bytes)
      return [{ session, data: toBuffer(data) }]
    } catch {
      return []
    }
  }

/** Rows per statement. */
const CHUNK = 1000

// A live row's owner is gone: no backend with its pid and start time (pids are reused).
const ownerGone =
  `NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = s.owner_pid ` +
  `AND a.backend_start IS NOT DISTINCT FROM s.owner_start)`

// A row written at a disconnection (no owner) must not be brought back to life by a late live
// write; a live row that the cleanup started expiring (its owner's LISTEN backend changed) is live
// again.
const persistLiveSql = (t: TableNames, rows: ReadonlyArray<string>) =>
  `INSERT INTO ${t.sessions} AS s (pid, nsp, sid, rooms, data, expires_at, owner_pid, owner_start) ` +
  `SELECT v.*, NULL::timestamptz, $2::int, (SELECT backend_start FROM pg_stat_activity WHERE pid = $2) ` +
  `FROM (VALUES ${rows.join(", ")}) AS v ON CONFLICT (pid) DO UPDATE SET nsp = EXCLUDED.nsp, ` +
  `sid = EXCLUDED.sid, rooms = EXCLUDED.rooms, data = EXCLUDED.data, expires_at = NULL, ` +
  `owner_pid = EXCLUDED.owner_pid, owner_start = EXCLUDED.owner_start ` +
  `WHERE s.expires_at IS NULL OR s.owner_pid IS NOT NULL`

const persistAllSql = (t: TableNames, rows: ReadonlyArray<string>) =>
  `INSERT INTO ${t.sessions} (pid, nsp, sid, rooms, data, expires_at) VALUES ${rows.join(", ")} ` +
  `ON CONFLICT (pid) DO UPDATE SET nsp = EXCLUDED.nsp, sid = EXCLUDED.sid, ` +
  `rooms = EXCLUDED.rooms, data = EXCLUDED.data, expires_at = EXCLUDED.expires_at, ` +
  `owner_pid = NULL, owner_start = NULL`

// One statement, one snapshot: the session (deleted, so one restore wins), the namespace's last
// offset, and the packets after the client's offset up to it that match its rooms.
const restoreSql = (t: TableNames) =>
  `WITH s AS (DELETE FROM ${t.sessions} s WHERE pid = $1 AND nsp = $2 ` +
  `AND (s.expires_at IS NOT NULL OR ${ownerGone}) RETURNING sid, rooms, data, expires_at), ` +
  `ok AS (SELECT s.sid, s.rooms, s.data, o.last FROM s JOIN ${t.offsets} o ON o.nsp = $2 ` +
  `WHERE (s.expires_at IS NULL OR s.expires_at > now()) AND $3::bigint >= o.cleaned AND $3::bigint <= o.last) ` +
  `SELECT 0 AS kind, ok.sid, ok.rooms, NULL::text[] AS excepts, ok.data, ok.last AS n FROM ok ` +
  `UNION ALL SELECT 1, NULL, p.rooms, p.excepts, p.data, p."offset" FROM ${t.packets} p, ok ` +
  `WHERE p.nsp = $2 AND p."offset" > $3::bigint AND p."offset" <= ok.last ` +
  `AND (cardinality(p.rooms) = 0 OR p.rooms && ok.rooms) AND NOT (p.excepts && ok.rooms) ` +
  `ORDER BY kind, n`

/** A row of {@link restoreSql}: the session first (kind 0), then its missed packets. */
interface RestoreRow {
  readonly kind: number
  readonly sid: string | null
  /** The session's rooms (kind 0), or the packet's. */
  readonly rooms: Array<string> | null
  readonly excepts: Array<string> | null
  readonly data: Buffer
  readonly n: string
}

const restored = (
  keys: Signing.Keys | undefined,
  nsp: string,
  pid: string,
  rows: ReadonlyArray<RestoreRow>,
) => {
  const head = rows[0]
  if (head === undefined || head.kind !== 0) return Effect.succeed(undefined)
  const bytes =
    keys === undefined
      ? head.data
      : Signing.openRecord(
          keys,
          Signing.SESSION,
          sessionFields(pid, nsp, head.sid!, head.rooms!),
          head.data,
        )
  if (bytes === undefined) {
    return Effect.logWarning(
      `session ${head.sid}: failed authentication (unsigned or altered)`,
    ).pipe(Effect.as(undefined))
  }
  const data = Codec.decodePacketData(bytes)
  if (Result.isFailure(data)) {
    return Effect.logWarning(`session ${head.sid}: ${data.failure}`).pipe(Effect.as(undefined))
  }
  const missedPackets: Array<Array<unknown>> = []
  for (const row of rows.slice(1)) {
    const packet = openPacket(keys, nsp, row.rooms ?? [], row.excepts ?? [], row.data)
    if (packet === undefined) continue
    const args = Codec.decodePacketData(packet)
    // Unreadable rows cannot come from this package; the client simply misses them.
    if (Result.isSuccess(args)) missedPackets.push([...args.success, String(row.n)])
  }
  return Effect.succeed<RestoredSession | undefined>({
    sid: head.sid!,
    pid,
    rooms: head.rooms!,
    data: data.success[0],
    missedPackets,
    last: BigInt(head.n),
  })
}

/** Builds the store over the configured recovery tables. */
export const make = Effect.gen(function* () {
  const config = yield* AdapterConfig
  // A statement past its deadline ends, its connection discarded (see `Database.query`).
  const database = withTimeout(yield* Database, config.publishTimeout)
  const t = tableNames(config.recoveryTablePrefix)
  const keys = keysOf(config)

  const persistLive = (
    sessions: ReadonlyArray<Omit<SessionToPersist, "nsp">>,
    nsp: string,
    ownerPid: number,
  ) =>
    Effect.forEach(
      chunks(sessions.flatMap(encodeSession(keys, nsp)), CHUNK),
      (chunk) => {
        const params: Array<unknown> = [nsp, ownerPid]
        const rows = chunk.map(({ session, data }) => {
          params.push(session.pid, session.sid, session.rooms, data)
          const n = params.length
          return `($${n - 3}, $1, $${n - 2}, $${n - 1}::text[], $${n}::bytea)`
        })
        return database.query(persistLiveSql(t, rows), params)
      },
      { discard: true },
    )

  const forget = (pids: ReadonlyArray<string>) =>
    pids.length === 0
      ? Effect.void
      : database
          .query(`DELETE FROM ${t.sessions} WHERE pid = ANY($1) AND expires_at IS NULL`, [pids])
          .pipe(Effect.asVoid)

  // Sessions whose data cannot be encoded are left out, then reported.
  const persistAll = (
    sessions: ReadonlyArray<SessionToPersist>,
    maxDisconnection: Duration.Duration,
  ) => {
    const encoded = sessions.flatMap(encodeSession(keys, undefined))
    const written = new Set(encoded.map((e) => e.session))
    const failed = sessions.filter((session) => !written.has(session))
    return Effect.forEach(
      chunks(encoded, CHUNK),
      (chunk) => {
        const params: Array<unknown> = [seconds(maxDisconnection)]
        const rows = chunk.map(({ session, data }) => {
          params.push(session.pid, session.nsp, session.sid, session.rooms, data)
          const n = params.length
          return `($${n - 4}, $${n - 3}, $${n - 2}, $${n - 1}::text[], $${n}::bytea, now() + make_interval(secs => $1))`
        })
        return database.query(persistAllSql(t, rows), params)
      },
      { discard: true },
    ).pipe(
      Effect.andThen(
        failed.length === 0
          ? Effect.void
          : Effect.fail(
              new RecoveryError({
                message: `socket.data of ${failed.map((f) => f.sid).join(", ")} cannot be stored`,
              }),
            ),
      ),
    )
  }

  const restoreStatement = restoreSql(t)
  const restore = (nsp: string, pid: string, offset: string) =>
    Codec.isOffset(offset)
      ? database
          .query<RestoreRow>(restoreStatement, [pid, nsp, offset], config.requestsTimeout)
          .pipe(Effect.flatMap((rows) => restored(keys, nsp, pid, rows)))
      : Effect.succeed(undefined)

  // Live sessions whose server's LISTEN backend is gone start expiring now.
  const cleanup = (maxDisconnection: Duration.Duration) =>
    database
      .query(
        `UPDATE ${t.sessions} s SET expires_at = now() + make_interval(secs => $1) ` +
          `WHERE s.expires_at IS NULL AND ${ownerGone}`,
        [seconds(maxDisconnection)],
      )
      .pipe(
        Effect.andThen(
          database.query<{ n: number }>(
            `WITH d AS (DELETE FROM ${t.sessions} WHERE expires_at < now() RETURNING 1) SELECT count(*)::int AS n FROM d`,
          ),
        ),
        Effect.map((rows) => Number(rows[0]?.n ?? 0)),
      )

  return SessionStore.of({ persistLive, forget, persistAll, restore, cleanup })
})

/** The SessionStore layer; needs `AdapterConfig` and `Database`. */
export const layer: Layer.Layer<SessionStore, never, AdapterConfig | Database> = Layer.effect(
  SessionStore,
  make,
)
