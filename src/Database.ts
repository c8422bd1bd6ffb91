/**
 * The PostgreSQL access the cluster needs: statements through a pool, and dedicated connections
 * for LISTEN that hold no pool slot.
 *
 * @since 0.1.0
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import type * as SqlClient from "effect/sql/SqlClient"
import pg from "pg"
import {
  type DatabaseError,
  databaseError,
  permanentCode,
  report,
  statementError,
} from "./Errors.js"
import * as Pool from "./internal/pool.js"
import { StatementAbort, StatementTimeout } from "./internal/pool.js"

/** A dedicated connection: what the Listener needs of a `pg.Client`. */
export type DedicatedClient = pg.Client

/** The database service. */
export class Database extends Context.Service<
  Database,
  {
    /**
     * Runs one statement with bind parameters; resolves with its rows. Past `timeout`, or when
     * interrupted, it ends at once and its connection is discarded, never left checked out.
     */
    readonly query: <A = Record<string, unknown>>(
      sql: string,
      params?: ReadonlyArray<unknown>,
      timeout?: Duration.Duration,
    ) => Effect.Effect<ReadonlyArray<A>, DatabaseError>
    /**
     * The same as a promise, for the publishing hot path (no fiber per statement); rejects with
     * a `DatabaseError`. `abort` abandons it (its connection discarded); aborted with a
     * {@link StatementTimeout} reason, it counts as a deadline passed (see `markStale`).
     */
    readonly unsafeQuery: <A = Record<string, unknown>>(
      sql: string,
      params?: ReadonlyArray<unknown>,
      abort?: StatementAbort,
    ) => Promise<ReadonlyArray<A>>
    /**
     * The network path to PostgreSQL failed at `at` (epoch ms): pooled connections not seen
     * alive since then are discarded instead of handed out. Done by every statement past its
     * deadline, and by the Listener when its connection goes silent.
     */
    readonly markStale: (at: number) => Effect.Effect<void>
    /** Options to open a dedicated connection with (TCP keep-alive on). */
    readonly connectionOptions: pg.ClientConfig
    /**
     * Whether `unsafeQuery` takes several statements in one query string when it has no
     * parameters (node-postgres sends it in the simple query protocol; `@effect/sql-pg` prepares
     * every statement, which PostgreSQL refuses for several). The Publisher's notify scripts need it.
     */
    readonly scripts: boolean
  }
>()("socket.io-postgres-effect/Database") {}

export { StatementAbort, StatementTimeout }

/**
 * The `application_name` of the connections we open (the LISTEN one), so that they can be told
 * apart in `pg_stat_activity`; one the caller's settings give (options, connection string,
 * `PGAPPNAME`) wins, since PostgreSQL takes it as a fallback only.
 */
export const APPLICATION_NAME = "socket.io-postgres-effect"

/**
 * Builds the service over a `pg.Pool` that the caller owns (never ended by us). Idle connections
 * are only distrusted after a failure while the pool is watched (see {@link layerPool}).
 */
export const fromPool = (pool: pg.Pool): Database["Service"] => ({
  query: <A>(sql: string, params?: ReadonlyArray<unknown>, timeout?: Duration.Duration) =>
    Effect.callback<ReadonlyArray<A>, DatabaseError>((resume) => {
      const abort = new Pool.StatementAbort()
      const timeoutMillis = timeout === undefined ? undefined : Duration.toMillis(timeout)
      Pool.run(pool, sql, params, { abort, timeoutMillis }).then(
        (result) => resume(Effect.succeed(result.rows as ReadonlyArray<A>)),
        (cause) => resume(Effect.fail(statementError(sql)(cause))),
      )
      // Interrupted: the statement is abandoned, its connection discarded.
      return Effect.sync(() => abort.abort())
    }),
  unsafeQuery: <A>(sql: string, params?: ReadonlyArray<unknown>, abort?: Pool.StatementAbort) =>
    Pool.run(pool, sql, params, { abort }).then(
      (result) => Pool.lastRows<A>(result),
      (cause) => Promise.reject(statementError(sql)(cause)),
    ),
  markStale: (at) => Effect.sync(() => Pool.markStale(pool, at)),
  scripts: true,
  connectionOptions: {
    fallback_application_name: APPLICATION_NAME,
    ...(pool as unknown as { options: pg.ClientConfig }).options,
    keepAlive: true,
  },
})

/**
 * A `Database` layer over a caller-owned `pg.Pool`: the pool's new connections are watched
 * while the layer lives, so that idle ones older than a failure are not handed out. A pool
 * without an `'error'` listener gets one meanwhile (see {@link guardIdleErrors}).
 */
