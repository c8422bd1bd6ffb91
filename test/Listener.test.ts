/**
 * The Listener against real PostgreSQL: one LISTEN per channel however many subscribers, UNLISTEN
 * when the last leaves; after its backend is terminated, a new connection that LISTENs every
 * channel again and tells subscribers `onLost` then `onListen`; a channel PostgreSQL refuses fails
 * alone, at subscribe as at reconnect; refused LISTENs and connections that drop at once are
 * retried at a bounded rate (counted over a window of the TestClock, never a tight loop); the
 * Stream form; and the backoff schedule itself.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { TestClock } from "effect/testing"
import type pg from "pg"
import * as AdapterConfig from "../src/AdapterConfig.js"
import * as Database from "../src/Database.js"
import { ErrorHandler } from "../src/Errors.js"
import * as Listener from "../src/Listener.js"
import * as Metrics from "../src/Metrics.js"
import { eventually as waitUntil } from "./utils/cluster.js"
import { databaseUrl, makePool, suiteId } from "./utils/postgres.js"
import { startProxy } from "./utils/proxy.js"

const id = suiteId("listener")
let admin: pg.Pool
const pools: Array<pg.Pool> = []

beforeAll(() => {
  admin = makePool({ max: 2 })
})

afterAll(async () => {
  await Promise.all([admin, ...pools].map((pool) => pool?.end()))
})

const fromPromise = <A>(promise: () => Promise<A>) =>
  Effect.tryPromise({ try: promise, catch: (error) => error as Error })

/** Waits (real time, bounded) until `predicate` holds. */
const eventually = (predicate: () => boolean | Promise<boolean>, message?: string) =>
  fromPromise(() => waitUntil(predicate, { timeout: 10_000, message }))

let names = 0
/** A name no other test uses: a channel, or the application name of a Listener's connection. */
const fresh = (what: string) => `${id}_${what}_${names++}`

/**
 * A Listener whose connection is named `appName`, its reports in `errors`, closed with the scope;
 * through `connectionString` (a proxy) when given.
 */
const listenerWith = (
  appName: string,
  options: AdapterConfig.AdapterOptions = {},
  connectionString?: string,
) =>
  Effect.gen(function* () {
    const pool = makePool({
      max: 1,
      application_name: appName,
      ...(connectionString === undefined ? {} : { connectionString }),
    })
    pools.push(pool)
    const errors: Array<Error> = []
    const context = yield* Layer.build(
      Listener.layer.pipe(
        Layer.provide(
          Layer.mergeAll(
            Layer.succeed(
              AdapterConfig.AdapterConfig,
              AdapterConfig.decodeSync({ reconnectMaxDelay: 200, ...options }),
            ),
            Database.layerPool(pool),
            Layer.succeed(ErrorHandler, (error: Error) => void errors.push(error)),
          ),
        ),
      ),
    )
    return { listener: Context.get(context, Listener.Listener), errors }
  })

/** What a subscriber was told, in order. */
const recorder = () => {
  const events: Array<string> = []
  const subscriber: Listener.Subscriber = {
    onNotification: (payload) => void events.push(`notification:${payload}`),
    onListen: () => void events.push("listen"),
    onLost: () => void events.push("lost"),
  }
  const count = (event: string) => events.filter((e) => e === event).length
  return { events, subscriber, count }
}

const notify = (channel: string, payload: string) =>
  fromPromise(() => admin.query("SELECT pg_notify($1, $2)", [channel, payload]))

/** The backends of the Listener connections named `appName`, with their last statement. */
const backends = (appName: string) =>
  admin
    .query<{ pid: number; query: string }>(
      "SELECT pid, query FROM pg_stat_activity WHERE application_name = $1",
      [appName],
    )
    .then((result) => result.rows)

const terminate = (appName: string) =>
  fromPromise(() =>
    admin.query(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
      [appName],
    ),
  )

