/**
 * What a server says at start and when its connection comes back: a permanent failure (a role
 * PostgreSQL refuses, a privilege missing, a table missing with `createTable: false`) once, as
 * such, while it keeps retrying quietly; a transient one every time; the LISTEN connection's
 * return once per incident; our connections named in `pg_stat_activity`; SQL never cut mid-word.
 */
import createDebug from "debug"
import { createServer } from "node:http"
import pg from "pg"
import { Server } from "socket.io"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { shortSql } from "../src/Errors.js"
import { type AdapterOptions, createAdapter, Reconnected } from "../src/index.js"
import { fastOptions } from "./utils/adapters.js"
import { eventually } from "./utils/cluster.js"
import { freePort } from "./setup/embedded.js"
import { databaseUrl, dropTable, makePool, suiteId, terminateListeners } from "./utils/postgres.js"

// The adapter's log lines, whatever DEBUG says: how often it tried, at which level.
const lines: Array<string> = []
createDebug.log = (...args: Array<unknown>) => void lines.push(args.map(String).join(" "))
createDebug.enable("socket.io-postgres-effect:*")
const logged = (pattern: RegExp) => lines.filter((line) => pattern.test(line)).length

/** A connection string for `user` (and `password`) on the shared database. */
const urlAs = (user: string, password?: string) => {
  const url = new URL(databaseUrl())
  url.username = user
  url.password = password ?? ""
  return url.toString()
}

interface Started {
  readonly io: Server
  readonly pool: pg.Pool
  readonly errors: Array<Error>
}

const started: Array<Started> = []

const start = (pool: pg.Pool, options: AdapterOptions = {}): Started => {
  const errors: Array<Error> = []
  const http = createServer().listen(0, "127.0.0.1")
  const io = new Server(http, {
    adapter: createAdapter(pool, {
      ...fastOptions,
      errorHandler: (error) => void errors.push(error),
      ...options,
    }),
  })
  const server = { io, pool, errors }
  started.push(server)
  return server
}

const messages = (server: Started, pattern: RegExp) =>
  server.errors.filter((error) => pattern.test(error.message)).map((error) => error.message)

afterEach(async () => {
  for (const { io, pool } of started.splice(0)) {
    await io.close()
    await pool.end()
  }
})

describe("permanent failures are said once, as such, at start", () => {
  const id = suiteId("startup")
  const admin = makePool({ max: 2 })
  const role = `${id}_role`

  beforeAll(async () => {
    // A role that may log in and nothing more: no CREATE in schema public (PostgreSQL 15).
    await admin.query(`CREATE ROLE ${role} LOGIN PASSWORD 'pw'`)
  })

  afterAll(async () => {
    await dropTable(admin, id)
    await admin.query(`DROP ROLE IF EXISTS ${role}`)
    await admin.end()
  })

  it("a role PostgreSQL refuses: one permanent line, while it keeps retrying quietly", async () => {
    const pool = makePool({ connectionString: urlAs(`${id}_nobody`, "wrong") })
    const server = start(pool, { channelPrefix: id, tableName: id })
    const before = logged(/LISTEN connection failed/)
    // Retried meanwhile: five more attempts of the LISTEN connection.
    await eventually(() => logged(/LISTEN connection failed/) - before >= 5, {
      timeout: 15_000,
      message: "the LISTEN connection retried",
    })
    const listen = messages(server, /LISTEN connection failed/)
    expect(listen).toHaveLength(1)
    expect(listen[0]).toMatch(
      /^permanent: LISTEN connection failed: .*(password|role|authentication)/,
    )
    // Heartbeats fail the same way: said once too.
    expect(server.errors.length).toBeLessThanOrEqual(3)
    for (const error of server.errors) expect(error.message).toMatch(/^permanent: /)
  }, 30_000)

  it("a database that does not exist: one permanent line", async () => {
    const url = new URL(urlAs(role, "pw"))
    url.pathname = `/${id}_nowhere`
    const server = start(makePool({ connectionString: url.toString() }), {
      channelPrefix: id,
      tableName: id,
    })
    const before = logged(/LISTEN connection failed/)
    await eventually(() => logged(/LISTEN connection failed/) - before >= 3, {
      timeout: 15_000,
      message: "the LISTEN connection retried",
    })
    expect(messages(server, /LISTEN connection failed/)).toEqual([
      expect.stringMatching(/^permanent: LISTEN connection failed: .*does not exist/),
    ])
  }, 30_000)

  it("a role without CREATE: the table's creation is one permanent line", async () => {
    const pool = makePool({ connectionString: urlAs(role, "pw") })
    const server = start(pool, { channelPrefix: id, tableName: id })
    const before = logged(/creating the attachments table failed/)
    await eventually(() => logged(/creating the attachments table failed/) - before >= 3, {
      timeout: 15_000,
      message: "the table's creation retried",
    })
    const create = messages(server, /creating the attachments table failed/)
    expect(create).toEqual([
      expect.stringMatching(
        /^permanent: creating the attachments table failed: .*permission denied/,
      ),
    ])
  }, 30_000)

  it("a missing table with createTable: false is said at start, before any message needs it", async () => {
    const server = start(makePool(), { channelPrefix: id, tableName: id, createTable: false })
    await eventually(() => server.errors.length > 0, { message: "the missing table was said" })
    expect(server.errors.map((error) => error.message)).toEqual([
      `permanent: the attachments table ${id} does not exist and createTable is false: create it (see the README) or leave createTable on`,
    ])
  })

  it("a transient failure (nothing listens on the port) is told every time", async () => {
    const pool = makePool({
      connectionString: `postgres://postgres@127.0.0.1:${await freePort()}/x`,
    })
    const server = start(pool, { channelPrefix: id, tableName: id })
    await eventually(() => messages(server, /LISTEN connection failed/).length >= 3, {
      timeout: 15_000,
      message: "each attempt was told",
    })
    for (const message of messages(server, /LISTEN connection failed/))
      expect(message).toMatch(/^LISTEN connection failed: .*ECONNREFUSED/)
  }, 30_000)
})

