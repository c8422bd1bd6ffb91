/**
 * Connection state recovery storage: the packets a client may have missed and the sessions of
 * disconnected sockets, in three tables of this package.
 *
 * - `<prefix>_offsets`: one counter row per namespace. The Publisher takes each stored packet's
 *   offset from it in the statement that stores the packet; the row stays locked until commit, so
 *   offsets are consecutive and become visible in their order (no gap a reader could skip for
 *   good, unlike a `bigserial` read by "every id above mine"). `cleaned` is the highest offset
 *   deleted by the cleanup: an offset below it may have lost packets after it.
 * - `<prefix>_packets`: the stored broadcasts, keyed by `(nsp, offset)`.
 * - `<prefix>_sessions`: sockets by private id. A connected socket's row is "live" (no expiry) and
 *   names the backend pid of its server's LISTEN connection: when that backend is gone (the server
 *   was killed), the row can be restored. A disconnected socket's row expires
 *   `maxDisconnectionDuration` after the disconnection.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Result from "effect/Result"
import * as Schedule from "effect/Schedule"
import { quoteIdentifier, quoteTableName, shortIdentifier } from "./Channel.js"
import * as Codec from "./Codec.js"
import { Config } from "./Config.js"
import { catalogRace, Database } from "./Database.js"
import { type DatabaseError, RecoveryError } from "./Errors.js"

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

/** A stored packet read back. */
export interface StoredRow {
  readonly offset: bigint
  readonly rooms: ReadonlyArray<string>
  readonly except: ReadonlyArray<string>
  /** The packet's args, without the offset. */
  readonly data: Array<unknown>
}

