/**
 * PostgreSQL helpers for the tests: the shared database, unique names, and (re-exported from
 * `privatePostgres.ts`, which the soak imports outside Vitest) private servers for faults.
 */
import { randomBytes } from "node:crypto"
import pg from "pg"
import { inject } from "vitest"

export {
  type ListenerFilter,
  type PrivatePostgres,
  startPrivatePostgres,
  terminateListeners,
} from "./privatePostgres.js"

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

/** A plain connection listening on some channels, recording what arrives on each. */
export const rawListener = async (channels: ReadonlyArray<string>) => {
  const client = new pg.Client({ connectionString: databaseUrl() })
  await client.connect()
  const received: Array<{ channel: string; payload: string }> = []
  client.on("notification", (n) => received.push({ channel: n.channel, payload: n.payload ?? "" }))
  for (const channel of channels) await client.query(`LISTEN "${channel.replaceAll('"', '""')}"`)
  return { client, received, close: () => client.end() }
}
