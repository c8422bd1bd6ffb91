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
import * as Errors from "../src/Errors.js"
import * as Heartbeat from "../src/Heartbeat.js"
import * as Protocol from "../src/Protocol.js"

const { MessageType } = Protocol

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

/** A server channel in memory: what this process sends, and what the test makes it hear. */
const memoryChannel = () => {
  const sent: Array<Protocol.Message> = []
  const state = {
    failing: false,
    deliver: undefined as ((m: Protocol.Message) => void) | undefined,
  }
  const channel: Heartbeat.ServerChannel = {
    subscribe: (onMessage) =>
      Effect.acquireRelease(
        Effect.sync(() => void (state.deliver = onMessage)),
        () => Effect.sync(() => void (state.deliver = undefined)),
      ),
    publish: (message) =>
      state.failing
        ? Effect.fail(new Error("PostgreSQL is down"))
        : Effect.sync(() => void sent.push(message)),
  }
  return {
    channel,
    sent,
    state,
    /** Server `server`'s heartbeat arrives on the channel. */
    beat: (server: string) =>
      state.deliver?.({ uid: server, type: MessageType.HEARTBEAT, ours: marker(server) }),
  }
}

const marker = (server: string) => ({ v: 1, server })

const serverTest = <A, E>(
  name: string,
  body: (
    memory: ReturnType<typeof memoryChannel>,
  ) => Effect.Effect<A, E, Heartbeat.Heartbeat | Scope.Scope>,
) =>
  it.effect(name, () => {
    const memory = memoryChannel()
    const layer = Heartbeat.layerWith(memory.channel).pipe(
      Layer.provide(
        Layer.succeed(
          AdapterConfig.AdapterConfig,
          AdapterConfig.decodeSync({ heartbeatInterval: 5000, heartbeatTimeout: 10000 }),
        ),
      ),
    )
    return body(memory).pipe(Effect.scoped, Effect.provide(layer))
  })

/** Tracks namespace `nsp` as a node, recording its own heartbeats and downed nodes. */
const trackNode = (nsp: string, member = true, onForeign?: (uid: string) => void) =>
  Effect.gen(function* () {
    const heartbeat = yield* Heartbeat.Heartbeat
    const recorded = { heartbeats: 0, down: [] as Array<string> }
    const membership = yield* heartbeat.track({
      nsp,
      member,
      ...(onForeign && { onForeign }),
      publishHeartbeat: Effect.sync(() => void recorded.heartbeats++),
      onNodeDown: (uid) => void recorded.down.push(uid),
    })
    return { membership, recorded }
  })

const serverHeartbeats = (sent: ReadonlyArray<Protocol.Message>) =>
  sent.filter((m) => m.type === MessageType.HEARTBEAT).length