/** The Recovery service. */
export class Recovery extends Context.Service<
  Recovery,
  {
    /** Creates the three tables and their indexes when missing (once per service). */
    readonly ensureTables: Effect.Effect<void, DatabaseError>
    /**
     * Keeps packets at least `maxDisconnection` (plus one `cleanupInterval`) and starts the
     * cleanup; the longest duration asked for wins.
     */
    readonly retain: (maxDisconnection: Duration.Duration) => Effect.Effect<void>
    /**
     * Saves the sessions of connected sockets, tied to `ownerPid` (the backend pid of this
     * server's LISTEN connection), so that they survive this server being killed.
     */
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
    /** Saves a disconnected socket's session until `maxDisconnection` has passed. */
    readonly persist: (
      session: SessionToPersist,
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
    /** The namespace's last offset (0 before its first packet). */
    readonly lastOffset: (nsp: string) => Effect.Effect<bigint, DatabaseError>
    /**
     * The stored packets of a namespace after `offset` (at most `limit`), in order: what a server
     * missed while its LISTEN connection was down.
     */
    readonly packetsSince: (
      nsp: string,
      offset: bigint,
      limit: number,
    ) => Effect.Effect<ReadonlyArray<StoredRow>, DatabaseError>
    /** One cleanup pass: expired packets and sessions; resolves with the counts deleted. */
    readonly cleanup: Effect.Effect<{ readonly packets: number; readonly sessions: number }>
  }
>()("socket.io-postgres-effect/Recovery") {}

/** The tables' quoted names for a prefix, and their index names. */
export const tableNames = (prefix: string) => {
  const dot = prefix.lastIndexOf(".")
  const schema = dot === -1 ? undefined : prefix.slice(0, dot)
  const base = prefix.slice(dot + 1)
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

const seconds = (duration: Duration.Duration) => Duration.toMillis(duration) / 1000

/** Builds the service; the cleanup loop idles until a namespace asks for retention. */
export const make = Effect.gen(function* () {
  const config = yield* Config
  const database = yield* Database
  const t = tableNames(config.recoveryTablePrefix)
  // How long packets are kept, and the longest maxDisconnectionDuration asked for.
  const retention = yield* Ref.make(
    Option.none<{ readonly keep: Duration.Duration; readonly max: Duration.Duration }>(),
  )

  const createTables = Effect.gen(function* () {
    if (t.schema !== undefined) yield* database.query(`CREATE SCHEMA IF NOT EXISTS ${t.schema}`)
    yield* database.query(
      `CREATE TABLE IF NOT EXISTS ${t.offsets} (nsp text PRIMARY KEY, last bigint NOT NULL, ` +
        `notified bigint NOT NULL DEFAULT 0, prev_notified bigint NOT NULL DEFAULT 0, cleaned bigint NOT NULL DEFAULT 0)`,
    )
    yield* database.query(
      `CREATE TABLE IF NOT EXISTS ${t.packets} (nsp text NOT NULL, "offset" bigint NOT NULL, ` +
        `created_at timestamptz NOT NULL DEFAULT clock_timestamp(), rooms text[] NOT NULL, ` +
        `excepts text[] NOT NULL, data bytea NOT NULL, PRIMARY KEY (nsp, "offset"))`,
    )
    yield* database.query(
      `CREATE INDEX IF NOT EXISTS ${t.packetsCreatedAt} ON ${t.packets} (created_at)`,
    )
    yield* database.query(
      `CREATE TABLE IF NOT EXISTS ${t.sessions} (pid text PRIMARY KEY, nsp text NOT NULL, ` +
        `sid text NOT NULL, rooms text[] NOT NULL, data bytea NOT NULL, expires_at timestamptz, ` +
        `owner_pid int, owner_start timestamptz)`,
    )
    yield* database.query(
      `CREATE INDEX IF NOT EXISTS ${t.sessionsExpiresAt} ON ${t.sessions} (expires_at)`,
    )
  }).pipe(Effect.retry(catalogRace))
  // Once it succeeded; a failure is tried again by the next caller.
  const created = yield* Ref.make(false)
  const ensureTables = Effect.suspend(() =>
    Ref.get(created).pipe(
      Effect.flatMap((done) =>
        done ? Effect.void : createTables.pipe(Effect.andThen(Ref.set(created, true))),
      ),
    ),
  )

  // Live sessions whose server's LISTEN backend is gone start expiring now.
  // A backend is its pid and its start time: pids are reused.
  const ownerGone =
    `NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = s.owner_pid ` +
    `AND a.backend_start IS NOT DISTINCT FROM s.owner_start)`
  const deleteExpired = ({ keep, max }: { keep: Duration.Duration; max: Duration.Duration }) =>
    Effect.all({
      orphans: database.query(
        `UPDATE ${t.sessions} s SET expires_at = now() + make_interval(secs => $1) WHERE s.expires_at IS NULL AND ${ownerGone}`,
        [seconds(max)],
      ),
      packets: database.query<{ n: number }>(
        // One server at a time (the others skip this pass): two would do the same work, and
        // could deadlock on the counter rows they update.
        `WITH l AS (SELECT pg_try_advisory_xact_lock(hashtext($2)) AS got), ` +
          `d AS (DELETE FROM ${t.packets} WHERE (SELECT got FROM l) ` +
          `AND created_at < now() - make_interval(secs => $1) RETURNING nsp, "offset"), ` +
          `m AS (SELECT nsp, max("offset") AS m, count(*) AS n FROM d GROUP BY nsp ORDER BY nsp), ` +
          `u AS (UPDATE ${t.offsets} o SET cleaned = GREATEST(o.cleaned, m.m) FROM m WHERE o.nsp = m.nsp) ` +
          `SELECT coalesce(sum(n), 0)::int AS n FROM m`,
        [seconds(keep), t.packets],
      ),
      sessions: database.query<{ n: number }>(
        `WITH d AS (DELETE FROM ${t.sessions} WHERE expires_at < now() RETURNING 1) SELECT count(*)::int AS n FROM d`,
      ),
    }).pipe(
      Effect.map(({ packets, sessions }) => ({
        packets: Number(packets[0]?.n ?? 0),
        sessions: Number(sessions[0]?.n ?? 0),
      })),
    )

  const cleanup = Ref.get(retention).pipe(
    Effect.flatMap(
      Option.match({
        onNone: () => Effect.succeed({ packets: 0, sessions: 0 }),
        onSome: deleteExpired,
      }),
    ),
    Effect.tap(({ packets, sessions }) =>
      packets + sessions > 0
        ? Effect.logDebug(`deleted ${packets} packets and ${sessions} sessions`)
        : Effect.void,
    ),
    Effect.catch((error) =>
      Effect.logWarning(`recovery cleanup failed: ${error.message}`).pipe(
        Effect.as({ packets: 0, sessions: 0 }),
      ),
    ),
    Effect.catchCause((cause) =>
      Effect.logError("recovery cleanup failed", cause).pipe(
        Effect.as({ packets: 0, sessions: 0 }),
      ),
    ),
  )
  yield* cleanup.pipe(
    Effect.repeat(Schedule.spaced(config.cleanupInterval)),
    Effect.delay(config.cleanupInterval),
    Effect.annotateLogs({ module: "Recovery" }),
    Effect.withTracerEnabled(false),
    Effect.forkScoped,
  )

  const retain = (maxDisconnection: Duration.Duration) =>
    Ref.update(retention, (current) => {
      const max = Option.match(current, {
        onNone: () => maxDisconnection,
        onSome: (c) => Duration.max(c.max, maxDisconnection),
      })
      return Option.some({ keep: Duration.sum(max, config.cleanupInterval), max })
    })

  const toBuffer = (bytes: Uint8Array) =>
    Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)

  const persistLive = (
    sessions: ReadonlyArray<Omit<SessionToPersist, "nsp">>,
    nsp: string,
    ownerPid: number,
  ) =>
    Effect.forEach(
      chunks(
        sessions.flatMap((session) => encodeSession(session)),
        1000,
      ),
      (chunk) => {
        const params: Array<unknown> = [nsp, ownerPid]
        const rows = chunk.map(({ session, data }) => {
          params.push(session.pid, session.sid, session.rooms, toBuffer(data))
          const n = params.length
          return `($${n - 3}, $1, $${n - 2}, $${n - 1}::text[], $${n}::bytea)`
        })
        // A row written at a disconnection (no owner) must not be brought back to life by a late
        // live write; a live row that the cleanup started expiring (its owner's LISTEN backend
        // changed) is live again.
        return database.query(
          `INSERT INTO ${t.sessions} AS s (pid, nsp, sid, rooms, data, expires_at, owner_pid, owner_start) ` +
            `SELECT v.*, NULL::timestamptz, $2::int, (SELECT backend_start FROM pg_stat_activity WHERE pid = $2) ` +
            `FROM (VALUES ${rows.join(", ")}) AS v ON CONFLICT (pid) DO UPDATE SET nsp = EXCLUDED.nsp, ` +
            `sid = EXCLUDED.sid, rooms = EXCLUDED.rooms, data = EXCLUDED.data, expires_at = NULL, ` +
            `owner_pid = EXCLUDED.owner_pid, owner_start = EXCLUDED.owner_start ` +
            `WHERE s.expires_at IS NULL OR s.owner_pid IS NOT NULL`,
          params,
        )
      },
      { discard: true },
    )

  const forget = (pids: ReadonlyArray<string>) =>
    pids.length === 0
      ? Effect.void
      : database
          .query(`DELETE FROM ${t.sessions} WHERE pid = ANY($1) AND expires_at IS NULL`, [pids])
          .pipe(Effect.asVoid)

  // Sessions whose data cannot be encoded are left out (logged by the caller's persist).
  const encodeSession = (session: Omit<SessionToPersist, "nsp">) => {
    try {
      return [{ session, data: Codec.encodePacketData([session.data]) }]
    } catch {
      return []
    }
  }

  // Disconnected sockets' sessions, expiring `maxDisconnection` from now, in statements of up to
  // 1000 rows. Sessions whose data cannot be encoded are left out, then reported.
  const persistAll = (
    sessions: ReadonlyArray<SessionToPersist>,
    maxDisconnection: Duration.Duration,
  ) => {
    const encoded = sessions.flatMap((session) =>
      encodeSession(session).map((e) => ({ ...e, nsp: session.nsp })),
    )
    const written = new Set(encoded.map((e) => e.session))
    const failed = sessions.filter((session) => !written.has(session))
    return Effect.forEach(
      chunks(encoded, 1000),
      (chunk) => {
        const params: Array<unknown> = [seconds(maxDisconnection)]
        const rows = chunk.map(({ session, data, nsp }) => {
          params.push(session.pid, nsp, session.sid, session.rooms, toBuffer(data))
          const n = params.length
          return `($${n - 4}, $${n - 3}, $${n - 2}, $${n - 1}::text[], $${n}::bytea, now() + make_interval(secs => $1))`
        })
        return database.query(
          `INSERT INTO ${t.sessions} (pid, nsp, sid, rooms, data, expires_at) VALUES ${rows.join(", ")} ` +
            `ON CONFLICT (pid) DO UPDATE SET nsp = EXCLUDED.nsp, sid = EXCLUDED.sid, ` +
            `rooms = EXCLUDED.rooms, data = EXCLUDED.data, expires_at = EXCLUDED.expires_at, ` +
            `owner_pid = NULL, owner_start = NULL`,
          params,
        )
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

  const persist = (session: SessionToPersist, maxDisconnection: Duration.Duration) =>
    persistAll([session], maxDisconnection)

  // One statement, one snapshot: the session (deleted, so one restore wins), the namespace's
  // last offset, and the packets after the client's offset up to it that match its rooms.
  const restoreSql =
    `WITH s AS (DELETE FROM ${t.sessions} s WHERE pid = $1 AND nsp = $2 ` +
    `AND (s.expires_at IS NOT NULL OR ${ownerGone}) RETURNING sid, rooms, data, expires_at), ` +
    `ok AS (SELECT s.sid, s.rooms, s.data, o.last FROM s JOIN ${t.offsets} o ON o.nsp = $2 ` +
    `WHERE (s.expires_at IS NULL OR s.expires_at > now()) AND $3::bigint >= o.cleaned AND $3::bigint <= o.last) ` +
    `SELECT 0 AS kind, ok.sid, ok.rooms, ok.data, ok.last AS n FROM ok ` +
    `UNION ALL SELECT 1, NULL, NULL, p.data, p."offset" FROM ${t.packets} p, ok ` +
    `WHERE p.nsp = $2 AND p."offset" > $3::bigint AND p."offset" <= ok.last ` +
    `AND (cardinality(p.rooms) = 0 OR p.rooms && ok.rooms) AND NOT (p.excepts && ok.rooms) ` +
    `ORDER BY kind, n`

  const restore = (nsp: string, pid: string, offset: string) =>
    Codec.isOffset(offset)
      ? database
          .query<{
            kind: number
            sid: string | null
            rooms: Array<string> | null
            data: Buffer
            n: string
          }>(restoreSql, [pid, nsp, offset])
          .pipe(
            Effect.flatMap((rows) => {
              const head = rows[0]
              if (head === undefined || head.kind !== 0) return Effect.succeed(undefined)
              const data = Codec.decodePacketData(head.data)
              if (Result.isFailure(data)) {
                return Effect.logWarning(`session ${head.sid}: ${data.failure}`).pipe(
                  Effect.as(undefined),
                )
              }
              const missedPackets: Array<Array<unknown>> = []
              for (const row of rows.slice(1)) {
                const args = Codec.decodePacketData(row.data)
                // Unreadable rows cannot come from this package; the client simply misses them.
                if (Result.isSuccess(args)) missedPackets.push([...args.success, String(row.n)])
              }
              return Effect.succeed<RestoredSession>({
                sid: head.sid!,
                pid,
                rooms: head.rooms!,
                data: data.success[0],
                missedPackets,
                last: BigInt(head.n),
              })
            }),
          )
      : Effect.succeed(undefined)

  const lastOffset = (nsp: string) =>
    database
      .query<{ last: string }>(`SELECT last::text AS last FROM ${t.offsets} WHERE nsp = $1`, [nsp])
      .pipe(Effect.map((rows) => BigInt(rows[0]?.last ?? 0)))

  const packetsSince = (nsp: string, offset: bigint, limit: number) =>
    database
      .query<{ n: string; rooms: Array<string>; excepts: Array<string>; data: Buffer }>(
        `SELECT "offset"::text AS n, rooms, excepts, data FROM ${t.packets} ` +
          `WHERE nsp = $1 AND "offset" > $2 ORDER BY "offset" LIMIT $3`,
        [nsp, String(offset), limit],
      )
      .pipe(
        Effect.map((rows) =>
          rows.flatMap((row) => {
            const data = Codec.decodePacketData(row.data)
            return Result.isSuccess(data)
              ? [
                  {
                    offset: BigInt(row.n),
                    rooms: row.rooms,
                    except: row.excepts,
                    data: data.success,
                  },
                ]
              : []
          }),
        ),
      )

  return Recovery.of({
    ensureTables,
    retain,
    persistLive,
    forget,
    persist,
    persistAll,
    restore,
    lastOffset,
    packetsSince,
    cleanup,
  })
})

const chunks = <A>(items: ReadonlyArray<A>, size: number): Array<ReadonlyArray<A>> => {
  const result: Array<ReadonlyArray<A>> = []
  for (let i = 0; i < items.length; i += size) result.push(items.slice(i, i + size))
  return result
}

/** The Recovery layer; needs `Config` and `Database`. */
export const layer: Layer.Layer<Recovery, never, Config | Database> = Layer.effect(Recovery, make)
