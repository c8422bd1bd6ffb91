/**
 * The Recovery service and the Publisher's stored packets against real PostgreSQL (live services):
 * the tables, sessions persisted and restored with the packets they missed, offsets consecutive per
 * namespace whatever the number of writers, the offset in each stored notification, and the
 * cleanup of old packets and expired sessions. Each test has tables of its own (a fresh prefix).
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Result from "effect/Result"
import * as Tracer from "effect/Tracer"
import { TestClock } from "effect/testing"
import pg from "pg"
import { channelName, MAX_IDENTIFIER_BYTES } from "../src/Channel.js"
import * as Cleanup from "../src/Cleanup.js"
import * as Codec from "../src/Codec.js"
import * as Config from "../src/Config.js"
import * as Database from "../src/Database.js"
import * as Publisher from "../src/Publisher.js"
import * as Recovery from "../src/recovery/Recovery.js"
import { eventually as waitUntil } from "./utils/cluster.js"
import { createAttachmentTable, databaseUrl, makePool, suiteId } from "./utils/postgres.js"

let pool: pg.Pool
/** Every prefix and schema created, dropped at the end. */
const created: Array<string> = []
const schemas: Array<string> = []

beforeAll(() => {
  pool = makePool({ max: 6 })
})

afterAll(async () => {
  for (const prefix of created) {
    await pool.query(
      `DROP TABLE IF EXISTS ${prefix}_packets, ${prefix}_sessions, ${prefix}_offsets, ${prefix}_att`,
    )
  }
  for (const schema of schemas) await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)
  await pool?.end()
})

/** A fresh table prefix, its tables dropped after the file. */
const freshPrefix = (name: string): string => {
  const prefix = suiteId(name)
  created.push(prefix)
  return prefix
}

/** A fresh schema (dropped after the file) and a prefix in it. */
const freshSchemaPrefix = (name: string): string => {
  const schema = suiteId(`s_${name}`)
  schemas.push(schema)
  return `${schema}.recovery`
}

/**
 * Recovery and Publisher over `pool`, with `prefix`'s tables (and attachments table), and the
 * cleanup loop Recovery registers in (without the attachments' task).
 */
const servicesLayer = (
  prefix: string,
  options: Config.AdapterOptions = {},
  on: pg.Pool = pool,
): Layer.Layer<Recovery.Recovery | Publisher.Publisher | Cleanup.Cleanup> =>
  Layer.mergeAll(Recovery.layer.pipe(Layer.provideMerge(Cleanup.layerEmpty)), Publisher.layer).pipe(
    Layer.provide(
      Layer.mergeAll(
        Layer.succeed(
          Config.Config,
          Config.decodeSync({
            recoveryTablePrefix: prefix,
            tableName: `${prefix}_att`,
            ...options,
          }),
        ),
        Database.layerPool(on),
      ),
    ),
  )

/** A promise as an Effect that fails (not dies) when it rejects. */
const fromPromise = <A>(promise: () => Promise<A>) =>
  Effect.tryPromise({ try: promise, catch: (error) => error as Error })

/** Runs SQL on the test pool. */
const sql = <A extends pg.QueryResultRow = any>(text: string, params?: Array<unknown>) =>
  fromPromise(() => pool.query<A>(text, params)).pipe(Effect.map((result) => result.rows))

/** Creates the recovery tables (and the attachments table) of the services in context. */
const setup = (prefix: string, recovery: Recovery.Recovery["Service"]) =>
  Effect.gen(function* () {
    yield* recovery.ensureTables
    if (!prefix.includes("."))
      yield* fromPromise(() => createAttachmentTable(pool, `${prefix}_att`))
  })

/** `Publisher.unsafeStore` as an Effect: succeeds with the packet's offset. */
const store = (
  publisher: Publisher.Publisher["Service"],
  packet: Publisher.StoredPacket,
  options: { readonly channel?: string; readonly message?: Codec.WireMessage } = {},
) =>
  Effect.callback<string, Error>((resume) =>
    publisher.unsafeStore(options.channel ?? "unused", options.message, packet, (error, offset) =>
      resume(
        error !== undefined || offset === undefined
          ? Effect.fail(error ?? new Error("no offset"))
          : Effect.succeed(offset),
      ),
    ),
  )

/** A packet of namespace `nsp` to everyone, whose args are `data`. */
const packetOf = (
  data: ReadonlyArray<unknown>,
  target: { nsp?: string; rooms?: Array<string>; except?: Array<string> } = {},
): Publisher.StoredPacket => ({
  nsp: target.nsp ?? "/",
  rooms: target.rooms ?? [],
  except: target.except ?? [],
  data,
})

const session = (
  pid: string,
  extra: Partial<Recovery.SessionToPersist> = {},
): Recovery.SessionToPersist => ({
  nsp: "/",
  sid: `sid-${pid}`,
  pid,
  rooms: [`sid-${pid}`],
  data: {},
  ...extra,
})

const HOUR = Duration.hours(1)

/** A dedicated LISTEN connection on `channel`, recording every payload; ended with the scope. */
const listen = (channel: string) =>
  Effect.acquireRelease(
    fromPromise(async () => {
      const client = new pg.Client({ connectionString: databaseUrl() })
      client.on("error", () => {})
      await client.connect()
      const payloads: Array<string> = []
      client.on("notification", (n) => payloads.push(n.payload ?? ""))
      await client.query(`LISTEN "${channel.replaceAll('"', '""')}"`)
      return { client, payloads }
    }),
    ({ client }) => Effect.promise(() => client.end().catch(() => {})),
  )

/** The backend pid of a connection open until the scope closes: a server that is alive. */
const backendPid = Effect.map(
  Effect.acquireRelease(
    fromPromise(async () => {
      const client = new pg.Client({ connectionString: databaseUrl() })
      client.on("error", () => {})
      await client.connect()
      return client
    }),
    (client) => Effect.promise(() => client.end().catch(() => {})),
  ),
  (client) => (client as unknown as { processID: number }).processID,
)

