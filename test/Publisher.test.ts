/**
 * The Publisher against real PostgreSQL (live services), as a listening connection sees it:
 * publishes of one tick share one statement; identical payloads are all delivered (PostgreSQL
 * folds identical notifications of one transaction); large and binary messages go through
 * attachment rows that their notifications name; messages reach PostgreSQL in the order they were
 * published, however many fibers publish; a statement PostgreSQL does not answer fails its
 * publishes after `publishTimeout`, and a full queue fails new publishes at once.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Random from "effect/Random"
import * as Result from "effect/Result"
import * as Scope from "effect/Scope"
import pg from "pg"
import * as Codec from "../src/Codec.js"
import * as AdapterConfig from "../src/AdapterConfig.js"
import * as Database from "../src/Database.js"
import type { PublishError } from "../src/Errors.js"
import * as Metrics from "../src/Metrics.js"
import * as Publisher from "../src/Publisher.js"
import { eventually as waitUntil } from "./utils/cluster.js"
import {
  createAttachmentTable,
  databaseUrl,
  dropTable,
  makePool,
  suiteId,
} from "./utils/postgres.js"

const { MessageType } = Codec
const id = suiteId("publisher")
const table = `${id}_att`
let pool: pg.Pool

beforeAll(async () => {
  pool = makePool({ max: 6 })
  await createAttachmentTable(pool, table)
})

afterAll(async () => {
  await dropTable(pool, table)
  await pool?.end()
})

const fromPromise = <A>(promise: () => Promise<A>) =>
  Effect.tryPromise({ try: promise, catch: (error) => error as Error })

/** A Publisher over the test pool and the suite's attachments table, closed with the scope. */
const publisherWith = (options: AdapterConfig.AdapterOptions = {}, on: pg.Pool = pool) =>
  Layer.build(
    Publisher.layer.pipe(
      Layer.provide(
        Layer.mergeAll(
          Layer.succeed(
            AdapterConfig.AdapterConfig,
            AdapterConfig.decodeSync({ tableName: table, ...options }),
          ),
          Database.layerPool(on),
        ),
      ),
    ),
  ).pipe(Effect.map(Context.get(Publisher.Publisher)))

let channels = 0
/** A channel no other test uses. */
const freshChannel = () => `${id}#${channels++}`

/** A dedicated LISTEN connection on `channel` recording every payload; ended with the scope. */
const listen = (channel: string) =>
  Effect.acquireRelease(
    fromPromise(async () => {
      const client = new pg.Client({ connectionString: databaseUrl() })
      client.on("error", () => {})
      await client.connect()
      const payloads: Array<string> = []
      client.on("notification", (n) => payloads.push(n.payload ?? ""))
      await client.query(`LISTEN "${channel}"`)
      return { client, payloads }
    }),
    ({ client }) => Effect.promise(() => client.end().catch(() => {})),
  ).pipe(Effect.map(({ payloads }) => payloads))

/** Waits (real time, bounded) until `predicate` holds. */
const eventually = (predicate: () => boolean | Promise<boolean>, message?: string) =>
  fromPromise(() => waitUntil(predicate, { timeout: 10_000, message }))

/** The message a payload stands for: inline, or read back from its attachment row. */
const decode = (payload: string) =>
  Effect.gen(function* () {
    const notification = Result.getOrThrow(Codec.decodeNotification(payload))
    if (notification._tag === "Inline") return notification.message
    if (notification._tag === "Part") throw new Error("a part of a packed message")
    const { rows } = yield* fromPromise(() =>
      pool.query<{ payload: Buffer }>(`SELECT payload FROM ${table} WHERE id = $1`, [
        notification.attachmentId,
      ]),
    )
    return Result.getOrThrow(Codec.decodeAttachment(rows[0]!.payload))
  })

const broadcast = (data: unknown): Codec.WireMessage => ({
  uid: "node",
  type: MessageType.BROADCAST,
  nsp: "/",
  data,
})

