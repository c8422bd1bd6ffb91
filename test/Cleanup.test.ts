/**
 * Cleanup timing under the TestClock, over a recording AttachmentStore: one deletion per
 * `cleanupInterval`, of rows older than `cleanupInterval`, and a failing pass does not stop the loop.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import { TestClock } from "effect/testing"
import { AttachmentStore } from "../src/AttachmentStore.js"
import * as Cleanup from "../src/Cleanup.js"
import * as Config from "../src/Config.js"
import { DatabaseError } from "../src/Errors.js"

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
    Config.Config,
    Config.decodeSync({ cleanupInterval: CLEANUP_INTERVAL }),
  )
  const logger = Logger.layer(
    [
      Logger.make(({ message }) => {
        recorded.logs.push((Array.isArray(message) ? message : [message]).map(String).join(" "))
      }),
    ],
    { mergeWithExisting: true },
  )
  const layer = Cleanup.layer.pipe(Layer.provide(Layer.merge(store, config)))
  return { recorded, layer, logger }
}

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