/** Waits (real time) until `predicate` holds (the harness's `eventually`, as an Effect). */
const eventually = (predicate: () => boolean) => fromPromise(() => waitUntil(predicate))

describe("Recovery.ensureTables", () => {
  it.live("creates the three tables and their indexes, and can run again", () =>
    Effect.gen(function* () {
      const prefix = freshPrefix("rec_tables")
      const first = yield* Layer.build(servicesLayer(prefix))
      const recovery = Context.get(first, Recovery.Recovery)
      yield* recovery.ensureTables
      yield* recovery.ensureTables
      // Another server's service does it again on existing tables.
      const second = yield* Layer.build(servicesLayer(prefix))
      yield* Context.get(second, Recovery.Recovery).ensureTables
      const names = Recovery.tableNames(prefix)
      for (const name of [
        names.packets,
        names.sessions,
        names.offsets,
        names.packetsCreatedAt,
        names.sessionsExpiresAt,
      ]) {
        const [row] = yield* sql(`SELECT to_regclass($1) IS NOT NULL AS exists`, [name])
        assert.isTrue(row.exists, name)
      }
    }),
  )

  it.live(
    "gives five servers creating the same tables at once the tables, plain and schema-qualified",
    () =>
      Effect.gen(function* () {
        const racePool = makePool({ max: 6 })
        yield* Effect.addFinalizer(() => Effect.promise(() => racePool.end()))
        for (const prefix of [
          freshPrefix("rec_race_a"),
          freshPrefix("rec_race_b"),
          freshSchemaPrefix("rec_race_c"),
          freshSchemaPrefix("rec_race_d"),
        ]) {
          const services = yield* Effect.forEach(
            Array.from({ length: 5 }),
            () => Layer.build(servicesLayer(prefix, {}, racePool)),
            { concurrency: "unbounded" },
          )
          const first = yield* Effect.forEach(
            services,
            (context) => Context.get(context, Recovery.Recovery).ensureTables.pipe(Effect.result),
            { concurrency: "unbounded" },
          )
          // The catalog races ("duplicate key ... pg_type" / "pg_class") are retried with jitter.
          for (const result of first) assert.isTrue(Result.isSuccess(result), prefix)
          for (const table of [
            Recovery.tableNames(prefix).packets,
            Recovery.tableNames(prefix).sessions,
            Recovery.tableNames(prefix).offsets,
          ]) {
            const [row] = yield* sql(`SELECT to_regclass($1) IS NOT NULL AS exists`, [table])
            assert.isTrue(row.exists, table)
          }
        }
      }),
  )

  it("names indexes within 63 bytes, in the tables' schema, for the longest prefixes", () => {
    const longest = "p".repeat(54)
    for (const prefix of [longest, `${"s".repeat(54)}.${longest}`, "é".repeat(27)]) {
      const names = Recovery.tableNames(prefix)
      for (const index of [names.packetsCreatedAt, names.sessionsExpiresAt]) {
        assert.isAtMost(Buffer.byteLength(index.slice(1, -1)), MAX_IDENTIFIER_BYTES, index)
        assert.notInclude(index, ".")
      }
      assert.notStrictEqual(names.packetsCreatedAt, names.sessionsExpiresAt)
    }
    assert.deepStrictEqual(Recovery.tableNames("app.rec"), {
      schema: '"app"',
      packets: '"app"."rec_packets"',
      sessions: '"app"."rec_sessions"',
      offsets: '"app"."rec_offsets"',
      packetsCreatedAt: '"rec_packets_created_at"',
      sessionsExpiresAt: '"rec_sessions_expires_at"',
    })
  })

  it.live("works with a schema-qualified prefix end to end", () =>
    Effect.gen(function* () {
      const prefix = freshSchemaPrefix("rec_schema")
      const context = yield* Layer.build(servicesLayer(prefix))
      const recovery = Context.get(context, Recovery.Recovery)
      const publisher = Context.get(context, Publisher.Publisher)
      yield* recovery.ensureTables
      const first = yield* store(publisher, packetOf(["e", 1]))
      yield* store(publisher, packetOf(["e", 2]))
      yield* recovery.persist(session("p1"), HOUR)
      const restored = yield* recovery.restore("/", "p1", first)
      assert.deepStrictEqual(restored?.missedPackets, [["e", 2, "2"]])
    }),
  )
})

/** What the helpers below hand to a test body. */
interface Services {
  readonly prefix: string
  readonly recovery: Recovery.Recovery["Service"]
  readonly publisher: Publisher.Publisher["Service"]
  readonly cleanup: Cleanup.Cleanup["Service"]
}

/** Services on fresh tables, with `count` packets `[label, i]` stored in "/" (offsets 1..count). */
const withStored = <A, E, R>(
  name: string,
  count: number,
  body: (services: Services) => Effect.Effect<A, E, R>,
  options: Parameters<typeof servicesLayer>[1],
  label: string,
) =>
  Effect.gen(function* () {
    const prefix = freshPrefix(name)
    const context = yield* Layer.build(servicesLayer(prefix, options))
    const recovery = Context.get(context, Recovery.Recovery)
    const publisher = Context.get(context, Publisher.Publisher)
    const cleanup = Context.get(context, Cleanup.Cleanup)
    yield* setup(prefix, recovery)
    for (let i = 1; i <= count; i++) yield* store(publisher, packetOf([label, i]))
    return yield* body({ prefix, recovery, publisher, cleanup })
  })