describe("the LISTEN connection's return", () => {
  it("is logged at debug level and told to the errorHandler once per incident", async () => {
    const id = suiteId("startup_back")
    const admin = makePool({ max: 1 })
    try {
      const server = start(makePool({ application_name: id }), { channelPrefix: id, tableName: id })
      await server.io.of("/").adapter.serverCount()
      await eventually(async () => (await terminateListeners(admin, id)) === 1, {
        message: "the LISTEN backend was terminated",
      })
      await eventually(() => server.errors.some((error) => error instanceof Reconnected), {
        message: "its return was told",
      })
      const told = server.errors.map((error) => error.message)
      // The incident is told first: as a lost connection, or as a failed LISTEN when the backend
      // was killed during one of its statements (a channel subscribed just then).
      expect(told[0]).toMatch(/^LISTEN connection (lost|failed): /)
      expect(told.filter((message) => message.startsWith("LISTEN connection back"))).toEqual([
        expect.stringMatching(/^LISTEN connection back after \d+ failed attempts? \([\d.]+ s\)$/),
      ])
      expect(logged(/DEBUG LISTEN connection re-established/)).toBeGreaterThan(0)
      await dropTable(admin, id)
    } finally {
      await admin.end()
    }
  })
})

describe("application_name", () => {
  const admin = makePool({ max: 1 })
  afterAll(() => admin.end())

  const backends = async (prefix: string) =>
    (
      await admin.query<{ name: string; listen: boolean }>(
        `SELECT application_name AS name, query ILIKE 'LISTEN%' AS listen FROM pg_stat_activity
          WHERE strpos(query, $1) > 0 AND pid <> pg_backend_pid()`,
        [prefix],
      )
    ).rows

  it("names our LISTEN connection, and leaves a pool's own name to its owner", async () => {
    const id = suiteId("startup_name")
    const server = start(makePool(), { channelPrefix: id, tableName: id })
    await server.io.of("/").adapter.serverCount()
    await eventually(async () => (await backends(id)).some((b) => b.listen), {
      message: "the LISTEN backend is seen",
    })
    expect((await backends(id)).filter((b) => b.listen)).toEqual([
      { name: "socket.io-postgres-effect", listen: true },
    ])
    // The pool's connections are the app's: not renamed.
    const pool = await admin.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM pg_stat_activity
        WHERE application_name = 'socket.io-postgres-effect' AND NOT query ILIKE 'LISTEN%'`,
    )
    expect(pool.rows[0]!.n).toBe(0)
    await dropTable(admin, id)
  })

  it("keeps the name the pool gives", async () => {
    const id = suiteId("startup_own")
    const server = start(makePool({ application_name: `${id}_app` }), {
      channelPrefix: id,
      tableName: id,
    })
    await server.io.of("/").adapter.serverCount()
    await eventually(async () => (await backends(id)).some((b) => b.listen), {
      message: "the LISTEN backend is seen",
    })
    expect((await backends(id)).filter((b) => b.listen)).toEqual([
      { name: `${id}_app`, listen: true },
    ])
    await dropTable(admin, id)
  })
})

describe("SQL in messages", () => {
  it("is cut at a word boundary, with an ellipsis, never mid-word", () => {
    const sql =
      'WITH ins AS (INSERT INTO "socket_io_attachments" (payload) VALUES ($1) RETURNING id) SELECT pg_notify($2, $3)'
    const short = shortSql(sql)
    expect(short).toBe('WITH ins AS (INSERT INTO "socket_io_attachments" (payload) …')
    expect(shortSql("SELECT 1")).toBe("SELECT 1")
    expect(shortSql("  SELECT\n   1  ")).toBe("SELECT 1")
    for (let max = 1; max < sql.length; max++) {
      const cut = shortSql(sql, max)
      if (cut === sql) continue
      const kept = cut.slice(0, -" …".length)
      expect(cut.endsWith(" …")).toBe(true)
      // What is kept is whole words of the statement.
      expect(sql.startsWith(kept) && sql[kept.length] === " ").toBe(true)
    }
  })
})