export const layerPool = (pool: pg.Pool): Layer.Layer<Database> =>
  Layer.effect(
    Database,
    Effect.acquireRelease(
      Effect.sync(() => Pool.watch(pool)),
      (stop) => Effect.sync(stop),
    ).pipe(Effect.andThen(guardIdleErrors(pool)), Effect.as(fromPool(pool))),
  )

// Our own listeners, which do not count as the pool owner's.
const ours = new WeakSet<(...args: Array<any>) => void>()
// The pools whose missing listener was said: once per pool.
const told = new WeakSet<pg.Pool>()

/**
 * `pg.Pool` emits `'error'` when an idle connection fails (PostgreSQL restarted, the connection
 * terminated or cut), and an `'error'` event without a listener makes Node exit. A pool whose
 * owner listens for none gets one of ours while the layer lives: each such error is logged and
 * reported to the `errorHandler`, and the missing listener is said once.
 */
const guardIdleErrors = (pool: pg.Pool) =>
  Effect.gen(function* () {
    if (pool.listeners("error").some((listener) => !ours.has(listener as () => void))) return
    const runFork = Effect.runForkWith(yield* Effect.context<never>())
    const listener = (cause: Error) =>
      void runFork(
        Effect.gen(function* () {
          const error = databaseError("an idle connection of the pool")(cause)
          yield* Effect.logWarning(error.message)
          yield* report(error)
        }),
      )
    ours.add(listener)
    yield* Effect.acquireRelease(
      Effect.sync(() => pool.on("error", listener)),
      () => Effect.sync(() => pool.off("error", listener)),
    )
    if (told.has(pool)) return
    told.add(pool)
    const notice = new Error(
      "the pg.Pool has no 'error' listener: added one that reports its idle connections' errors here (without one, Node exits on the first, e.g. when PostgreSQL restarts)",
    )
    yield* Effect.logWarning(notice.message)
    yield* report(notice)
  }).pipe(Effect.annotateLogs({ module: "Database" }))

/** The same database, every statement bounded by `timeout` unless it brings its own. */
export const withTimeout = (
  database: Database["Service"],
  timeout: Duration.Duration,
): Database["Service"] => ({
  ...database,
  query: (sql, params, own) => database.query(sql, params, own ?? timeout),
})

/**
 * A `Database` layer over `@effect/sql-pg`'s `PgClient`; LISTEN uses a node-postgres connection of
 * its own, opened with the client's settings. A statement past its deadline is interrupted:
 * `@effect/sql-pg` cancels it and retires a connection whose cancel is not confirmed (within its
 * own 5 s), so the deadline's error may come that much later; its pool's idle connections are
 * its own (see its `keepAlive`), `markStale` does nothing here.
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
    const query = <A>(
      statement: string,
      params?: ReadonlyArray<unknown>,
      timeout?: Duration.Duration,
    ) => {
      const failed = statementError(statement)
      const rows = sql.unsafe<A & object>(statement, params).pipe(
        Effect.map((rows) => rows as ReadonlyArray<A>),
        Effect.mapError(failed),
      )
      return timeout === undefined
        ? rows
        : rows.pipe(
            Effect.timeoutOrElse({
              duration: timeout,
              orElse: () => Effect.fail(failed(new StatementTimeout(Duration.toMillis(timeout)))),
            }),
          )
    }
    const password = config.password
    const socket = config.path?.match(/^(.*)\/\.s\.PGSQL\.(\d+)$/)
    return {
      query,
      unsafeQuery: <B>(
        statement: string,
        params?: ReadonlyArray<unknown>,
        abort?: StatementAbort,
      ) => {
        const controller = new AbortController()
        if (abort?.aborted) controller.abort()
        else abort?.onAbort(() => controller.abort())
        return runPromiseExit(query<B>(statement, params), { signal: controller.signal }).then(
          (exit): ReadonlyArray<B> | Promise<never> => {
            abort?.onAbort(undefined)
            return Exit.isSuccess(exit) ? exit.value : Promise.reject(Cause.squash(exit.cause))
          },
        )
      },
      markStale: () => Effect.void,
      scripts: false,
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
        fallback_application_name: APPLICATION_NAME,
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
        Effect.ensuring(Effect.sync(() => Pool.destroySocket(client))),
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

/** Retries DDL on {@link catalogRace}, except a permanent failure (e.g. no `CREATE` privilege). */
export const retryCatalogRace = <A, R>(
  ddl: Effect.Effect<A, DatabaseError, R>,
): Effect.Effect<A, DatabaseError, R> =>
  Effect.retry(ddl, { schedule: catalogRace, while: (error) => permanentCode(error) === undefined })