describe("Heartbeat, server-level membership (every node heard is ours)", () => {
  serverTest("a server sends one heartbeat per interval however many namespaces it has", (memory) =>
    Effect.gen(function* () {
      const first = yield* trackNode("/0")
      yield* advance("30 seconds")
      const withOne = serverHeartbeats(memory.sent)
      assert.isAtLeast(withOne, 6)
      const more = yield* Effect.forEach(
        Array.from({ length: 99 }, (_, i) => `/${i + 1}`),
        (nsp) => trackNode(nsp),
      )
      yield* advance("30 seconds")
      assert.strictEqual(serverHeartbeats(memory.sent) - withOne, 6)
      assert.strictEqual(first.recorded.heartbeats, 0)
      assert.deepStrictEqual(
        more.map((t) => t.recorded.heartbeats).filter((n) => n > 0),
        [],
        "no namespace heartbeats on its own channel",
      )
      assert.deepStrictEqual(memory.sent[0], {
        uid: (yield* Heartbeat.Heartbeat).marker.server,
        type: MessageType.HEARTBEAT,
        ours: (yield* Heartbeat.Heartbeat).marker,
      })
    }),
  )

  serverTest(
    "keeps a node of ours while its server heartbeats, and reports it down once its server is silent",
    (memory) =>
      Effect.gen(function* () {
        const { membership, recorded } = yield* trackNode("/")
        membership.receive({ uid: "a", type: MessageType.HEARTBEAT, ours: marker("S1") })
        membership.receive({ uid: "b", type: MessageType.INITIAL_HEARTBEAT, ours: marker("S2") })
        for (let i = 0; i < 12; i++) {
          memory.beat("S1")
          memory.beat("S2")
          yield* advance("5 seconds")
        }
        assert.deepStrictEqual(membership.nodes(), ["a", "b"])
        assert.deepStrictEqual(recorded.down, [])
        for (let i = 0; i < 3; i++) {
          memory.beat("S2")
          yield* advance("5 seconds")
        }
        assert.deepStrictEqual(recorded.down, ["a"])
        assert.deepStrictEqual(membership.nodes(), ["b"])
      }),
  )

  serverTest("a node known only by other messages is kept by its own messages only", (memory) =>
    Effect.gen(function* () {
      const { membership, recorded } = yield* trackNode("/")
      membership.seen("x")
      for (let i = 0; i < 3; i++) {
        memory.beat("S1")
        yield* advance("5 seconds")
      }
      assert.deepStrictEqual(recorded.down, ["x"])
    }),
  )

  serverTest(
    "a node heard without the marker brings the namespace's heartbeats back, until it leaves",
    (memory) =>
      Effect.gen(function* () {
        const heartbeat = yield* Heartbeat.Heartbeat
        const told: Array<unknown> = []
        heartbeat.capabilities.onForeign((event) => void told.push(event))
        const toldLegacy: Array<string> = []
        const legacy = yield* trackNode("/legacy", true, (uid) => void toldLegacy.push(uid))
        const quiet = yield* trackNode("/quiet")
        legacy.membership.receive({ uid: "old", type: MessageType.HEARTBEAT })
        assert.deepStrictEqual(told, [{ nsp: "/legacy", uid: "old" }])
        assert.deepStrictEqual(toldLegacy, ["old"])
        assert.isFalse(heartbeat.capabilities.allOurs())
        assert.isFalse(legacy.membership.allOurs())
        assert.isTrue(quiet.membership.allOurs())
        for (let i = 0; i < 4; i++) {
          legacy.membership.seen("old")
          yield* advance("5 seconds")
        }
        assert.isAtLeast(legacy.recorded.heartbeats, 3)
        assert.strictEqual(quiet.recorded.heartbeats, 0)
        legacy.membership.remove("old")
        const before = legacy.recorded.heartbeats
        yield* advance("30 seconds")
        assert.strictEqual(legacy.recorded.heartbeats, before)
        assert.isTrue(heartbeat.capabilities.allOurs())
        assert.isAtLeast(serverHeartbeats(memory.sent), 10)
      }),
  )

  serverTest(
    "after a resync, a node its server vouches for must answer within heartbeatTimeout",
    (memory) =>
      Effect.gen(function* () {
        const { membership, recorded } = yield* trackNode("/")
        membership.receive({ uid: "gone", type: MessageType.HEARTBEAT, ours: marker("S1") })
        membership.receive({ uid: "here", type: MessageType.HEARTBEAT, ours: marker("S1") })
        for (let i = 0; i < 6; i++) {
          memory.beat("S1")
          yield* advance("5 seconds")
        }
        assert.deepStrictEqual(membership.nodes(), ["gone", "here"])
        memory.beat("S1")
        membership.resync()
        yield* advance("1 second")
        membership.receive({ uid: "here", type: MessageType.HEARTBEAT, ours: marker("S1") })
        for (let i = 0; i < 4; i++) {
          memory.beat("S1")
          yield* advance("5 seconds")
        }
        assert.deepStrictEqual(recorded.down, ["gone"])
        assert.deepStrictEqual(membership.nodes(), ["here"])
      }),
  )

  serverTest(
    "after a failed server heartbeat (told to the errorHandler), each namespace heartbeats once on its own channel",
    (memory) => {
      const told: Array<string> = []
      return Effect.gen(function* () {
        const a = yield* trackNode("/a")
        const b = yield* trackNode("/b")
        yield* advance("20 seconds")
        assert.strictEqual(a.recorded.heartbeats + b.recorded.heartbeats, 0)
        memory.state.failing = true
        yield* advance("15 seconds")
        assert.strictEqual(a.recorded.heartbeats, 0, "nothing while they fail")
        memory.state.failing = false
        yield* advance("30 seconds")
        assert.strictEqual(a.recorded.heartbeats, 1)
        assert.strictEqual(b.recorded.heartbeats, 1)
        assert.deepStrictEqual(told, [
          "PostgreSQL is down",
          "PostgreSQL is down",
          "PostgreSQL is down",
        ])
      }).pipe(Effect.provideService(Errors.ErrorHandler, (error) => void told.push(error.message)))
    },
  )

  serverTest(
    "a node dropped with its silent server comes back when the server is heard again, unless it left",
    (memory) =>
      Effect.gen(function* () {
        const { membership, recorded } = yield* trackNode("/")
        for (const uid of ["a", "b", "c"]) {
          membership.receive({ uid, type: MessageType.HEARTBEAT, ours: marker("S1") })
        }
        memory.beat("S1")
        // This process stalls: its timers run before the heartbeats that waited.
        yield* advance("11 seconds")
        assert.deepStrictEqual(recorded.down, ["a", "b", "c"])
        membership.remove("b")
        memory.beat("S1")
        yield* advance("1 second")
        assert.deepStrictEqual(membership.nodes(), ["a", "c"])
        for (let i = 0; i < 6; i++) {
          memory.beat("S1")
          yield* advance("5 seconds")
        }
        assert.deepStrictEqual(membership.nodes(), ["a", "c"])
        // A server silent for long: its nodes do not come back with it.
        yield* advance("70 seconds")
        memory.beat("S1")
        yield* advance("1 second")
        assert.deepStrictEqual(membership.nodes(), [])
      }),
  )

  serverTest(
    "keeps sending server heartbeats when the first namespace closes, stops with the last",
    (memory) =>
      Effect.gen(function* () {
        const first = yield* Scope.make()
        const last = yield* Scope.make()
        yield* Scope.provide(trackNode("/first"), first)
        yield* Scope.provide(trackNode("/last"), last)
        yield* advance("10 seconds")
        yield* Scope.close(first, Exit.void)
        const before = serverHeartbeats(memory.sent)
        yield* advance("30 seconds")
        assert.strictEqual(serverHeartbeats(memory.sent) - before, 6)
        assert.isDefined(memory.state.deliver, "the server channel is still listened on")
        yield* Scope.close(last, Exit.void)
        const after = serverHeartbeats(memory.sent)
        yield* advance("30 seconds")
        assert.strictEqual(serverHeartbeats(memory.sent), after)
        assert.isUndefined(memory.state.deliver, "the server channel is left")
      }),
  )

  serverTest("an emitter only watches: no heartbeat of any kind", (memory) =>
    Effect.gen(function* () {
      const { membership, recorded } = yield* trackNode("/", false)
      membership.receive({ uid: "a", type: MessageType.HEARTBEAT, ours: marker("S1") })
      for (let i = 0; i < 6; i++) {
        memory.beat("S1")
        yield* advance("5 seconds")
      }
      assert.deepStrictEqual(membership.nodes(), ["a"])
      assert.strictEqual(recorded.heartbeats, 0)
      assert.strictEqual(memory.sent.length, 0)
    }),
  )
})