/** Subscribes in a scope of its own, to be closed by the test (unsubscribe). */
const subscribeScoped = (
  listener: Listener.Listener["Service"],
  channel: string,
  subscriber: Listener.Subscriber,
) =>
  Effect.gen(function* () {
    const scope = yield* Scope.fork(yield* Effect.scope, "sequential")
    yield* listener.subscribe(channel, subscriber).pipe(Scope.provide(scope))
    return scope
  })

const quoted = (channel: string) => `"${channel}"`

/** Whether a report is the refused LISTEN of `channel`. */
const refusedOn = (channel: string) => (error: Error) =>
  (error as { _tag?: string })._tag === "ListenError" &&
  (error as { channel?: string }).channel === channel

const statements = (verb: "LISTEN" | "UNLISTEN") =>
  Metric.value(Metric.withAttributes(Metrics.listenStatements, { verb })).pipe(
    Effect.map((state) => state.count as number),
  )

describe("Listener", () => {
  it.live("sends no UNLISTEN for a subscription that ended before its LISTEN was sent", () =>
    Effect.gen(function* () {
      const { listener } = yield* listenerWith(fresh("app"))
      const warm = recorder()
      yield* subscribeScoped(listener, fresh("warm"), warm.subscriber)
      yield* eventually(() => warm.count("listen") === 1, "the connection is up")
      const listens = yield* statements("LISTEN")
      const unlistens = yield* statements("UNLISTEN")
      // Fifty channels at once: their LISTENs queue behind one another on the connection, and most
      // are still waiting when their subscriptions end.
      const scopes = []
      for (let i = 0; i < 50; i++)
        scopes.push(yield* subscribeScoped(listener, fresh("brief"), recorder().subscriber))
      yield* Effect.forEach(scopes, (scope) => Scope.close(scope, Exit.void), {
        concurrency: "unbounded",
      })
      // One more channel's LISTEN goes after whatever was queued before it.
      const last = recorder()
      yield* subscribeScoped(listener, fresh("last"), last.subscriber)
      yield* eventually(() => last.count("listen") === 1, "the last channel listens")
      const listened = (yield* statements("LISTEN")) - listens - 1
      const unlistened = (yield* statements("UNLISTEN")) - unlistens
      assert.strictEqual(unlistened, listened, "every LISTEN sent is undone, and only those")
      assert.isBelow(listened, 50)
    }),
  )

  it.live("LISTENs once for many subscribers and UNLISTENs when the last one leaves", () =>
    Effect.gen(function* () {
      const app = fresh("app")
      const channel = fresh("ch")
      const { listener } = yield* listenerWith(app)
      const [one, two] = [recorder(), recorder()]
      const first = yield* subscribeScoped(listener, channel, one.subscriber)
      yield* eventually(() => one.count("listen") === 1, "the first subscriber listens")
      const second = yield* subscribeScoped(listener, channel, two.subscriber)
      // The channel is already listened on: the second subscriber is told at once.
      assert.deepStrictEqual(two.events, ["listen"])
      yield* notify(channel, "both")
      yield* eventually(() => one.count("notification:both") + two.count("notification:both") === 2)

      yield* Scope.close(first, Exit.void)
      yield* notify(channel, "second only")
      yield* eventually(() => two.count("notification:second only") === 1, "still listened on")
      assert.strictEqual(one.count("notification:second only"), 0)
      assert.isFalse((yield* fromPromise(() => backends(app)))[0]!.query.startsWith("UNLISTEN"))

      yield* Scope.close(second, Exit.void)
      yield* eventually(
        async () => (await backends(app))[0]?.query === `UNLISTEN ${quoted(channel)}`,
        "UNLISTEN once the last subscriber left",
      )
      // And LISTEN again for a new subscriber.
      const three = recorder()
      yield* listener.subscribe(channel, three.subscriber)
      yield* eventually(() => three.count("listen") === 1)
      yield* notify(channel, "again")
      yield* eventually(() => three.count("notification:again") === 1)
    }),
  )

  it.live("LISTENs every channel again on a new connection after its backend is terminated", () =>
    Effect.gen(function* () {
      const app = fresh("app")
      const channels = [fresh("ch"), fresh("ch")]
      const { listener, errors } = yield* listenerWith(app)
      const recorders = channels.map(() => recorder())
      yield* Effect.forEach(channels, (channel, i) =>
        listener.subscribe(channel, recorders[i]!.subscriber),
      )
      yield* eventually(() => recorders.every((r) => r.count("listen") === 1))
      const pid = listener.unsafeBackendPid()
      assert.isDefined(pid)

      yield* terminate(app)
      yield* eventually(
        () => recorders.every((r) => r.count("listen") === 2),
        "onListen again on every channel",
      )
      assert.notStrictEqual(listener.unsafeBackendPid(), pid)
      for (const r of recorders) assert.deepStrictEqual(r.events, ["listen", "lost", "listen"])
      assert.isTrue(errors.some((error) => /LISTEN connection lost/.test(error.message)))
      yield* Effect.forEach(channels, (channel) => notify(channel, "after"))
      yield* eventually(() => recorders.every((r) => r.count("notification:after") === 1))
    }),
  )

  it.live("fails a channel PostgreSQL refuses alone, at subscribe and at reconnect", () =>
    Effect.gen(function* () {
      const app = fresh("app")
      const good = fresh("ch")
      // PostgreSQL refuses `LISTEN ""`: "zero-length delimited identifier".
      const bad = ""
      const { listener, errors } = yield* listenerWith(app)
      const refused = () => errors.filter(refusedOn(bad))
      const [onGood, onBad] = [recorder(), recorder()]
      yield* listener.subscribe(good, onGood.subscriber)
      yield* eventually(() => onGood.count("listen") === 1)
      yield* listener.subscribe(bad, onBad.subscriber)
      yield* eventually(() => refused().length >= 1, "the refused LISTEN is reported")
      yield* notify(good, "at subscribe")
      yield* eventually(() => onGood.count("notification:at subscribe") === 1)

      // At reconnect: the good channel listens again, the bad one is refused again, alone.
      yield* terminate(app)
      yield* eventually(() => onGood.count("listen") === 2, "the good channel listens again")
      const pid = listener.unsafeBackendPid()
      const before = refused().length
      yield* eventually(() => refused().length > before, "the refused LISTEN is reported again")
      yield* notify(good, "at reconnect")
      yield* eventually(() => onGood.count("notification:at reconnect") === 1)
      // One connection throughout: the refusal did not end the session.
      assert.strictEqual(listener.unsafeBackendPid(), pid)
      assert.strictEqual(onGood.count("listen"), 2)
      assert.strictEqual(onBad.count("listen"), 0)
    }),
  )

  it.live("offers a channel's events as a Stream", () =>
    Effect.gen(function* () {
      const app = fresh("app")
      const channel = fresh("ch")
      const { listener } = yield* listenerWith(app)
      let listens = 0
      const events = yield* listener.events(channel).pipe(
        Stream.tap((event) => {
          if (event._tag === "Listening" && listens++ === 0)
            return notify(channel, "a").pipe(Effect.andThen(notify(channel, "b")))
          if (event._tag === "Notification" && event.payload === "b") return terminate(app)
          if (event._tag === "Listening") return notify(channel, "c")
          return Effect.void
        }),
        Stream.take(6),
        Stream.runCollect,
      )
      assert.deepStrictEqual(events, [
        { _tag: "Listening" },
        { _tag: "Notification", payload: "a" },
        { _tag: "Notification", payload: "b" },
        { _tag: "Lost" },
        { _tag: "Listening" },
        { _tag: "Notification", payload: "c" },
      ])
      // The stream's end is the subscription's end.
      yield* eventually(
        async () => (await backends(app))[0]?.query === `UNLISTEN ${quoted(channel)}`,
        "UNLISTEN once the stream ended",
      )
    }),
  )
})