describe("Recovery.persist and restore", () => {
  /** Services on fresh tables, with `count` packets stored in namespace "/" (offsets 1..count). */
  const withPackets = <A, E, R>(
    name: string,
    count: number,
    body: (services: Services) => Effect.Effect<A, E, R>,
  ) => withStored(name, count, body, {}, "before")

  it.live("gives back the session's rooms and data, Buffers and nested objects included", () =>
    withPackets("rec_roundtrip", 1, ({ recovery }) =>
      Effect.gen(function* () {
        const data = {
          user: { name: "ünïcødé 😀", roles: ["a", "b"], nested: { deep: [1, { x: null }] } },
          avatar: Buffer.from([0, 1, 2, 253, 254, 255]),
          list: [Buffer.from("in an array"), true, 1.5],
        }
        yield* recovery.persist(session("p1", { rooms: ["sid-p1", "room a", "é"], data }), HOUR)
        const restored = yield* recovery.restore("/", "p1", "1")
        assert.isDefined(restored)
        assert.strictEqual(restored!.sid, "sid-p1")
        assert.strictEqual(restored!.pid, "p1")
        assert.sameMembers(restored!.rooms, ["sid-p1", "room a", "é"])
        assert.deepStrictEqual(restored!.data, data)
        const back = restored!.data as typeof data
        assert.isTrue(Buffer.isBuffer(back.avatar))
        assert.isTrue(Buffer.isBuffer(back.list[0]))
        assert.deepStrictEqual(restored!.missedPackets, [])
        assert.strictEqual(restored!.last, 1n)
      }),
    ),
  )

  it.live("traces each restore as the span restore, with its namespace", () =>
    withPackets("rec_span", 1, ({ recovery }) =>
      Effect.gen(function* () {
        const spans: Array<Tracer.NativeSpan> = []
        const tracer = Tracer.make({
          span: (options) => {
            const span = new Tracer.NativeSpan(options)
            spans.push(span)
            return span
          },
        })
        yield* recovery.persist(session("p1"), HOUR)
        assert.isDefined(yield* recovery.restore("/", "p1", "1").pipe(Effect.withTracer(tracer)))
        assert.isUndefined(yield* recovery.restore("/", "p1", "1").pipe(Effect.withTracer(tracer)))
        const restores = spans.filter((span) => span.name === "restore")
        assert.strictEqual(restores.length, 2)
        for (const span of restores) {
          assert.strictEqual(span.attributes.get("nsp"), "/")
          assert.strictEqual(span.status._tag, "Ended")
        }
      }),
    ),
  )

  it.live("replaces an earlier session of the same private id", () =>
    withPackets("rec_replace", 1, ({ recovery }) =>
      Effect.gen(function* () {
        yield* recovery.persist(session("p1", { data: { v: 1 }, rooms: ["a"] }), HOUR)
        yield* recovery.persist(session("p1", { data: { v: 2 }, rooms: ["b"] }), HOUR)
        const restored = yield* recovery.restore("/", "p1", "1")
        assert.deepStrictEqual(restored?.data, { v: 2 })
        assert.deepStrictEqual(restored?.rooms, ["b"])
      }),
    ),
  )

  it.live("fails with a RecoveryError for data that cannot be stored", () =>
    withPackets("rec_bad_data", 1, ({ recovery }) =>
      Effect.gen(function* () {
        const data = JSON.parse('{"__proto__": {"x": 1}}')
        const result = yield* recovery.persist(session("p1", { data }), HOUR).pipe(Effect.result)
        assert.isTrue(Result.isFailure(result))
        const error = (result as Result.Failure<void, { _tag: string; message: string }>).failure
        assert.strictEqual(error._tag, "RecoveryError")
        assert.include(error.message, "sid-p1")
      }),
    ),
  )

  it.live("takes the session: a second restore, or a concurrent one, gets nothing", () =>
    withPackets("rec_once", 2, ({ recovery }) =>
      Effect.gen(function* () {
        yield* recovery.persist(session("p1"), HOUR)
        assert.isDefined(yield* recovery.restore("/", "p1", "1"))
        assert.isUndefined(yield* recovery.restore("/", "p1", "1"))
        // Five servers race for one session: exactly one wins.
        yield* recovery.persist(session("p2"), HOUR)
        const results = yield* Effect.all(
          Array.from({ length: 5 }, () => recovery.restore("/", "p2", "1")),
          { concurrency: "unbounded" },
        )
        assert.strictEqual(results.filter((r) => r !== undefined).length, 1)
      }),
    ),
  )

  it.live("restores nothing for an unknown session or another namespace's", () =>
    withPackets("rec_unknown", 1, ({ recovery }) =>
      Effect.gen(function* () {
        assert.isUndefined(yield* recovery.restore("/", "nobody", "1"))
        yield* recovery.persist(session("p1", { nsp: "/other" }), HOUR)
        assert.isUndefined(yield* recovery.restore("/", "p1", "1"))
      }),
    ),
  )

  it.live("restores nothing for an expired session, and deletes it", () =>
    withPackets("rec_expired", 1, ({ prefix, recovery }) =>
      Effect.gen(function* () {
        yield* recovery.persist(session("p1"), HOUR)
        yield* sql(
          `UPDATE ${prefix}_sessions SET expires_at = now() - interval '1 second' WHERE pid = 'p1'`,
        )
        assert.isUndefined(yield* recovery.restore("/", "p1", "1"))
        const rows = yield* sql(`SELECT 1 FROM ${prefix}_sessions WHERE pid = 'p1'`)
        assert.strictEqual(rows.length, 0)
        // A session persisted with (almost) no duration expires as well.
        yield* recovery.persist(session("p2"), Duration.millis(1))
        yield* fromPromise(() =>
          waitUntil(
            async () =>
              (
                await pool.query(
                  `SELECT 1 FROM ${prefix}_sessions WHERE pid = 'p2' AND expires_at < now()`,
                )
              ).rowCount === 1,
          ),
        )
        assert.isUndefined(yield* recovery.restore("/", "p2", "1"))
      }),
    ),
  )

  it.live(
    "restores nothing for an offset that is not one, and leaves the session for a valid one",
    () =>
      withPackets("rec_garbage", 3, ({ recovery }) =>
        Effect.gen(function* () {
          yield* recovery.persist(session("p1"), HOUR)
          for (const offset of [
            "",
            "abc",
            "-1",
            "1.5",
            " 1",
            "1 ",
            "1e2",
            "0x1",
            "+1",
            "١",
            "12345678901234567890",
            "9223372036854775808",
          ]) {
            assert.isUndefined(yield* recovery.restore("/", "p1", offset), JSON.stringify(offset))
          }
          const restored = yield* recovery.restore("/", "p1", "2")
          assert.deepStrictEqual(restored?.missedPackets, [["before", 3, "3"]])
        }),
      ),
  )

  it.live(
    "restores nothing for an offset past the namespace's last, or in a namespace without packets",
    () =>
      withPackets("rec_future", 3, ({ recovery }) =>
        Effect.gen(function* () {
          for (const [pid, offset] of [
            ["p1", "4"],
            ["p2", "9223372036854775807"],
          ] as const) {
            yield* recovery.persist(session(pid), HOUR)
            assert.isUndefined(yield* recovery.restore("/", pid, offset), offset)
          }
          yield* recovery.persist(session("p3", { nsp: "/empty" }), HOUR)
          assert.isUndefined(yield* recovery.restore("/empty", "p3", "0"))
        }),
      ),
  )

  it.live("restores from the last offset, and from 0 with every packet kept", () =>
    withPackets("rec_edges", 3, ({ recovery }) =>
      Effect.gen(function* () {
        yield* recovery.persist(session("p1"), HOUR)
        const atLast = yield* recovery.restore("/", "p1", "3")
        assert.deepStrictEqual(atLast?.missedPackets, [])
        assert.strictEqual(atLast?.last, 3n)
        yield* recovery.persist(session("p2"), HOUR)
        const fromZero = yield* recovery.restore("/", "p2", "0")
        assert.deepStrictEqual(fromZero?.missedPackets, [
          ["before", 1, "1"],
          ["before", 2, "2"],
          ["before", 3, "3"],
        ])
        yield* recovery.persist(session("p3"), HOUR)
        const padded = yield* recovery.restore("/", "p3", "0000000000000000002")
        assert.deepStrictEqual(padded?.missedPackets, [["before", 3, "3"]])
      }),
    ),
  )

  it.live(
    "gives the missed packets the session's rooms let through, in offset order, each ending with its offset",
    () =>
      withPackets("rec_missed", 1, ({ recovery, publisher }) =>
        Effect.gen(function* () {
          const sid = "sid-p1"
          yield* recovery.persist(session("p1", { rooms: [sid, "a"] }), HOUR)
          const bin = Buffer.from([1, 2, 3])
          const cases: Array<readonly [Publisher.StoredPacket, boolean]> = [
            [packetOf(["everyone", { bin }]), true],
            [packetOf(["room a"], { rooms: ["a"] }), true],
            [packetOf(["room b"], { rooms: ["b"] }), false],
            [packetOf(["all but a"], { except: ["a"] }), false],
            [packetOf(["a or b but not c"], { rooms: ["a", "b"], except: ["c"] }), true],
            [packetOf(["b but not a"], { rooms: ["b"], except: ["a"] }), false],
            [packetOf(["private"], { rooms: [sid] }), true],
            [packetOf(["other socket"], { rooms: ["sid-other"] }), false],
            [packetOf(["all but z"], { except: ["z"] }), true],
            [packetOf(["other namespace"], { nsp: "/other" }), false],
            [packetOf(["all but me"], { except: [sid] }), false],
            [packetOf([]), true],
          ]
          const expected: Array<Array<unknown>> = []
          for (const [packet, included] of cases) {
            const offset = yield* store(publisher, packet)
            if (included) expected.push([...packet.data, offset])
          }
          const restored = yield* recovery.restore("/", "p1", "1")
          assert.deepStrictEqual(restored?.missedPackets, expected)
          const offsets = restored!.missedPackets.map((args) => BigInt(args.at(-1) as string))
          assert.deepStrictEqual(
            offsets,
            [...offsets].sort((a, b) => (a < b ? -1 : 1)),
          )
          assert.isTrue(Buffer.isBuffer((restored!.missedPackets[0]![1] as { bin: unknown }).bin))
          // "/" took offsets 1..12 but for the other namespace's packet: its own counter.
          assert.strictEqual(restored!.last, 12n)
        }),
      ),
  )
})

