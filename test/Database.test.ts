/**
 * The Database service over a `pg.Pool`, through a TCP proxy that black-holes connections: a
 * statement past its deadline, or interrupted, fails at once and its connection is discarded
 * (released with an error, socket destroyed), so that nothing stays checked out; after a deadline
 * passed, idle connections not seen alive since are not handed out again; `withTimeout` gives
 * every statement a deadline; statements that answer leave their connection in the pool.
 */
import { afterAll, afterEach, assert, beforeAll, describe, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import type pg from "pg"
import * as Database from "../src/Database.js"
import { eventually as waitUntil } from "./utils/cluster.js"
import { databaseUrl, makePool } from "./utils/postgres.js"
import { startProxy, type TcpProxy } from "./utils/proxy.js"

let proxy: TcpProxy
const pools: Array<pg.Pool> = []

beforeAll(async () => {
  proxy = await startProxy({ target: databaseUrl() })
})

// A test that failed half-way leaves no fault behind for the next.
afterEach(() => proxy.restore())

afterAll(async () => {
  await Promise.all(pools.map((pool) => pool.end().catch(() => {})))
  await proxy.close()
})

const fromPromise = <A>(promise: () => Promise<A>) =>
  Effect.tryPromise({ try: promise, catch: (error) => error as Error })

const eventually = (predicate: () => boolean, message: string) =>
  fromPromise(() => waitUntil(predicate, { timeout: 10_000, message }))

/** A pool through the proxy (no idle timeout: only the service may let go), and its service. */
const databaseOver = (max: number) =>
  Effect.gen(function* () {
    const pool = makePool({ connectionString: proxy.url, max, idleTimeoutMillis: 0 })
    pools.push(pool)
    const context = yield* Layer.build(Database.layerPool(pool))
    return { pool, database: Context.get(context, Database.Database) }
  })

/** Opens `n` connections at once and leaves them idle in the pool. */
const warm = (pool: pg.Pool, n: number) =>
  fromPromise(() =>
    Promise.all(Array.from({ length: n }, () => pool.query("SELECT pg_sleep(0.05)"))),
  )

/** Black-holes the connections of `pool` (and only them); returns how many. */
const blackHole = (pool: pg.Pool) => {
  const ports = new Set(
    (
      pool as unknown as { _clients: Array<{ connection: { stream: { localPort: number } } }> }
    )._clients.map((client) => client.connection.stream.localPort),
  )
  return proxy.blackHole({ only: (connection) => ports.has(connection.clientPort) })
}

/** Black-holed connections whose owner still holds them. */
const deadKept = () =>
  proxy.connections().filter((connection) => connection.blackHoled && connection.clientOpen)

/** Nothing checked out, nobody waiting. */
const sane = (pool: pg.Pool) => pool.waitingCount === 0 && pool.idleCount === pool.totalCount

const SHORT = Duration.millis(300)

describe("Database over a pg.Pool", () => {
  it.live("leaves a connection that answered in the pool", () =>
    Effect.gen(function* () {
      const { pool, database } = yield* databaseOver(2)
      const rows = yield* database.query<{ n: number }>("SELECT 1 AS n", [], SHORT)
      assert.deepStrictEqual(rows, [{ n: 1 }])
      assert.strictEqual(pool.totalCount, 1)
      assert.isTrue(sane(pool))
    }),
  )

  it.live("names a failed statement by its text, whitespace collapsed and cut at a word", () =>
    Effect.gen(function* () {
      const { database } = yield* databaseOver(1)
      const sql = `SELECT  no_such_column\n  FROM (VALUES (1)) v(x) WHERE ${"x = 1 AND ".repeat(20)}true`
      const expected = "SELECT no_such_column FROM (VALUES (1)) v(x) WHERE x = 1 AND …"
      for (const failed of [
        yield* Effect.flip(database.query(sql, [], SHORT)),
        yield* fromPromise(() =>
          database.unsafeQuery(sql).then(
            () => undefined,
            (e) => e,
          ),
        ),
      ]) {
        assert.strictEqual(failed?.operation, expected)
        assert.match(
          failed?.message ?? "",
          /^SELECT no_such_column .* failed: column "no_such_column" does not exist$/,
        )
      }
    }),
  )

  it.live("fails a statement past its deadline at once and discards its connection", () =>
    Effect.gen(function* () {
      const { pool, database } = yield* databaseOver(1)
      yield* warm(pool, 1)
      assert.strictEqual(blackHole(pool), 1)
      const exit = yield* Effect.exit(database.query("SELECT 1", [], SHORT))
      assert.isTrue(Exit.isFailure(exit))
      assert.match(String(Exit.isFailure(exit) && exit.cause), /did not answer within 300 ms/)
      // Released with an error (the pool dropped it) and its socket destroyed.
      assert.strictEqual(pool.totalCount, 0)
      yield* eventually(() => deadKept().length === 0, "the dead socket destroyed")
      proxy.restore()
      // The next statement gets a fresh connection.
      yield* database.query("SELECT 1", [], SHORT)
      assert.isTrue(sane(pool))
    }),
  )

  it.live("discards the connection of an interrupted statement", () =>
    Effect.gen(function* () {
      const { pool, database } = yield* databaseOver(1)
      yield* warm(pool, 1)
      assert.strictEqual(blackHole(pool), 1)
      const fiber = yield* Effect.forkChild(database.query("SELECT 1"))
      yield* eventually(() => pool.idleCount === 0, "the statement checked its connection out")
      yield* Fiber.interrupt(fiber)
      assert.strictEqual(pool.totalCount, 0)
      yield* eventually(() => deadKept().length === 0, "the dead socket destroyed")
      proxy.restore()
    }),
  )

  it.live("does not hand out idle connections as old as a statement that passed its deadline", () =>
    Effect.gen(function* () {
      const { pool, database } = yield* databaseOver(3)
      yield* warm(pool, 3)
      assert.strictEqual(pool.idleCount, 3)
      assert.strictEqual(blackHole(pool), 3)
      const accepted = proxy.stats().accepted
      assert.isTrue(Exit.isFailure(yield* Effect.exit(database.query("SELECT 1", [], SHORT))))
      // Another dead idle connection would cost this one its deadline too.
      yield* database.query("SELECT 1", [], SHORT)
      assert.strictEqual(proxy.stats().accepted, accepted + 1)
      yield* eventually(() => deadKept().length === 0, "every dead idle connection let go")
      assert.strictEqual(pool.totalCount, 1)
      assert.isTrue(sane(pool))
      proxy.restore()
    }),
  )

  it.live("gives every statement a deadline with withTimeout, unless it brings its own", () =>
    Effect.gen(function* () {
      const { pool, database } = yield* databaseOver(1)
      const bounded = Database.withTimeout(database, SHORT)
      yield* warm(pool, 1)
      assert.strictEqual(blackHole(pool), 1)
      const exit = yield* Effect.exit(bounded.query("SELECT 1"))
      assert.match(String(Exit.isFailure(exit) && exit.cause), /did not answer within 300 ms/)
      proxy.restore()
      const own = yield* Effect.exit(bounded.query("SELECT pg_sleep(0.5)", [], Duration.seconds(5)))
      assert.isTrue(Exit.isSuccess(own))
      assert.isTrue(sane(pool))
    }),
  )
})