describe("Listener liveness", () => {
  // Short options: a silent connection is noticed within 100 + 300 ms.
  const LIVENESS = { livenessInterval: 100, livenessTimeout: 300 }

  /** A proxy in front of the test database, closed with the scope. */
  const proxied = Effect.acquireRelease(
    fromPromise(() => startProxy({ target: databaseUrl() })),
    (proxy) => Effect.promise(() => proxy.close()),
  )

  it.live("replaces a black-holed LISTEN connection and LISTENs every channel again", () =>
    Effect.gen(function* () {
      const proxy = yield* proxied
      const channel = fresh("ch")
      const { listener, errors } = yield* listenerWith(fresh("app"), LIVENESS, proxy.url)
      const one = recorder()
      yield* listener.subscribe(channel, one.subscriber)
      yield* eventually(() => one.count("listen") === 1, "listening through the proxy")
      const pid = listener.unsafeBackendPid()

      // No FIN, no RST: only the liveness ping can tell.
      assert.strictEqual(proxy.blackHole(), 1)
      yield* eventually(() => one.count("listen") === 2, "listening again on a new connection")
      assert.deepStrictEqual(one.events, ["listen", "lost", "listen"])
      assert.notStrictEqual(listener.unsafeBackendPid(), pid)
      assert.isTrue(errors.some((error) => /LISTEN connection silent/.test(error.message)))
      // The dead connection was let go (its socket destroyed), not kept open for ever.
      yield* eventually(
        () => proxy.connections().every((c) => !(c.blackHoled && c.clientOpen)),
        "the black-holed socket destroyed",
      )
      yield* notify(channel, "after")
      yield* eventually(() => one.count("notification:after") === 1, "delivery resumed")
    }),
  )

  it.live("keeps a connection that answers its pings, however long it idles", () =>
    Effect.gen(function* () {
      const proxy = yield* proxied
      const { listener, errors } = yield* listenerWith(fresh("app"), LIVENESS, proxy.url)
      const one = recorder()
      yield* listener.subscribe(fresh("ch"), one.subscriber)
      yield* eventually(() => one.count("listen") === 1)
      const pid = listener.unsafeBackendPid()
      const sent = () => proxy.connections()[0]?.bytesFromClient ?? 0
      // Pinged again and again (each ping is bytes from the client), and never replaced.
      for (let i = 0; i < 10; i++) {
        const before = sent()
        yield* eventually(() => sent() > before, `ping ${i + 1}`)
      }
      assert.strictEqual(listener.unsafeBackendPid(), pid)
      assert.deepStrictEqual(one.events, ["listen"])
      assert.deepStrictEqual(errors, [])
      assert.strictEqual(proxy.stats().accepted, 1)
    }),
  )

  it.live("does not take a slow answer for silence while notifications keep arriving", () =>
    Effect.gen(function* () {
      const proxy = yield* proxied
      const channel = fresh("ch")
      const { listener, errors } = yield* listenerWith(
        fresh("app"),
        { livenessInterval: 50, livenessTimeout: 450 },
        proxy.url,
      )
      const one = recorder()
      yield* listener.subscribe(channel, one.subscriber)
      yield* eventually(() => one.count("listen") === 1)
      const pid = listener.unsafeBackendPid()
      // Notifications every few ms, from elsewhere, for as long as the test runs.
      yield* notify(channel, "tick").pipe(
        Effect.andThen(Effect.sleep("5 millis")),
        Effect.forever,
        Effect.forkScoped,
      )
      const ticks = () => one.count("notification:tick")
      yield* eventually(() => ticks() >= 10, "notifications flowing")
      // Every answer now takes 600 ms, more than livenessTimeout: only the bytes that keep
      // arriving meanwhile show that the connection is alive. (The 300 ms gap that the latency
      // opens in the notifications is silence, but shorter than livenessTimeout.)
      proxy.latency({ delayMs: 300 })
      const sent = () => proxy.connections()[0]?.bytesFromClient ?? 0
      for (let i = 0; i < 4; i++) {
        const before = sent()
        yield* eventually(() => sent() > before, `ping ${i + 1} sent`)
      }
      const before = ticks()
      yield* eventually(() => ticks() > before + 20, "notifications still flowing")
      assert.strictEqual(listener.unsafeBackendPid(), pid)
      assert.deepStrictEqual(
        one.events.filter((event) => event !== "notification:tick"),
        ["listen"],
      )
      assert.deepStrictEqual(errors, [])
    }),
  )
})

