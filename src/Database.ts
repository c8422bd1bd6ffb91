/**
 * The PostgreSQL access the cluster needs: statements through a pool, and dedicated connections
 * for LISTEN that hold no pool slot.
 *
 * @since 0.1.0
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import type * as SqlClient from "effect/sql/SqlClient"
import pg from "pg"
import { type DatabaseError, databaseError } from "./Errors.js"

/** A dedicated connection: what the Listener needs of a `pg.Client`. */
export type DedicatedClient = pg.Client

/** The database service. */
export class Database extends Context.Service<
  Database,
  {
    /** Runs one statement with bind parameters; resolves with its rows. */
    readonly query: <A = Record<string, unknown>>(
      sql: string,
      params?: ReadonlyArray<unknown>,
    ) => Effect.Effect<ReadonlyArray<A>, DatabaseError>
    /**
     * The same as a promise, for the publishing hot path (no fiber per statement); rejects with
     * a `DatabaseError`.
     */
    readonly unsafeQuery: <A = Record<string, unknown>>(
      sql: string,
      params?: ReadonlyArray<unknown>,
    ) => Promise<ReadonlyArray<A>>
    /** Options to open a dedicated connection with (TCP keep-alive on). */
    readonly connectionOptions: pg.ClientConfig
  }
>()("socket.io-postgres-effect/Database") {}

/** Builds the service over a `pg.Pool` that the caller owns (never ended by us). */
export const fromPool = (pool: pg.Pool): Database["Service"] => ({
  query: <A>(sql: string, params?: ReadonlyArray<unknown>) =>
    Effect.tryPromise({
      try: () => pool.query(sql, params as Array<unknown> | undefined),
      catch: databaseError(sql.slice(0, 40)),
    }).pipe(Effect.map((result) => result.rows as ReadonlyArray<A>)),
  unsafeQuery: <A>(sql: string, params?: ReadonlyArray<unknown>) =>
    pool.query(sql, params as Array<unknown> | undefined).then(
      (result) => result.rows as ReadonlyArray<A>,
      (cause) => Promise.reject(databaseError(sql.slice(0, 40))(cause)),
    ),
  connectionOptions: {
    ...(pool as unknown as { options: pg.ClientConfig }).options,
    keepAlive: true,
  },
})

/** A `Database` layer over a caller-owned `pg.Pool`. */
export const layerPool = (pool: pg.Pool): Layer.Layer<Database> =>
  Layer.succeed(Database, fromPool(pool))

/**
 * A `Database` layer over `@effect/sql-pg`'s `PgClient`; LISTEN uses a node-postgres connection of
 * its own, opened with the client's settings.
 */
export const layerPgClient: Layer.Layer<Database, never, PgClient.PgClient> = Layer.effect(
  Database,
  Effect.gen(function* () {
    const client = yield* PgClient.PgClient
    const sql: SqlClient.SqlClient = client
    const config = client.config
    // The promise variant runs with the layer's context: the app's logger and tracer apply.
    const context = yield* Effect.context<never>()
    const runPromiseExit = Effect.runPromiseExitWith(context)
    const query = <A>(statement: string, params?: ReadonlyArray<unknown>) =>
      sql.unsafe<A & object>(statement, params).pipe(
        Effect.map((rows) => rows as ReadonlyArray<A>),
        Effect.mapError(databaseError(statement.slice(0, 40))),
      )
    const password = config.password
    const socket = config.path?.match(/^(.*)\/\.s\.PGSQL\.(\d+)$/)
    return {
      query,
      unsafeQuery: <B>(statement: string, params?: ReadonlyArray<unknown>) =>
        runPromiseExit(query<B>(statement, params)).then(
          (exit): ReadonlyArray<B> | Promise<never> =>
            Exit.isSuccess(exit) ? exit.value : Promise.reject(Cause.squash(exit.cause)),
        ),
      connectionOptions: {
        connectionString: config.url ? Redacted.value(config.url) : undefined,
        // node-postgres takes a unix socket's directory as host, and its port.
        host: socket ? socket[1] : config.host,
        port: socket ? Number(socket[2]) : config.port,
        database: config.database,
        user: config.username,
        password:
          password === undefined
            ? undefined
            : Redacted.isRedacted(password)
              ? Redacted.value(password)
              : () => Effect.runPromiseWith(context)(password).then(Redacted.value),
        ssl: config.ssl,
        application_name: config.applicationName,
        keepAlive: true,
      } as pg.ClientConfig,
    }
  }),
)

/** Opens a dedicated connection; ended when the scope closes, bounded so a finalizer never hangs. */
export const connect = Effect.fnUntraced(function* (options: pg.ClientConfig) {
  return yield* Effect.acquireRelease(
    Effect.tryPromise({
      try: async () => {
        const client = new pg.Client(options)
        // An error before `connect` settles must not become an uncaught exception.
        client.on("error", () => {})
        try {
          await client.connect()
        } catch (e) {
          client.end().catch(() => {})
          throw e
        }
        return client
      },
      catch: databaseError("connect"),
    }),
    (client) =>
      Effect.promise(() => client.end().catch(() => {})).pipe(
        // Finalizers are uninterruptible: without this the timeout cannot cut a frozen server.
        Effect.interruptible,
        Effect.timeout("2 seconds"),
        Effect.ignore,
        Effect.ensuring(Effect.sync(() => (client as any).connection?.stream?.destroy?.())),
      ),
  )
})

/**
 * How `CREATE ... IF NOT EXISTS` is retried: servers starting together race on the catalog
 * ("duplicate key ... pg_type_typname_nsp_index"); jitter spreads the next attempts apart.
 */
export const catalogRace = Schedule.exponential("20 millis").pipe(
  Schedule.jittered,
  Schedule.upTo({ times: 8 }),
)
