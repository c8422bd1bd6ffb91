/**
 * Heartbeat timing under the TestClock: a heartbeat when nothing was published for
 * `heartbeatInterval`, a node unseen for `heartbeatTimeout` is down. Each test builds its own layer,
 * so each has its own clock.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import { TestClock } from "effect/testing"
import * as AdapterConfig from "../src/AdapterConfig.js"
import * as Heartbeat from "../src/Heartbeat.js"

// Per-namespace heartbeats, as 0.5.0: see "server-level membership" below for the default.
const HeartbeatTest = Heartbeat.layerWith(Heartbeat.noServerChannel).pipe(
  Layer.provide(
    Layer.succeed(
      AdapterConfig.AdapterConfig,
      AdapterConfig.decodeSync({
        heartbeatInterval: 5000,
        heartbeatTimeout: 10000,
        membership: "namespace",
      }),
    ),
  ),
)

/** Tracks a namespace whose heartbeats and downed nodes are recorded. */
const trackRecorded = Effect.gen(function* () {
  const heartbeat = yield* Heartbeat.Heartbeat
  const recorded = { heartbeats: 0, down: [] as Array<string> }
  const membership = yield* heartbeat.track({
    publishHeartbeat: Effect.sync(() => {
      recorded.heartbeats++
    }),
    onNodeDown: (uid) => void recorded.down.push(uid),
  })
  return { membership, recorded }
})

/** Moves the clock, then lets the woken fibers run. */
const advance = (duration: Parameters<typeof TestClock.adjust>[0]) =>
  TestClock.adjust(duration).pipe(Effect.andThen(Effect.yieldNow))

const test = <A, E>(name: string, body: Effect.Effect<A, E, Heartbeat.Heartbeat | Scope.Scope>) =>
  it.effect(name, () => body.pipe(Effect.scoped, Effect.provide(HeartbeatTest)))

describe("Heartbeat", () => {
  test(
    "sends no heartbeat before the interval and one when it has passed",
    Effect.gen(function* () {
      const { recorded } = yield* trackRecorded
      yield* advance("4999 millis")
      assert.strictEqual(recorded.heartbeats, 0)
      yield* advance("1 millis")
      assert.strictEqual(recorded.heartbeats, 1)
      yield* advance("5 seconds")
      assert.strictEqual(recorded.heartbeats, 2)
    }),
  )

  test(
    "sends one heartbeat per interval while nothing else is published",
    Effect.gen(function* () {
      const { recorded } = yield* trackRecorded
      for (let i = 1; i <= 5; i++) {
        yield* advance("5 seconds")
        assert.strictEqual(recorded.heartbeats, i)
      }
    }),
  )

  test(
    "postpones the heartbeat when something was published in between",
    Effect.gen(function* () {
      const { membership, recorded } = yield* trackRecorded
      yield* advance("3 seconds")
      membership.published()
      yield* advance("2 seconds")
      assert.strictEqual(recorded.heartbeats, 0)
      yield* advance("2999 millis")
      assert.strictEqual(recorded.heartbeats, 0)
      yield* advance("1 millis")
      assert.strictEqual(recorded.heartbeats, 1)
    }),
  )

  test(
    "sends no heartbeat at all while publishing more often than the interval",
    Effect.gen(function* () {
      const { membership, recorded } = yield* trackRecorded
      for (let i = 0; i < 10; i++) {
        yield* advance("4 seconds")
        membership.published()
      }
      assert.strictEqual(recorded.heartbeats, 0)
    }),
  )

  test(
    "lists a node that was seen and reports it down once after the timeout without news",
    Effect.gen(function* () {
      const { membership, recorded } = yield* trackRecorded
      membership.seen("node-a")
      assert.deepStrictEqual(membership.nodes(), ["node-a"])
      yield* advance("9 seconds")
      assert.deepStrictEqual(membership.nodes(), ["node-a"])
      assert.deepStrictEqual(recorded.down, [])
      yield* advance("2 seconds")
      assert.deepStrictEqual(recorded.down, ["node-a"])
      assert.deepStrictEqual(membership.nodes(), [])
      yield* advance("30 seconds")
      assert.deepStrictEqual(recorded.down, ["node-a"])
    }),
  )

  test(
    "keeps a node that keeps being seen within the timeout",
    Effect.gen(function* () {
      const { membership, recorded } = yield* trackRecorded
      membership.seen("node-a")
      membership.seen("node-b")
      for (let i = 0; i < 5; i++) {
        yield* advance("8 seconds")
        membership.seen("node-a")
      }
      assert.deepStrictEqual(recorded.down, ["node-b"])
      assert.deepStrictEqual(membership.nodes(), ["node-a"])
    }),
  )

  test(
    "removes a node at once without reporting it down",
    Effect.gen(function* () {
      const { membership, recorded } = yield* trackRecorded
      membership.seen("node-a")
      membership.seen("node-b")
      membership.remove("node-a")
      assert.deepStrictEqual(membership.nodes(), ["node-b"])
      yield* advance("11 seconds")
      assert.deepStrictEqual(recorded.down, ["node-b"])
    }),
  )

  test(
    "tracks each namespace on its own",
    Effect.gen(function* () {
      const first = yield* trackRecorded
      yield* advance("3 seconds")
      const second = yield* trackRecorded
      first.membership.seen("node-a")
      assert.deepStrictEqual(second.membership.nodes(), [])
      yield* advance("2 seconds")
      assert.strictEqual(first.recorded.heartbeats, 1)
      assert.strictEqual(second.recorded.heartbeats, 0)
      yield* advance("3 seconds")
      assert.strictEqual(second.recorded.heartbeats, 1)
    }),
  )

  test(
    "stops sending heartbeats and checking nodes when the scope closes",
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const { membership, recorded } = yield* Scope.provide(trackRecorded, scope)
      membership.seen("node-a")
      yield* advance("5 seconds")
      assert.strictEqual(recorded.heartbeats, 1)
      yield* Scope.close(scope, Exit.void)
      yield* advance("1 minute")
      assert.strictEqual(recorded.heartbeats, 1)
      assert.deepStrictEqual(recorded.down, [])
    }),
  )
})