describe("Recovery.lastOffset and packetsSince", () => {
  it.live("reads a namespace's last offset and its packets after an offset", () =>
    Effect.gen(function* () {
      const prefix = freshPrefix("rec_since")
      const context = yield* Layer.build(servicesLayer(prefix))
      const recovery = Context.get(context, Recovery.Recovery)
      const publisher = Context.get(context, Publisher.Publisher)
      yield* setup(prefix, recovery)
      assert.strictEqual(yield* recovery.lastOffset("/"), 0n)
      for (let i = 1; i <= 5; i++) {
        yield* store(
          publisher,
          packetOf(["e", i, Buffer.from([i])], { rooms: [`r${i}`], except: ["x"] }),
        )
      }
      yield* store(publisher, packetOf(["elsewhere"], { nsp: "/other" }))
      assert.strictEqual(yield* recovery.lastOffset("/"), 5n)
      assert.strictEqual(yield* recovery.lastOffset("/other"), 1n)
      const rows = yield* recovery.packetsSince("/", 2n, 2)
      assert.deepStrictEqual(
        rows.map((row) => ({ ...row })),
        [
          { offset: 3n, rooms: ["r3"], except: ["x"], data: ["e", 3, Buffer.from([3])] },
          { offset: 4n, rooms: ["r4"], except: ["x"], data: ["e", 4, Buffer.from([4])] },
        ],
      )
      assert.deepStrictEqual(yield* recovery.packetsSince("/", 5n, 10), [])
    }),
  )
})

