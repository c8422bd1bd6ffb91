/**
 * The Publisher beside a Listener, against real PostgreSQL: notify scripts go on the LISTEN
 * connection while it is up (a commit from a listening backend wakes one backend fewer), the
 * statements with parameters (attachments) through the pool, in publish order across both; past
 * `publishTimeout` on a black-holed LISTEN connection, the publish fails and the connection is
 * replaced at once (long before its liveness ping would notice), and publishing goes on.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Result from "effect/Result"
import pg from "pg"
import * as AdapterConfig from "../src/AdapterConfig.js"
import * as Codec from "../src/Codec.js"
import * as Database from "../src/Database.js"
import { ErrorHandler, type PublishError } from "../src/Errors.js"
import * as Listener from "../src/Listener.js"
import * as Publisher from "../src/Publisher.js"
import { eventually as waitUntil } from "./utils/cluster.js"
import {
  createAttachmentTable,
  databaseUrl,
  dropTable,
  makePool,
  suiteId,
} from "./utils/postgres.js"
import { startProxy } from "./utils/proxy.js"

const { MessageType } = Codec
const id = suiteId("publisher_listener")
const table = `${id}_att`
let admin: pg.Pool
const pools: Array<pg.Pool> = []

beforeAll(async () => {
  admin = makePool({ max: 2 })
  await createAttachmentTable(admin, table)
})

afterAll(async () => {
  await dropTable(admin, table)
  await Promise.all([admin, ...pools].map((pool) => pool?.end()))
})

const fromPromise = <A>(promise: () => Promise<A>) =>
  Effect.tryPromise({ try: promise, catch: (error) => error as Error })

/** Waits (real time, bounded) until `predicate` holds. */
const eventually = (predicate: () => boolean | Promise<boolean>, message?: string) =>
  fromPromise(() => waitUntil(predicate, { timeout: 10_000, message }))

let names = 0
const fresh = (what: string) => `${id}_${what}_${names++}`

/** A Publisher over a Listener, as the cluster layers build them, closed with the scope. */
const servicesWith = (options: AdapterConfig.AdapterOptions, connectionString?: string) =>
  Effect.gen(function* () {
    const pool = makePool({
      max: 2,
      ...(connectionString === undefined ? {} : { connectionString }),
    })
    pools.push(pool)
    const errors: Array<Error> = []
    const context = yield* Layer.build(
      Publisher.layer.pipe(
        Layer.provideMerge(Listener.layer),
        Layer.provide(
          Layer.mergeAll(
            Layer.succeed(
              AdapterConfig.AdapterConfig,
              AdapterConfig.decodeSync({ tableName: table, reconnectMaxDelay: 200, ...options }),
            ),
            Database.layerPool(pool),
            Layer.succeed(ErrorHandler, (error: Error) => void errors.push(error)),
          ),
        ),
      ),
    )
    return {
      publisher: Context.get(context, Publisher.Publisher),
      listener: Context.get(context, Listener.Listener),
      errors,
    }
  })

/** Subscribes to `channel` and waits until its LISTEN holds: the session is up. */
const listening = (listener: Listener.Listener["Service"], channel: string) =>
  Effect.gen(function* () {
    const heard: Array<string> = []
    let listens = 0
    yield* listener.subscribe(channel, {
      onNotification: (payload) => void heard.push(payload),
      onListen: () => void listens++,
      onLost: () => {},
    })
    yield* eventually(() => listens > 0, "the LISTEN holds")
    return { heard, listens: () => listens }
  })

/** A plain connection of its own that records what arrives on `channel`. */
const watcher = (channel: string) =>
  Effect.acquireRelease(
    fromPromise(async () => {
      const client = new pg.Client({ connectionString: databaseUrl() })
      await client.connect()
      const payloads: Array<string> = []
      client.on("notification", (n) => void payloads.push(n.payload ?? ""))
      await client.query(`LISTEN "${channel}"`)
      return { client, payloads }
    }),
    ({ client }) => Effect.promise(() => client.end()),
  )

const broadcast = (n: number, data: unknown = n): Codec.WireMessage => ({
  uid: "publisher-listener-test",
  type: MessageType.BROADCAST,
  nsp: "/",
  data,
})