describe("Listener retries at a bounded rate", () => {
  // The TestClock moves 20 ms at a time over a 2-second window, with round trips to PostgreSQL
  // at each step so that real time passes too: a loop without backoff makes an attempt every
  // few round trips, the backoff (from 100 ms, doubling) only as many as 2 s of delays allow.
  const WINDOW_STEPS = 100
  const runWindow = (step: Effect.Effect<unknown, Error>) =>
    Effect.forEach(
      Array.from({ length: WINDOW_STEPS }),
      () =>
        TestClock.adjust("20 millis").pipe(
          Effect.andThen(step),
          Effect.andThen(fromPromise(() => admin.query("SELECT 1"))),
        ),
      { discard: true },
    )

  it.effect("reports a LISTEN that can never succeed a bounded number of times", () =>
    Effect.gen(function* () {
      const { listener, errors } = yield* listenerWith(fresh("app"))
      yield* listener.subscribe("", recorder().subscriber)
      yield* eventually(() => errors.length === 1, "the first refusal")
      yield* runWindow(Effect.void)
      assert.isTrue(errors.every(refusedOn("")))
      // Delays of at least 80, 160, then 200 ms (reconnectMaxDelay): at most 12 in 2 s.
      assert.isAtLeast(errors.length, 3, "retried as the clock moves")
      assert.isAtMost(errors.length, 12, "never in a tight loop")
    }),
  )

  it.effect("stops retrying a refused channel once its last subscriber leaves", () =>
    Effect.gen(function* () {
      const { listener, errors } = yield* listenerWith(fresh("app"))
      const scope = yield* subscribeScoped(listener, "", recorder().subscriber)
      yield* eventually(() => errors.length === 1, "the first refusal")
      yield* Scope.close(scope, Exit.void)
      yield* runWindow(Effect.void)
      assert.strictEqual(errors.length, 1)
    }),
  )

  it.effect("waits between connections that drop at once", () =>
    Effect.gen(function* () {
      const app = fresh("app")
      const connects = Metric.value(Metrics.listenerConnects).pipe(Effect.map((s) => s.count))
      const before = yield* connects
      const { listener } = yield* listenerWith(app, { reconnectMaxDelay: 1000 })
      const one = recorder()
      yield* listener.subscribe(fresh("ch"), one.subscriber)
      yield* eventually(() => one.count("listen") === 1)
      // Every connection is terminated as soon as it shows up.
      yield* runWindow(terminate(app))
      const made = (yield* connects) - before
      // The first connection, then delays of at least 80, 160, 320, 640 ms: at most 6 in 2 s.
      assert.isAtLeast(made, 3, "reconnects as the clock moves")
      assert.isAtMost(made, 6, "never in a tight loop")
      assert.isAtLeast(one.count("lost"), 2)
    }),
  )
})

describe("Listener.backoff", () => {
  const delays = (
    schedule: Schedule.Schedule<Duration.Duration, boolean>,
    inputs: Array<boolean>,
  ) =>
    Effect.gen(function* () {
      const step = yield* Schedule.toStep(schedule)
      const out: Array<number> = []
      for (const input of inputs) {
        const [, delay] = yield* step(0, input)
        out.push(Duration.toMillis(delay))
      }
      return out
    })

  it.effect("grows from 100 ms, jittered, up to its cap, and starts afresh when told", () =>
    Effect.gen(function* () {
      const schedule = Listener.backoff(Duration.millis(1000), (healthy: boolean) => healthy)
      const grown = yield* delays(schedule, [false, false, false, false, false, false])
      const bases = [100, 200, 400, 800, 1000, 1000]
      grown.forEach((delay, i) => {
        assert.isAtLeast(delay, Math.min(bases[i]! * 0.8, 1000))
        assert.isAtMost(delay, Math.min(bases[i]! * 1.2, 1000))
      })
      const reset = yield* delays(schedule, [false, false, false, true, false])
      assert.isAtMost(reset[3]!, 120, "afresh after a healthy session")
      assert.isAtLeast(reset[4]!, 160)
    }),
  )
})
