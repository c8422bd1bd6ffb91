/** PostgreSQL helpers for the tests: the shared database, unique names, private servers for faults. */
import { randomBytes } from "node:crypto"
import pg from "pg"
import { inject } from "vitest"
import { signalServer, postmasterPid, startEmbeddedPostgres } from "../setup/embedded.js"

/** Connection string of the database shared by the whole run (`DATABASE_URL` or the embedded one). */
export const databaseUrl = (): string => inject("databaseUrl")

/**
 * A `pg.Pool` on the shared database (or on `connectionString` if given), at most 10 connections
 * unless told otherwise. Idle-client errors (a terminated backend, a stopped server) are swallowed
 * so that fault tests do not crash the worker; pass `onError` to see them.
 */
export const makePool = (
  options: pg.PoolConfig & { readonly onError?: (error: Error) => void } = {},
): pg.Pool => {
  const { onError, ...config } = options
  const pool = new pg.Pool({ connectionString: databaseUrl(), max: 10, ...config })
  pool.on("error", onError ?? (() => {}))
  return pool
}

/**
 * A unique short identifier, e.g. `t_harness_k3j9x0q2ab`: lowercase `[a-z0-9_]`, at most 40 chars,
 * usable both as a channel prefix and as an unquoted SQL table name.
 */
export const suiteId = (name: string): string => {
  const random = randomBytes(8).toString("hex").slice(0, 10)
  const clean = name
    .toLowerCase()
    .replace(/[^a-z0-9_]+/g, "_")
    .replace(/^_+|_+$/g, "")
    .slice(0, 40 - "t__".length - random.length)
  return `t_${clean}_${random}`
}

const PLAIN_NAME = /^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$/

/**
 * Creates the attachments table in the layout of `@socket.io/postgres-adapter`. The name is pasted
 * unquoted, as that adapter does, so it must be a plain lowercase (optionally schema-qualified) name.
 */
export const createAttachmentTable = async (pool: pg.Pool, tableName: string): Promise<void> => {
  if (!PLAIN_NAME.test(tableName)) throw new Error(`not a plain table name: ${tableName}`)
  await pool.query(
    `CREATE TABLE IF NOT EXISTS ${tableName} (id bigserial UNIQUE, created_at timestamptz DEFAULT NOW(), payload bytea)`,
  )
}

/**
 * Quotes a table name as SQL, `schema.table` included (the tests' own quoting, not the code's
 * under test): `Att_Mixed` becomes `"Att_Mixed"`, `s.t` becomes `"s"."t"`.
 */
export const quoteName = (tableName: string): string =>
  tableName
    .split(".")
    .map((part) => `"${part.replaceAll('"', '""')}"`)
    .join(".")

/** Drops a table (`table` or `schema.table`, as the adapter's options name it) if it exists. */
export const dropTable = async (pool: pg.Pool, tableName: string): Promise<void> => {
  await pool.query(`DROP TABLE IF EXISTS ${quoteName(tableName)}`)
}

/** Which LISTEN backends {@link terminateListeners} kills. */
export interface ListenerFilter {
  /** Only backends whose `application_name` equals this. */
  readonly applicationName?: string
  /** Only backends whose last query (the last `LISTEN "…"`) contains this, e.g. a channel prefix. */
  readonly queryContains?: string
}

/**
 * Kills every backend whose last statement was a `LISTEN` (except the caller's) and returns how many.
 * Test files run in parallel on the shared database: without a filter this also hits other suites'
 * listeners, so filter by application name (a string is shorthand for that) or channel prefix, or use
 * a private server ({@link startPrivatePostgres}).
 */
export const terminateListeners = async (
  pool: pg.Pool,
  filter?: string | ListenerFilter,
): Promise<number> => {
  const { applicationName, queryContains } =
    typeof filter === "string"
      ? { applicationName: filter, queryContains: undefined }
      : (filter ?? {})
  const result = await pool.query<{ terminated: boolean }>(
    `SELECT pg_terminate_backend(pid) AS terminated
       FROM pg_stat_activity
      WHERE query ILIKE 'LISTEN%'
        AND pid <> pg_backend_pid()
        AND ($1::text IS NULL OR application_name = $1)
        AND ($2::text IS NULL OR strpos(query, $2) > 0)`,
    [applicationName ?? null, queryContains ?? null],
  )
  return result.rows.filter((row) => row.terminated).length
}

/** A PostgreSQL server of one's own, to stop, restart and freeze without disturbing other suites. */
export interface PrivatePostgres {
  readonly url: string
  readonly port: number
  /** The postmaster's pid (changes on restart). */
  readonly pid: number
  /** Starts the server again on the same data directory and port. No-op if running. */
  readonly start: () => Promise<void>
  /** Stops the server (fast shutdown: clients are disconnected); the data stays for `start()`. */
  readonly stop: () => Promise<void>
  /** Freezes the server (SIGSTOP to the postmaster and every child): connections hang, no errors. */
  readonly pause: () => Promise<void>
  /** Unfreezes a paused server (SIGCONT). */
  readonly resume: () => Promise<void>
  /** Stops the server and deletes its files. Also done when the process exits, as a safety net. */
  readonly destroy: () => Promise<void>
}

/**
 * Starts a separate embedded PostgreSQL (own temporary directory, own free port), whether or not
 * `DATABASE_URL` is set. Call `destroy()` when done (e.g. in `afterAll`).
 */
export const startPrivatePostgres = async (): Promise<PrivatePostgres> => {
  const server = await startEmbeddedPostgres({ restartable: true })
  let pid = await postmasterPid(server.dataDir)
  let paused = false
  const resume = async () => {
    if (!paused) return
    await signalServer(server.dataDir, "SIGCONT")
    paused = false
  }
  return {
    url: server.url,
    port: server.port,
    get pid() {
      return pid
    },
    start: async () => {
      await server.start()
      pid = await postmasterPid(server.dataDir)
    },
    stop: async () => {
      // A stopped process would never act on the shutdown signal.
      await resume()
      await server.stop()
    },
    pause: async () => {
      if (paused || !server.running()) return
      await signalServer(server.dataDir, "SIGSTOP")
      paused = true
    },
    resume,
    destroy: async () => {
      await resume().catch(() => {})
      await server.destroy()
    },
  }
}