describe("Recovery live sessions (connected sockets)", () => {
  it.live(
    "restores a live session only once its owner's backend is gone, and never revives a disconnected one",
    () =>
      Effect.gen(function* () {
        const prefix = freshPrefix("rec_live")
        const context = yield* Layer.build(servicesLayer(prefix))
        const recovery = Context.get(context, Recovery.Recovery)
        const publisher = Context.get(context, Publisher.Publisher)
        yield* setup(prefix, recovery)
        yield* store(publisher, packetOf(["e"]))
        const alive = yield* backendPid
        // A pid no backend has: the owner was killed.
        const gone = 2_147_483_000
        const live = (pid: string) => ({ sid: `sid-${pid}`, pid, rooms: ["r"], data: { pid } })
        yield* recovery.persistLive([live("p1"), live("p2")], "/", alive)
        yield* recovery.persistLive([live("p3")], "/", gone)
        assert.isUndefined(yield* recovery.restore("/", "p1", "1"))
        const orphan = yield* recovery.restore("/", "p3", "1")
        assert.deepStrictEqual(orphan?.data, { pid: "p3" })
        // Disconnected: it expires, and a late live write does not bring it back.
        yield* recovery.persist(session("p2", { data: { disconnected: true } }), HOUR)
        yield* recovery.persistLive([live("p2")], "/", alive)
        const disconnected = yield* recovery.restore("/", "p2", "1")
        assert.deepStrictEqual(disconnected?.data, { disconnected: true })
        // Forgotten: only live rows go.
        yield* recovery.persist(session("p4"), HOUR)
        yield* recovery.forget(["p1", "p4"])
        const left = yield* sql<{ pid: string }>(`SELECT pid FROM ${prefix}_sessions ORDER BY pid`)
        assert.deepStrictEqual(
          left.map((row) => row.pid),
          ["p4"],
        )
      }),
  )
})

