/**
 * The one cleanup loop: its timing under the TestClock, over a recording AttachmentStore (one
 * deletion per `cleanupInterval`, of rows older than `cleanupInterval`, and a failing pass does not
 * stop the loop), the tasks registered by others, and the attachments' age filter against real
 * PostgreSQL.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Scope from "effect/Scope"
import { TestClock } from "effect/testing"
import type pg from "pg"
import * as AttachmentStoreModule from "../src/AttachmentStore.js"
import { AttachmentStore } from "../src/AttachmentStore.js"
import * as Cleanup from "../src/Cleanup.js"
import * as AdapterConfig from "../src/AdapterConfig.js"
import * as Database from "../src/Database.js"
import { DatabaseError } from "../src/Errors.js"
import { createAttachmentTable, dropTable, makePool, suiteId } from "./utils/postgres.js"

const CLEANUP_INTERVAL = 30_000

/** What the test store and logger saw. */
interface Recorded {
  /** The age of each `deleteOlderThan` call, in milliseconds. */
  readonly deletions: Array<number>
  readonly logs: Array<string>
}

/**
 * A fresh Cleanup over a store whose `deleteOlderThan` records its age and fails when `fails`
 * says so for that call (0-based), plus a logger that records every message.
 */
const makeCleanup = (fails: (call: number) => boolean = () => false) => {
  const recorded: Recorded = { deletions: [], logs: [] }
  const store = Layer.succeed(AttachmentStore, {
    unsafeFetch: () => {
      throw new Error("not used")
    },
    ensureTable: Effect.void,
    tableExists: Effect.succeed(true),
    deleteOlderThan: (age) =>
      Effect.suspend(() => {
        const call = recorded.deletions.length
        recorded.deletions.push(Duration.toMillis(age))
        return fails(call)
          ? Effect.fail(
              new DatabaseError({ operation: "deleteOlderThan", message: "connection refused" }),
            )
          : Effect.succeed(3)
      }),
  })
  const config = Layer.succeed(
    AdapterConfig.AdapterConfig,
    AdapterConfig.decodeSync({ cleanupInterval: CLEANUP_INTERVAL }),
  )
  const logger = recordingLogger(recorded.logs)
  const layer = Cleanup.layer.pipe(Layer.provide(Layer.merge(store, config)))
  return { recorded, layer, logger }
}

/** A logger that records every message. */
const recordingLogger = (logs: Array<string>) =>
  Logger.layer(
    [
      Logger.make(({ message }) => {
        logs.push((Array.isArray(message) ? message : [message]).map(String).join(" "))
      }),
    ],
    { mergeWithExisting: true },
  )

/** Moves the clock, then lets the woken fibers run. */
const advance = (millis: number) =>
  TestClock.adjust(Duration.millis(millis)).pipe(Effect.andThen(Effect.yieldNow))

