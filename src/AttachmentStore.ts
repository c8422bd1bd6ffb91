/**
 * The attachments table: messages too large for a NOTIFY, or holding binary data, stored as
 * msgpack rows whose id travels in the notification.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Latch from "effect/Latch"
import * as Layer from "effect/Layer"
import { quoteIdentifier, quoteTableName } from "./Channel.js"
import { AdapterConfig } from "./AdapterConfig.js"
import { retryCatalogRace, Database, withTimeout } from "./Database.js"
import type { DatabaseError } from "./Errors.js"

/** Called once with the outcome of a fetch. */
export type FetchCallback = (result: Exit.Exit<Uint8Array | undefined, DatabaseError>) => void

/** The AttachmentStore service. */
export class AttachmentStore extends Context.Service<
  AttachmentStore,
  {
    /**
     * Reads one payload and calls back with it, `undefined` when no row has that id (cleaned up,
     * or never written). Fetches asked for while one is in flight share the next SELECT.
     */
    readonly unsafeFetch: (id: string, callback: FetchCallback) => void
    /** Deletes rows older than `age`; resolves with how many were deleted. */
    readonly deleteOlderThan: (age: Duration.Duration) => Effect.Effect<number, DatabaseError>
    /** `CREATE TABLE IF NOT EXISTS` (and its schema when qualified). */
    readonly ensureTable: Effect.Effect<void, DatabaseError>
    /** Whether the table exists. */
    readonly tableExists: Effect.Effect<boolean, DatabaseError>
  }
>()("socket.io-postgres-effect/AttachmentStore") {}

/** Builds the store for the configured table. */
export const make = Effect.gen(function* () {
  const { tableName, publishTimeout } = yield* AdapterConfig
  // Every statement has a deadline: past it, it fails and its connection is discarded, so that a
  // dead connection neither stalls the fetches behind it nor stays in the pool.
  const database = withTimeout(yield* Database, publishTimeout)
  const table = quoteTableName(tableName)
  const schema = tableName.includes(".") ? quoteIdentifier(tableName.split(".")[0]!) : undefined

  // Fetches requested while one is in flight share the next SELECT.
  const waiting = new Map<string, Array<FetchCallback>>()
  const wake = yield* Latch.make(false)
  yield* Effect.gen(function* () {
    yield* wake.await
    wake.closeUnsafe()
    const batch = new Map(waiting)
    waiting.clear()
    if (batch.size === 0) return
    const select = (ids: ReadonlyArray<string>) =>
      database.query<{ id: string; payload: Buffer }>(
        `SELECT id::text AS id, payload FROM ${table} WHERE id = ANY($1::bigint[])`,
        [ids],
      )
    // Should one id spoil the batch, each id is asked alone so that only its own fetch fails.
    const exit = yield* Effect.exit(
      batch.size === 1
        ? select([...batch.keys()])
        : select([...batch.keys()]).pipe(
            Effect.catch(() =>
              Effect.forEach(
                [...batch.keys()],
                (id) => select([id]).pipe(Effect.orElseSucceed(() => [])),
                {
                  concurrency: 4,
                },
              ).pipe(Effect.map((rows) => rows.flat())),
            ),
          ),
    )
    const found = Exit.isSuccess(exit)
      ? new Map(exit.value.map((row) => [row.id, row.payload]))
      : undefined
    for (const [id, callbacks] of batch) {
      const result =
        found === undefined
          ? (exit as Exit.Exit<never, DatabaseError>)
          : Exit.succeed(found.get(id))
      for (const callback of callbacks) callback(result)
    }
  }).pipe(Effect.forever, Effect.annotateLogs({ module: "AttachmentStore" }), Effect.forkScoped)

  const unsafeFetch = (id: string, callback: FetchCallback) => {
    const callbacks = waiting.get(id)
    if (callbacks === undefined) waiting.set(id, [callback])
    else callbacks.push(callback)
    wake.openUnsafe()
  }

  return AttachmentStore.of({
    unsafeFetch,
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
    }).pipe(retryCatalogRace),
    tableExists: database
      .query<{ found: boolean }>(`SELECT to_regclass($1) IS NOT NULL AS found`, [table])
      .pipe(Effect.map((rows) => rows[0]?.found === true)),
  })
})

/** The AttachmentStore layer; needs `AdapterConfig` and `Database`. */
export const layer: Layer.Layer<AttachmentStore, never, AdapterConfig | Database> = Layer.effect(
  AttachmentStore,
  make,
)