describe("Recovery.cleanup", () => {
  /** Services on fresh tables with a 1 s cleanupInterval, `count` packets in "/". */
  const withCleanup = <A, E, R>(
    name: string,
    count: number,
    body: (services: Services) => Effect.Effect<A, E, R>,
  ) => withStored(name, count, body, { cleanupInterval: 1000 }, "p")

  const counter = (prefix: string, nsp = "/") =>
    sql<{ last: string; cleaned: string }>(
      `SELECT last::text, cleaned::text FROM ${prefix}_offsets WHERE nsp = $1`,
      [nsp],
    ).pipe(Effect.map((rows) => rows[0]))

  const offsetsLeft = (prefix: string, nsp = "/") =>
    sql<{ n: string }>(
      `SELECT "offset"::text AS n FROM ${prefix}_packets WHERE nsp = $1 ORDER BY "offset"`,
      [nsp],
    ).pipe(Effect.map((rows) => rows.map((row) => Number(row.n))))

  /** Makes packets up to `offset` (included) of `nsp` look `age` old. */
  const age = (prefix: string, upTo: number, interval: string, nsp = "/") =>
    sql(
      `UPDATE ${prefix}_packets SET created_at = now() - $1::interval WHERE nsp = $2 AND "offset" <= $3`,
      [interval, nsp, upTo],
    )

  it.live("deletes nothing before a namespace asked for retention", () =>
    withCleanup("rec_clean_idle", 3, ({ prefix, recovery }) =>
      Effect.gen(function* () {
        yield* age(prefix, 3, "1 day")
        yield* recovery.persist(session("p1"), Duration.millis(1))
        yield* sql(`UPDATE ${prefix}_sessions SET expires_at = now() - interval '1 day'`)
        assert.deepStrictEqual(yield* recovery.cleanup, { packets: 0, sessions: 0 })
        assert.deepStrictEqual(yield* offsetsLeft(prefix), [1, 2, 3])
        assert.strictEqual((yield* sql(`SELECT 1 FROM ${prefix}_sessions`)).length, 1)
      }),
    ),
  )

  it.live(
    "deletes packets older than the retention, records the highest as cleaned, and deletes expired sessions",
    () =>
      withCleanup("rec_clean", 5, ({ prefix, recovery, publisher }) =>
        Effect.gen(function* () {
          yield* store(publisher, packetOf(["q", 1], { nsp: "/other" }))
          yield* store(publisher, packetOf(["q", 2], { nsp: "/other" }))
          yield* recovery.retain(Duration.minutes(1))
          // Kept: maxDisconnection + cleanupInterval = 61 s.
          yield* age(prefix, 3, "62 seconds")
          yield* age(prefix, 1, "62 seconds", "/other")
          yield* recovery.persist(session("old"), HOUR)
          yield* recovery.persist(session("new"), HOUR)
          yield* sql(
            `UPDATE ${prefix}_sessions SET expires_at = now() - interval '1 second' WHERE pid = 'old'`,
          )
          // The sessions restored below need their own.
          yield* recovery.persist(session("below"), HOUR)
          yield* recovery.persist(session("at"), HOUR)

          assert.deepStrictEqual(yield* recovery.cleanup, { packets: 4, sessions: 1 })
          assert.deepStrictEqual(yield* offsetsLeft(prefix), [4, 5])
          assert.deepStrictEqual(yield* counter(prefix), { last: "5", cleaned: "3" })
          assert.deepStrictEqual(yield* offsetsLeft(prefix, "/other"), [2])
          assert.deepStrictEqual(yield* counter(prefix, "/other"), { last: "2", cleaned: "1" })
          const sessions = yield* sql<{ pid: string }>(
            `SELECT pid FROM ${prefix}_sessions ORDER BY pid`,
          )
          assert.deepStrictEqual(
            sessions.map((row) => row.pid),
            ["at", "below", "new"],
          )
          // A client behind what was deleted cannot be restored; one at the edge can.
          assert.isUndefined(yield* recovery.restore("/", "below", "2"))
          const at = yield* recovery.restore("/", "at", "3")
          assert.deepStrictEqual(at?.missedPackets, [
            ["p", 4, "4"],
            ["p", 5, "5"],
          ])
          // Nothing left to delete.
          assert.deepStrictEqual(yield* recovery.cleanup, { packets: 0, sessions: 0 })
          assert.deepStrictEqual(yield* counter(prefix), { last: "5", cleaned: "3" })
        }),
      ),
  )

  it.live("runs in the Cleanup loop once a namespace asked for retention", () =>
    withCleanup("rec_clean_loop", 3, ({ prefix, recovery, cleanup }) =>
      Effect.gen(function* () {
        yield* age(prefix, 2, "1 day")
        yield* recovery.persist(session("p1"), HOUR)
        yield* sql(`UPDATE ${prefix}_sessions SET expires_at = now() - interval '1 second'`)
        // Off until a namespace asks: the loop has nothing of recovery to run.
        assert.strictEqual(yield* cleanup.runOnce, 0)
        assert.deepStrictEqual(yield* offsetsLeft(prefix), [1, 2, 3])
        yield* recovery.retain(Duration.minutes(1))
        yield* recovery.retain(Duration.minutes(2))
        // The packets older than the longest retention, and the expired session.
        assert.strictEqual(yield* cleanup.runOnce, 3)
        assert.deepStrictEqual(yield* offsetsLeft(prefix), [3])
        assert.strictEqual(yield* cleanup.runOnce, 0)
      }),
    ),
  )

  it.live("keeps packets as long as the longest retention asked for", () =>
    withCleanup("rec_clean_longest", 3, ({ prefix, recovery }) =>
      Effect.gen(function* () {
        yield* recovery.retain(HOUR)
        yield* recovery.retain(Duration.millis(1))
        // Each call ages every packet up to its offset: youngest first.
        yield* age(prefix, 3, "2 seconds")
        yield* age(prefix, 2, "30 minutes")
        yield* age(prefix, 1, "2 hours")
        assert.deepStrictEqual(yield* recovery.cleanup, { packets: 1, sessions: 0 })
        assert.deepStrictEqual(yield* offsetsLeft(prefix), [2, 3])
      }),
    ),
  )

  it.live("starts expiring the live sessions whose owner's backend is gone", () =>
    withCleanup("rec_clean_orphans", 1, ({ prefix, recovery }) =>
      Effect.gen(function* () {
        yield* recovery.retain(HOUR)
        const alive = yield* backendPid
        const live = (pid: string) => ({ sid: `sid-${pid}`, pid, rooms: [], data: {} })
        yield* recovery.persistLive([live("owned")], "/", alive)
        yield* recovery.persistLive([live("orphan")], "/", 2_147_483_000)
        yield* recovery.cleanup
        // The orphan has the longest maxDisconnectionDuration asked for, from now on.
        const rows = yield* sql<{ pid: string; expiring: boolean; late: boolean }>(
          `SELECT pid, expires_at IS NOT NULL AS expiring, ` +
            `coalesce(expires_at > now() + interval '59 minutes', false) AS late ` +
            `FROM ${prefix}_sessions ORDER BY pid`,
        )
        assert.deepStrictEqual(rows, [
          { pid: "orphan", expiring: true, late: true },
          { pid: "owned", expiring: false, late: false },
        ])
        // Its server is alive after all (its LISTEN connection came back): live again.
        yield* recovery.persistLive([live("orphan")], "/", alive)
        const [revived] = yield* sql<{ expiring: boolean }>(
          `SELECT expires_at IS NOT NULL AS expiring FROM ${prefix}_sessions WHERE pid = 'orphan'`,
        )
        assert.isFalse(revived!.expiring)
        yield* recovery.persistLive([live("orphan")], "/", 2_147_483_000)
        yield* recovery.cleanup
        // An expiring orphan goes once its time is up.
        yield* sql(
          `UPDATE ${prefix}_sessions SET expires_at = now() - interval '1 second' WHERE pid = 'orphan'`,
        )
        assert.deepStrictEqual(yield* recovery.cleanup, { packets: 0, sessions: 1 })
      }),
    ),
  )

  it.effect(
    "runs every cleanupInterval once retention was asked for, the first after one interval",
    () =>
      Effect.gen(function* () {
        const prefix = freshPrefix("rec_clean_clock")
        // Every statement the services run, to see the cleanup's without waiting for wall time.
        const statements: Array<string> = []
        const real = Database.fromPool(pool)
        const recording = Layer.succeed(Database.Database, {
          ...real,
          query: ((text: string, params?: ReadonlyArray<unknown>) =>
            real
              .query(text, params)
              .pipe(
                Effect.tap(() => Effect.sync(() => statements.push(text))),
              )) as typeof real.query,
        })
        const layer = Recovery.layer.pipe(
          Layer.provideMerge(Cleanup.layerEmpty),
          Layer.provide(
            Layer.mergeAll(
              Layer.succeed(
                Config.Config,
                Config.decodeSync({ recoveryTablePrefix: prefix, cleanupInterval: 1000 }),
              ),
              recording,
            ),
          ),
        )
        const recovery = Context.get(yield* Layer.build(layer), Recovery.Recovery)
        yield* recovery.ensureTables
        const passes = () =>
          statements.filter((text) => text.includes(`d AS (DELETE FROM "${prefix}_packets"`)).length
        const advance = (millis: number) =>
          TestClock.adjust(Duration.millis(millis)).pipe(Effect.andThen(Effect.yieldNow))

        // Without retention a pass runs no statement.
        yield* advance(3000)
        assert.strictEqual(passes(), 0)
        yield* recovery.retain(Duration.millis(1))
        yield* advance(999)
        assert.strictEqual(passes(), 0)
        yield* advance(1)
        yield* eventually(() => passes() === 1)
        yield* advance(999)
        assert.strictEqual(passes(), 1)
        yield* advance(1)
        yield* eventually(() => passes() === 2)
      }),
  )
})