describe("Cleanup", () => {
  it.effect("deletes nothing before the first interval, then once per interval", () => {
    const { recorded, layer, logger } = makeCleanup()
    return Effect.gen(function* () {
      yield* advance(CLEANUP_INTERVAL - 1)
      assert.deepStrictEqual(recorded.deletions, [])
      yield* advance(1)
      assert.strictEqual(recorded.deletions.length, 1)
      for (let i = 2; i <= 4; i++) {
        yield* advance(CLEANUP_INTERVAL - 1)
        assert.strictEqual(recorded.deletions.length, i - 1)
        yield* advance(1)
        assert.strictEqual(recorded.deletions.length, i)
      }
    }).pipe(Effect.provide(layer), Effect.provide(logger))
  })

  it.effect("deletes rows older than cleanupInterval", () => {
    const { recorded, layer, logger } = makeCleanup()
    return Effect.gen(function* () {
      yield* advance(3 * CLEANUP_INTERVAL)
      assert.deepStrictEqual(recorded.deletions, [
        CLEANUP_INTERVAL,
        CLEANUP_INTERVAL,
        CLEANUP_INTERVAL,
      ])
    }).pipe(Effect.provide(layer), Effect.provide(logger))
  })

  it.effect("logs a failing pass and keeps running", () => {
    const { recorded, layer, logger } = makeCleanup((call) => call < 2)
    return Effect.gen(function* () {
      yield* advance(CLEANUP_INTERVAL)
      assert.strictEqual(recorded.deletions.length, 1)
      assert.isTrue(
        recorded.logs.some((line) => line.includes("connection refused")),
        recorded.logs.join("\n"),
      )
      yield* advance(CLEANUP_INTERVAL)
      assert.strictEqual(recorded.deletions.length, 2)
      yield* advance(CLEANUP_INTERVAL)
      yield* advance(CLEANUP_INTERVAL)
      assert.strictEqual(recorded.deletions.length, 4)
    }).pipe(Effect.provide(layer), Effect.provide(logger))
  })

  it.effect("runOnce deletes now and resolves with the count, or 0 when the store fails", () => {
    const { recorded, layer, logger } = makeCleanup((call) => call === 1)
    return Effect.gen(function* () {
      const cleanup = yield* Cleanup.Cleanup
      assert.strictEqual(yield* cleanup.runOnce, 3)
      assert.strictEqual(yield* cleanup.runOnce, 0)
      assert.deepStrictEqual(recorded.deletions, [CLEANUP_INTERVAL, CLEANUP_INTERVAL])
    }).pipe(Effect.provide(layer), Effect.provide(logger))
  })

  it.effect("stops when its scope closes", () => {
    const { recorded, layer, logger } = makeCleanup()
    return Effect.gen(function* () {
      yield* Effect.scoped(
        Effect.gen(function* () {
          yield* Layer.build(layer)
          yield* advance(CLEANUP_INTERVAL)
          assert.strictEqual(recorded.deletions.length, 1)
        }),
      )
      yield* advance(5 * CLEANUP_INTERVAL)
      assert.strictEqual(recorded.deletions.length, 1)
    }).pipe(Effect.provide(logger))
  })
})