/** The last statement of a backend, as `pg_stat_activity` shows it. */
const lastStatement = (pid: number | undefined) =>
  fromPromise(() =>
    admin
      .query<{ query: string }>("SELECT query FROM pg_stat_activity WHERE pid = $1", [pid])
      .then((result) => result.rows[0]?.query ?? ""),
  )

describe("Publisher beside a Listener", () => {
  it.live(
    "notifies on the LISTEN connection, attachments through the pool, all in publish order",
    () =>
      Effect.gen(function* () {
        const channel = fresh("ch")
        const { publisher, listener } = yield* servicesWith({})
        const own = yield* listening(listener, fresh("own"))
        const other = yield* watcher(channel)
        yield* publisher.publish(channel, broadcast(0))
        yield* eventually(() => other.payloads.length === 1, "the first notification")
        // The LISTEN connection's backend sent it (its last statement is the notify script, led
        // by a LISTEN of a channel it listens on: it still shows as a LISTEN connection).
        const last = yield* lastStatement(listener.unsafeBackendPid())
        assert.match(last, /^LISTEN "[^"]+"; SET LOCAL synchronous_commit = off; NOTIFY /)
        assert.include(last, channel)

        // Inline, through the attachments table (binary, at the 0.5.0 wire), inline: one order.
        const messages = [
          broadcast(1),
          broadcast(2, { b: Buffer.from("binary") }),
          broadcast(3),
          broadcast(4, { b: Buffer.from("more") }),
          broadcast(5),
        ]
        yield* Effect.forEach(messages, (message) => publisher.publish(channel, message), {
          concurrency: "unbounded",
        })
        yield* eventually(() => other.payloads.length === 6, "every notification")
        const order = other.payloads.slice(1).map((payload) => {
          const notification = Codec.decodeNotification(payload)
          assert.isTrue(Result.isSuccess(notification), payload)
          return Result.isSuccess(notification) ? notification.success._tag : ""
        })
        assert.deepStrictEqual(order, ["Inline", "Attachment", "Inline", "Attachment", "Inline"])
        const first = JSON.parse(other.payloads[1]!) as { data: number }
        const last3 = JSON.parse(other.payloads[5]!) as { data: number }
        assert.deepStrictEqual([first.data, last3.data], [1, 5])
        assert.strictEqual(own.listens(), 1)
      }),
  )

  it.live(
    "fails a publish the black-holed LISTEN connection does not answer, replaces that connection at once, and goes on",
    () =>
      Effect.gen(function* () {
        const proxy = yield* Effect.acquireRelease(
          fromPromise(() => startProxy({ target: databaseUrl() })),
          (proxy) => Effect.promise(() => proxy.close()),
        )
        const channel = fresh("ch")
        // Liveness far longer than the test: only the publish's deadline can end the session.
        const { publisher, listener, errors } = yield* servicesWith(
          { publishTimeout: 300, livenessInterval: 60_000, livenessTimeout: 60_000 },
          proxy.url,
        )
        const own = yield* listening(listener, fresh("own"))
        const other = yield* watcher(channel)
        yield* publisher.publish(channel, broadcast(0))
        yield* eventually(() => other.payloads.length === 1, "the first notification")
        const pid = listener.unsafeBackendPid()
        // The LISTEN connection is the first the proxy accepted (the pool's came later, if at all).
        const first = proxy.connections()[0]!.id
        assert.strictEqual(proxy.blackHole({ only: (c) => c.id === first }), 1)

        const failed: PublishError = yield* Effect.flip(publisher.publish(channel, broadcast(1)))
        assert.strictEqual(failed.reason, "Timeout")
        yield* eventually(() => own.listens() === 2, "LISTENing again on a new connection")
        assert.notStrictEqual(listener.unsafeBackendPid(), pid)
        yield* eventually(
          () => proxy.connections().every((c) => !(c.blackHoled && c.clientOpen)),
          "the black-holed socket destroyed",
        )
        yield* publisher.publish(channel, broadcast(2))
        yield* eventually(() => other.payloads.length === 2, "publishing goes on")
        assert.strictEqual((JSON.parse(other.payloads[1]!) as { data: number }).data, 2)
        assert.isTrue(errors.some((error) => /LISTEN connection lost/.test(error.message)))
      }),
  )
})