describe("Publisher.unsafeStore", () => {
  it.live(
    "gives consecutive offsets 1..1000 to two servers storing 500 packets each at once, each in its own order",
    () =>
      Effect.gen(function* () {
        const prefix = freshPrefix("pub_offsets")
        const poolA = makePool({ max: 2 })
        const poolB = makePool({ max: 2 })
        yield* Effect.addFinalizer(() =>
          Effect.promise(() => Promise.all([poolA.end(), poolB.end()])),
        )
        const a = yield* Layer.build(servicesLayer(prefix, {}, poolA))
        const b = yield* Layer.build(servicesLayer(prefix, {}, poolB))
        yield* Context.get(a, Recovery.Recovery).ensureTables
        // Each server stores its packets in bursts of varying size, in turns of the event loop.
        const storeAll = (publisher: Publisher.Publisher["Service"], name: string) =>
          fromPromise(async () => {
            const offsets: Array<bigint> = []
            const settled: Array<Promise<void>> = []
            for (let i = 0; i < 500;) {
              const burst = Math.min(500 - i, 1 + ((i * 7) % 40))
              for (let j = 0; j < burst; j++, i++) {
                const n = i
                settled.push(
                  new Promise((resolve, reject) =>
                    publisher.unsafeStore(
                      "unused",
                      undefined,
                      packetOf([name, n]),
                      (error, offset) => {
                        if (error !== undefined || offset === undefined) return reject(error)
                        offsets[n] = BigInt(offset)
                        resolve()
                      },
                    ),
                  ),
                )
              }
              await new Promise((resolve) => setImmediate(resolve))
            }
            await Promise.all(settled)
            return offsets
          })
        const [fromA, fromB] = yield* Effect.all(
          [
            storeAll(Context.get(a, Publisher.Publisher), "a"),
            storeAll(Context.get(b, Publisher.Publisher), "b"),
          ],
          { concurrency: "unbounded" },
        )
        for (const offsets of [fromA, fromB]) {
          assert.strictEqual(offsets.length, 500)
          for (let i = 1; i < offsets.length; i++) assert.isTrue(offsets[i - 1]! < offsets[i]!)
        }
        const all = [...fromA, ...fromB].map(Number).sort((x, y) => x - y)
        assert.deepStrictEqual(
          all,
          Array.from({ length: 1000 }, (_, i) => i + 1),
        )
        // Each row holds what was stored under its offset.
        const rows = yield* sql<{ n: string; data: Buffer }>(
          `SELECT "offset"::text AS n, data FROM ${prefix}_packets ORDER BY "offset"`,
        )
        assert.strictEqual(rows.length, 1000)
        const byOffset = new Map<string, Array<unknown>>()
        fromA.forEach((offset, i) => byOffset.set(String(offset), ["a", i]))
        fromB.forEach((offset, i) => byOffset.set(String(offset), ["b", i]))
        for (const row of rows) {
          const data = Codec.decodePacketData(row.data)
          assert.isTrue(Result.isSuccess(data))
          assert.deepStrictEqual(
            (data as Result.Success<Array<unknown>, string>).success,
            byOffset.get(row.n),
          )
        }
        const [counter] = yield* sql(`SELECT last::text AS last FROM ${prefix}_offsets`)
        assert.strictEqual(counter.last, "1000")
      }),
  )

  it.live(
    "returns with each stored packet the last offset notified before its statement, whoever stored it",
    () =>
      Effect.gen(function* () {
        const prefix = freshPrefix("pub_after")
        const a = yield* Layer.build(servicesLayer(prefix))
        const b = yield* Layer.build(servicesLayer(prefix))
        yield* setup(prefix, Context.get(a, Recovery.Recovery))
        const publisherA = Context.get(a, Publisher.Publisher)
        const publisherB = Context.get(b, Publisher.Publisher)
        const message: Codec.WireMessage = { uid: "node", type: Codec.MessageType.BROADCAST }
        /** Stores one packet; resolves with its offset and `after`. */
        const stored = (publisher: Publisher.Publisher["Service"], notified: boolean) =>
          Effect.callback<readonly [string | undefined, string | undefined], Error>((resume) =>
            publisher.unsafeStore(
              "unused",
              notified ? message : undefined,
              packetOf(["x"]),
              (error, offset, after) =>
                resume(error ? Effect.fail(error) : Effect.succeed([offset, after] as const)),
            ),
          )
        assert.deepStrictEqual(yield* stored(publisherA, true), ["1", "0"])
        // Stored only (no notification): not something a receiver could wait for.
        assert.deepStrictEqual(yield* stored(publisherA, false), ["2", "1"])
        assert.deepStrictEqual(yield* stored(publisherB, false), ["3", "1"])
        assert.deepStrictEqual(yield* stored(publisherB, true), ["4", "1"])
        assert.deepStrictEqual(yield* stored(publisherA, false), ["5", "4"])
        // One statement: every packet of it comes after the same notification.
        const together = yield* Effect.all(
          [true, false, true].map((notified) => stored(publisherA, notified)),
          { concurrency: "unbounded" },
        )
        assert.deepStrictEqual(together, [
          ["6", "4"],
          ["7", "4"],
          ["8", "4"],
        ])
        assert.deepStrictEqual(yield* stored(publisherB, false), ["9", "8"])
      }),
  )

  it.live("counts each namespace on its own, even within one statement", () =>
    Effect.gen(function* () {
      const prefix = freshPrefix("pub_nsps")
      const context = yield* Layer.build(servicesLayer(prefix))
      yield* setup(prefix, Context.get(context, Recovery.Recovery))
      const publisher = Context.get(context, Publisher.Publisher)
      // Stored in the same tick: one batch, split per namespace.
      const offsets = yield* Effect.all(
        ["/a", "/b", "/a", "/a", "/b", "/c", "/a"].map((nsp) =>
          store(publisher, packetOf([nsp], { nsp })),
        ),
        { concurrency: "unbounded" },
      )
      assert.deepStrictEqual(offsets, ["1", "1", "2", "3", "2", "1", "4"])
    }),
  )

  it.live(
    "stores and notifies every one of identical packets, each notification ending with its offset",
    () =>
      Effect.gen(function* () {
        const prefix = freshPrefix("pub_same")
        const channel = channelName(prefix, "/")
        const context = yield* Layer.build(servicesLayer(prefix))
        yield* setup(prefix, Context.get(context, Recovery.Recovery))
        const publisher = Context.get(context, Publisher.Publisher)
        const { payloads } = yield* listen(channel)
        const message: Codec.WireMessage = {
          uid: "node-1",
          type: Codec.MessageType.BROADCAST,
          nsp: "/",
          data: { opts: { rooms: [], except: [], flags: {} }, packet: { type: 2, data: ["same"] } },
        }
        const offsets = yield* Effect.all(
          Array.from({ length: 5 }, () =>
            store(publisher, packetOf(["same"]), { channel, message }),
          ),
          { concurrency: "unbounded" },
        )
        assert.deepStrictEqual(offsets, ["1", "2", "3", "4", "5"])
        yield* eventually(() => payloads.length === 5)
        for (const [i, payload] of payloads.entries()) {
          const json = JSON.stringify(message)
          assert.strictEqual(payload, `${json.slice(0, -1)},"offset":"${i + 1}"}`)
          const decoded = Codec.decodeNotification(payload)
          assert.isTrue(Result.isSuccess(decoded))
          assert.deepStrictEqual((decoded as any).success, {
            _tag: "Inline",
            message: { ...message, offset: String(i + 1) },
          })
        }
        const rows = yield* sql(`SELECT 1 FROM ${prefix}_packets`)
        assert.strictEqual(rows.length, 5)
      }),
  )

  it.live("notifies nothing for a packet stored without a message", () =>
    Effect.gen(function* () {
      const prefix = freshPrefix("pub_silent")
      const channel = channelName(prefix, "/")
      const context = yield* Layer.build(servicesLayer(prefix))
      yield* setup(prefix, Context.get(context, Recovery.Recovery))
      const publisher = Context.get(context, Publisher.Publisher)
      const { payloads } = yield* listen(channel)
      const offsets = yield* Effect.all(
        [1, 2, 3].map((i) =>
          store(publisher, packetOf(["private", i], { rooms: ["sid"] }), { channel }),
        ),
        { concurrency: "unbounded" },
      )
      assert.deepStrictEqual(offsets, ["1", "2", "3"])
      // A marker published afterwards on the same channel: notifications come in commit order.
      yield* publisher.publish(channel, {
        uid: "node-1",
        type: Codec.MessageType.HEARTBEAT,
        nsp: "/",
      })
      yield* eventually(() => payloads.length >= 1)
      assert.deepStrictEqual(payloads, ['{"uid":"node-1","type":2,"nsp":"/"}'])
      const rows = yield* sql(`SELECT rooms FROM ${prefix}_packets ORDER BY "offset"`)
      assert.deepStrictEqual(
        rows.map((row) => row.rooms),
        [["sid"], ["sid"], ["sid"]],
      )
    }),
  )

  it.live("puts the offset in the attachment header of a binary or large stored message", () =>
    Effect.gen(function* () {
      const prefix = freshPrefix("pub_attach")
      const channel = channelName(prefix, "/")
      const context = yield* Layer.build(servicesLayer(prefix))
      yield* setup(prefix, Context.get(context, Recovery.Recovery))
      const publisher = Context.get(context, Publisher.Publisher)
      const { payloads } = yield* listen(channel)
      const broadcast = (args: Array<unknown>): Codec.WireMessage => ({
        uid: "node-1",
        type: Codec.MessageType.BROADCAST,
        nsp: "/",
        data: { opts: { rooms: [], except: [], flags: {} }, packet: { type: 2, data: args } },
      })
      const messages = [
        broadcast(["binary", Buffer.from([1, 2, 3])]),
        // Text that holds the placeholders' digits must not confuse them.
        broadcast(["large 9223372036854775806 9223372036854775807", "é".repeat(5000)]),
        broadcast(["inline 9223372036854775806"]),
      ]
      const offsets = yield* Effect.all(
        messages.map((message, i) => store(publisher, packetOf(["p", i]), { channel, message })),
        { concurrency: "unbounded" },
      )
      yield* eventually(() => payloads.length === 3)
      for (const [i, payload] of payloads.entries()) {
        const decoded = Codec.decodeNotification(payload)
        assert.isTrue(Result.isSuccess(decoded), payload)
        const notification = (decoded as Result.Success<Codec.Notification, string>).success
        if (i === 2) {
          assert.strictEqual(notification._tag, "Inline")
          assert.isTrue(payload.endsWith(`,"offset":"${offsets[i]}"}`), payload)
          assert.deepStrictEqual(
            (notification as Extract<Codec.Notification, { _tag: "Inline" }>).message,
            { ...messages[i]!, offset: offsets[i] },
          )
          continue
        }
        assert.strictEqual(notification._tag, "Attachment", payload)
        const header = notification as Extract<Codec.Notification, { _tag: "Attachment" }>
        assert.strictEqual(header.offset, offsets[i])
        assert.isTrue(payload.endsWith(`,"offset":"${offsets[i]}"}`), payload)
        const [row] = yield* sql<{ payload: Buffer }>(
          `SELECT payload FROM ${prefix}_att WHERE id = $1`,
          [header.attachmentId],
        )
        const message = Codec.decodeAttachment(row!.payload)
        assert.isTrue(Result.isSuccess(message))
        const { offset: _placeholder, ...rest } = (
          message as Result.Success<Codec.WireMessage, string>
        ).success
        assert.deepStrictEqual(rest, messages[i])
      }
    }),
  )
})