describe("Cleanup tasks registered by others", () => {
  const config = Layer.succeed(
    AdapterConfig.AdapterConfig,
    AdapterConfig.decodeSync({ cleanupInterval: CLEANUP_INTERVAL }),
  )

  /** A task that counts its runs, failing (or dying) on the runs `fails` says. */
  const task = (
    name: string,
    fails: (run: number) => "fail" | "die" | undefined = () => undefined,
  ) => {
    const runs: Array<number> = []
    const cleanupTask: Cleanup.CleanupTask = {
      name,
      run: Effect.suspend(() => {
        const run = runs.length
        runs.push(run)
        const failure = fails(run)
        if (failure === "die") return Effect.die(new Error(`${name} blew up`))
        if (failure === "fail") {
          return Effect.fail(new DatabaseError({ operation: name, message: `${name} refused` }))
        }
        return Effect.succeed(2)
      }),
    }
    return { runs, task: cleanupTask }
  }

  it.effect("runs every registered task once per interval, in one loop", () => {
    const a = task("a")
    const b = task("b")
    return Effect.gen(function* () {
      const cleanup = Context.get(yield* Layer.build(Cleanup.layerEmpty), Cleanup.Cleanup)
      yield* cleanup.register(a.task)
      yield* advance(CLEANUP_INTERVAL)
      assert.deepStrictEqual([a.runs.length, b.runs.length], [1, 0])
      yield* cleanup.register(b.task)
      yield* advance(CLEANUP_INTERVAL - 1)
      assert.deepStrictEqual([a.runs.length, b.runs.length], [1, 0])
      yield* advance(1)
      assert.deepStrictEqual([a.runs.length, b.runs.length], [2, 1])
      // One pass on demand runs them all and adds up what they deleted.
      assert.strictEqual(yield* cleanup.runOnce, 4)
      assert.deepStrictEqual([a.runs.length, b.runs.length], [3, 2])
    }).pipe(Effect.provide(config))
  })

  it.effect("logs a task that fails or dies, and runs the others and the next passes", () => {
    const logs: Array<string> = []
    const failing = task("failing", (run) => (run === 0 ? "fail" : run === 1 ? "die" : undefined))
    const other = task("other")
    return Effect.gen(function* () {
      const cleanup = Context.get(yield* Layer.build(Cleanup.layerEmpty), Cleanup.Cleanup)
      yield* cleanup.register(failing.task)
      yield* cleanup.register(other.task)
      yield* advance(CLEANUP_INTERVAL)
      assert.isTrue(
        logs.some((line) => line.includes("failing refused")),
        logs.join("\n"),
      )
      assert.strictEqual(other.runs.length, 1)
      assert.strictEqual(yield* cleanup.runOnce, 2)
      assert.isTrue(
        logs.some((line) => line.includes("cleanup of failing failed")),
        logs.join("\n"),
      )
      yield* advance(CLEANUP_INTERVAL)
      assert.deepStrictEqual([failing.runs.length, other.runs.length], [3, 3])
    }).pipe(Effect.provide(Layer.merge(config, recordingLogger(logs))))
  })

  it.effect("drops a task when the scope it was registered in closes", () => {
    const a = task("a")
    return Effect.gen(function* () {
      const cleanup = Context.get(yield* Layer.build(Cleanup.layerEmpty), Cleanup.Cleanup)
      const scope = yield* Scope.make()
      yield* Scope.provide(cleanup.register(a.task), scope)
      assert.strictEqual(yield* cleanup.runOnce, 2)
      yield* Scope.close(scope, undefined as never)
      assert.strictEqual(yield* cleanup.runOnce, 0)
      yield* advance(3 * CLEANUP_INTERVAL)
      assert.strictEqual(a.runs.length, 1)
    }).pipe(Effect.provide(config))
  })
})

describe("Cleanup of attachments against PostgreSQL", () => {
  let pool: pg.Pool
  const table = suiteId("cleanup_age")

  beforeAll(async () => {
    pool = makePool({ max: 2 })
    await createAttachmentTable(pool, table)
  })

  afterAll(async () => {
    await dropTable(pool, table)
    await pool?.end()
  })

  it.live("deletes the attachments older than cleanupInterval and keeps the younger ones", () =>
    Effect.gen(function* () {
      // Rows well on both sides of the interval (30 s), each payload naming its age.
      const ages = [3600, 35, 25, 0]
      yield* Effect.promise(() =>
        pool.query(
          `INSERT INTO ${table} (created_at, payload) ` +
            `SELECT now() - make_interval(secs => a), convert_to(a::text, 'UTF8') FROM unnest($1::int[]) AS a`,
          [ages],
        ),
      )
      const layer = Cleanup.layer.pipe(
        Layer.provideMerge(AttachmentStoreModule.layer),
        Layer.provide(
          Layer.merge(
            Layer.succeed(
              AdapterConfig.AdapterConfig,
              AdapterConfig.decodeSync({ tableName: table, cleanupInterval: CLEANUP_INTERVAL }),
            ),
            Database.layerPool(pool),
          ),
        ),
      )
      const cleanup = Context.get(yield* Layer.build(layer), Cleanup.Cleanup)
      assert.strictEqual(yield* cleanup.runOnce, 2)
      const left = yield* Effect.promise(() =>
        pool.query<{ age: string }>(
          `SELECT convert_from(payload, 'UTF8') AS age FROM ${table} ORDER BY created_at`,
        ),
      )
      assert.deepStrictEqual(
        left.rows.map((row) => row.age),
        ["25", "0"],
      )
      assert.strictEqual(yield* cleanup.runOnce, 0)
    }),
  )
})