/**
 * Calls `unsafePublish` now (in this tick) and returns the outcome to wait for: `undefined`
 * once committed, else the error.
 */
const publishNow = (
  publisher: Publisher.Publisher["Service"],
  channel: string,
  message: Codec.WireMessage,
): Deferred.Deferred<PublishError | undefined> => {
  const done = Deferred.makeUnsafe<PublishError | undefined>()
  publisher.unsafePublish(channel, message, (error) =>
    Deferred.doneUnsafe(done, Effect.succeed(error)),
  )
  return done
}

const allCommitted = (outcomes: ReadonlyArray<Deferred.Deferred<PublishError | undefined>>) =>
  Effect.forEach(outcomes, Deferred.await).pipe(
    Effect.map((errors) => assert.deepStrictEqual(errors, Array(outcomes.length).fill(undefined))),
  )

const statements = Metric.value(Metrics.notifyStatements).pipe(Effect.map((s) => s.count))

/**
 * Holds an exclusive lock on the attachments table until the scope closes: a statement that
 * inserts an attachment waits for it, as it would on a PostgreSQL that does not answer.
 */
const lockAttachments = Effect.acquireRelease(
  fromPromise(async () => {
    const client = await pool.connect()
    await client.query("BEGIN")
    await client.query(`LOCK TABLE ${table} IN ACCESS EXCLUSIVE MODE`)
    return client
  }),
  (client) =>
    Effect.promise(async () => {
      await client.query("ROLLBACK").catch(() => {})
      client.release()
    }),
)

