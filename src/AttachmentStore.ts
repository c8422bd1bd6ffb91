/**
 * The attachments table: messages too large for a NOTIFY, or holding binary data, stored as
 * msgpack rows whose id travels in the notification.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { quoteIdentifier, quoteTableName } from "./Channel.js"
import { Config } from "./Config.js"
import { Database } from "./Database.js"
import type { DatabaseError } from "./Errors.js"

/** The AttachmentStore service. */
export class AttachmentStore extends Context.Tag("socket.io-postgres-effect/AttachmentStore")<
  AttachmentStore,
  {
    /** Stores payloads; resolves with their row ids (as text), in the same order. */
    readonly insert: (
      payloads: ReadonlyArray<Uint8Array>,
    ) => Effect.Effect<ReadonlyArray<string>, DatabaseError>
    /** Reads one payload; `undefined` when no row has that id (cleaned up, or never written). */
    readonly fetch: (id: string) => Effect.Effect<Uint8Array | undefined, DatabaseError>
    /** Deletes rows older than `age`; resolves with how many were deleted. */
    readonly deleteOlderThan: (age: Duration.Duration) => Effect.Effect<number, DatabaseError>
    /** `CREATE TABLE IF NOT EXISTS` (and its schema when qualified). */
    readonly ensureTable: Effect.Effect<void, DatabaseError>
  }
>() {}

/** Builds the store for the configured table. */
export const make = Effect.gen(function* () {
  const { tableName } = yield* Config
  const database = yield* Database
  const table = quoteTableName(tableName)
  const schema = tableName.includes(".") ? quoteIdentifier(tableName.split(".")[0]!) : undefined
  // unnest ... WITH ORDINALITY keeps the ids in the order of the payloads.
  const insertSql =
    `INSERT INTO ${table} (payload) SELECT p FROM unnest($1::bytea[]) WITH ORDINALITY AS t(p, n) ` +
    `ORDER BY n RETURNING id::text AS id`

  return AttachmentStore.of({
    insert: (payloads) =>
      payloads.length === 1
        ? database
            .query<{ id: string }>(
              `INSERT INTO ${table} (payload) VALUES ($1) RETURNING id::text AS id`,
              [Buffer.from(payloads[0]!.buffer, payloads[0]!.byteOffset, payloads[0]!.byteLength)],
            )
            .pipe(Effect.map((rows) => rows.map((row) => row.id)))
        : database
            .query<{ id: string }>(insertSql, [
              payloads.map((p) => Buffer.from(p.buffer, p.byteOffset, p.byteLength)),
            ])
            .pipe(
              // RETURNING order follows the insert order; sort numerically to be safe.
              Effect.map((rows) =>
                rows.map((row) => row.id).sort((a, b) => (BigInt(a) < BigInt(b) ? -1 : 1)),
              ),
            ),
    fetch: (id) =>
      database
        .query<{ payload: Buffer }>(`SELECT payload FROM ${table} WHERE id = $1`, [id])
        .pipe(Effect.map((rows) => rows[0]?.payload)),
    deleteOlderThan: (age) =>
      database
        .query(
          `WITH deleted AS (DELETE FROM ${table} WHERE created_at < now() - make_interval(secs => $1) RETURNING 1) SELECT count(*)::int AS n FROM deleted`,
          [Duration.toMillis(age) / 1000],
        )
        .pipe(Effect.map((rows) => Number((rows[0] as { n: number } | undefined)?.n ?? 0))),
    ensureTable: Effect.gen(function* () {
      if (schema !== undefined) yield* database.query(`CREATE SCHEMA IF NOT EXISTS ${schema}`)
      yield* database.query(
        `CREATE TABLE IF NOT EXISTS ${table} (id bigserial UNIQUE, created_at timestamptz DEFAULT now(), payload bytea)`,
      )
    }).pipe(
      // Servers starting together race on the catalog ("duplicate key ... pg_type"): try again.
      Effect.retry({ times: 3 }),
    ),
  })
})

/** The AttachmentStore layer; needs `Config` and `Database`. */
export const layer: Layer.Layer<AttachmentStore, never, Config | Database> = Layer.effect(
  AttachmentStore,
  make,
)