/** Waits until a statement inserting into the attachments table waits for that lock. */
const blockedOnLock = eventually(async () => {
  const { rows } = await pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_stat_activity
      WHERE wait_event_type = 'Lock' AND strpos(query, $1) > 0 AND pid <> pg_backend_pid()`,
    [`INSERT INTO "${table}"`],
  )
  return rows[0]!.n > 0
}, "a statement waits for the lock")

describe("Publisher", () => {
  it.live("sends the publishes of one tick in one statement, in order", () =>
    Effect.gen(function* () {
      const publisher = yield* publisherWith()
      const channel = freshChannel()
      const payloads = yield* listen(channel)
      const before = yield* statements
      const outcomes = Array.from({ length: 100 }, (_, n) =>
        publishNow(publisher, channel, broadcast([n])),
      )
      yield* allCommitted(outcomes)
      assert.strictEqual((yield* statements) - before, 1)
      yield* eventually(() => payloads.length === 100)
      assert.deepStrictEqual(
        payloads.map((p) => (JSON.parse(p) as Codec.WireMessage).data),
        Array.from({ length: 100 }, (_, n) => [n]),
      )
    }),
  )

  it.live(
    "commits notify-only statements asynchronously, and only those: the pool's connection keeps the server's setting",
    () =>
      Effect.gen(function* () {
        const one = yield* Effect.acquireRelease(
          Effect.sync(() => makePool({ max: 1 })),
          (p) => Effect.promise(() => p.end()),
        )
        const setting = fromPromise(() =>
          one
            .query<{ s: string }>("SELECT current_setting('synchronous_commit') AS s")
            .then((r) => r.rows[0]!.s),
        )
        // The connection's own setting, whatever the server's: ours must not outlive our statement.
        yield* fromPromise(() => one.query("SET synchronous_commit = on"))
        const publisher = yield* publisherWith({}, one)
        const channel = freshChannel()
        const payloads = yield* listen(channel)
        // A notify-only statement, then one with an attachment row, on the pool's one connection.
        yield* allCommitted([publishNow(publisher, channel, broadcast(["small"]))])
        yield* allCommitted([publishNow(publisher, channel, broadcast([Buffer.from([1, 2])]))])
        yield* eventually(() => payloads.length === 2)
        assert.strictEqual(yield* setting, "on")
      }),
  )

  it.live(
    "falls back to SELECT pg_notify, losing nothing, when the pool's connections prepare every statement",
    () =>
      Effect.gen(function* () {
        // A client that sends every statement in the extended protocol, as some drivers do:
        // PostgreSQL refuses a notify script there ("cannot insert multiple commands").
        const query = pg.Client.prototype.query as (...args: Array<unknown>) => unknown
        class Extended extends pg.Client {}
        Extended.prototype.query = function (this: pg.Client, ...args: Array<unknown>) {
          const [text, values, callback] = args
          if (typeof text !== "string") return query.apply(this, args)
          const params = Array.isArray(values) ? values : []
          const done = typeof values === "function" ? values : callback
          return query.call(this, { text, values: params, queryMode: "extended" }, done)
        } as unknown as pg.Client["query"]
        const extended = yield* Effect.acquireRelease(
          Effect.sync(() => makePool({ max: 2, Client: Extended })),
          (p) => Effect.promise(() => p.end()),
        )
        const publisher = yield* publisherWith({}, extended)
        const channel = freshChannel()
        const payloads = yield* listen(channel)
        const first = Array.from({ length: 50 }, (_, n) =>
          publishNow(publisher, channel, broadcast([n])),
        )
        yield* allCommitted(first)
        const then = Array.from({ length: 50 }, (_, n) =>
          publishNow(publisher, channel, broadcast([50 + n])),
        )
        yield* allCommitted(then)
        yield* eventually(() => payloads.length === 100)
        assert.deepStrictEqual(
          payloads.map((p) => (JSON.parse(p) as Codec.WireMessage).data),
          Array.from({ length: 100 }, (_, n) => [n]),
        )
      }),
  )

  it.live("delivers every one of many identical publishes", () =>
    Effect.gen(function* () {
      const publisher = yield* publisherWith()
      const [a, b] = [freshChannel(), freshChannel()]
      const [onA, onB] = [yield* listen(a), yield* listen(b)]
      const tick = broadcast(["tick"])
      // The same payload on two channels, interleaved: distinct pairs may share a statement.
      const outcomes = Array.from({ length: 60 }, (_, n) =>
        publishNow(publisher, n % 2 === 0 ? a : b, tick),
      )
      yield* allCommitted(outcomes)
      yield* eventually(() => onA.length === 30 && onB.length === 30, "60 ticks")
      assert.deepStrictEqual([...new Set([...onA, ...onB])], [JSON.stringify(tick)])
    }),
  )

  it.live("sends large and binary messages through attachment rows, in order with the rest", () =>
    Effect.gen(function* () {
      const publisher = yield* publisherWith()
      const channel = freshChannel()
      const payloads = yield* listen(channel)
      const large = "é".repeat(5000)
      const messages = [
        broadcast(["small", 1]),
        broadcast(["binary", Buffer.from([0, 1, 2, 255])]),
        broadcast(["large", large]),
        broadcast(["small", 2]),
        broadcast(["binary", Buffer.from([9])]),
      ]
      yield* allCommitted(messages.map((m) => publishNow(publisher, channel, m)))
      yield* eventually(() => payloads.length === messages.length)
      const tags = payloads.map((p) => Result.getOrThrow(Codec.decodeNotification(p))._tag)
      assert.deepStrictEqual(tags, ["Inline", "Attachment", "Attachment", "Inline", "Attachment"])
      const received = yield* Effect.forEach(payloads, decode)
      assert.deepStrictEqual(
        received.map((m) => m.data),
        [
          ["small", 1],
          ["binary", Uint8Array.from([0, 1, 2, 255])],
          ["large", large],
          ["small", 2],
          ["binary", Uint8Array.from([9])],
        ],
      )
    }),
  )

  it.live("keeps the order of publishes made by many fibers at once", () =>
    Effect.gen(function* () {
      const publisher = yield* publisherWith()
      const channel = freshChannel()
      const payloads = yield* listen(channel)
      const sent: Array<string> = []
      const outcomes: Array<Deferred.Deferred<PublishError | undefined>> = []
      // Eight fibers, each publishing 50 messages (one in five binary) at random moments.
      yield* Effect.forEach(
        Array.from({ length: 8 }, (_, fiber) => fiber),
        (fiber) =>
          Effect.forEach(
            Array.from({ length: 50 }, (_, n) => n),
            (n) =>
              Effect.gen(function* () {
                const key = `${fiber}-${n}`
                const data = n % 5 === 0 ? [key, Buffer.from([fiber, n])] : [key]
                // Recorded in the tick it is published: that is the order to keep.
                sent.push(key)
                outcomes.push(publishNow(publisher, channel, broadcast(data)))
                if (yield* Random.nextBoolean) yield* Effect.yieldNow
                if ((yield* Random.nextIntBetween(0, 10)) === 0) yield* Effect.sleep(1)
              }),
            { discard: true },
          ),
        { concurrency: "unbounded", discard: true },
      )
      yield* allCommitted(outcomes)
      yield* eventually(() => payloads.length === sent.length)
      const received = yield* Effect.forEach(payloads, decode)
      assert.deepStrictEqual(
        received.map((m) => (m.data as Array<string>)[0]),
        sent,
      )
    }),
  )

  it.live("fails the publishes of a statement unanswered within publishTimeout", () =>
    Effect.gen(function* () {
      const publisher = yield* publisherWith({ publishTimeout: 300 })
      const channel = freshChannel()
      const payloads = yield* listen(channel)
      const lock = yield* Scope.fork(yield* Effect.scope, "sequential")
      yield* lockAttachments.pipe(Scope.provide(lock))
      // One statement: an attachment that waits for the lock, and an inline message with it.
      const blocked = [
        publishNow(publisher, channel, broadcast([Buffer.from([1])])),
        publishNow(publisher, channel, broadcast(["with it"])),
      ]
      const errors = yield* Effect.forEach(blocked, Deferred.await)
      assert.deepStrictEqual(
        errors.map((error) => error?.reason),
        ["Timeout", "Timeout"],
      )
      // Publishing goes on once PostgreSQL answers again.
      yield* Scope.close(lock, Exit.void)
      yield* allCommitted([publishNow(publisher, channel, broadcast(["after"]))])
      yield* eventually(() => payloads.some((p) => p.includes("after")))
    }),
  )

  it.live("fails publishes at once beyond maxPendingPublishes, and sends those it queued", () =>
    Effect.gen(function* () {
      const publisher = yield* publisherWith({ maxPendingPublishes: 2, publishTimeout: 30_000 })
      const channel = freshChannel()
      const payloads = yield* listen(channel)
      const lock = yield* Scope.fork(yield* Effect.scope, "sequential")
      yield* lockAttachments.pipe(Scope.provide(lock))
      const inflight = publishNow(publisher, channel, broadcast([Buffer.from([1])]))
      yield* blockedOnLock
      const queued = [
        publishNow(publisher, channel, broadcast(["queued", 1])),
        publishNow(publisher, channel, broadcast(["queued", 2])),
      ]
      const refused = yield* Deferred.await(publishNow(publisher, channel, broadcast(["refused"])))
      assert.strictEqual(refused?.reason, "Overloaded")
      yield* Scope.close(lock, Exit.void)
      yield* allCommitted([inflight, ...queued])
      yield* eventually(() => payloads.length === 3)
      assert.isFalse(payloads.some((p) => p.includes("refused")))
    }),
  )

  it.live("fails publishes once its scope is closed", () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const publisher = yield* publisherWith().pipe(Scope.provide(scope))
      yield* Scope.close(scope, Exit.void)
      const error = yield* Deferred.await(publishNow(publisher, freshChannel(), broadcast([1])))
      assert.strictEqual(error?.reason, "Closed")
    }),
  )
})
