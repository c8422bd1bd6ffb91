/**
 * The Recovery service against real PostgreSQL (live services): the tables, sessions persisted and
 * restored with the packets they missed, live sessions of connected sockets, and the cleanup of
 * old packets and expired sessions. Each test has tables of its own (a fresh prefix).
 */
import { assert, describe, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Result from "effect/Result"
import * as Tracer from "effect/Tracer"
import { TestClock } from "effect/testing"
import { MAX_IDENTIFIER_BYTES } from "../src/Channel.js"
import * as Cleanup from "../src/Cleanup.js"
import * as AdapterConfig from "../src/AdapterConfig.js"
import * as Database from "../src/Database.js"
import * as Publisher from "../src/Publisher.js"
import * as Recovery from "../src/recovery/Recovery.js"
import { eventually as waitUntil } from "./utils/cluster.js"
import { makePool } from "./utils/postgres.js"
import {
  backendPid,
  eventually,
  freshPrefix,
  freshSchemaPrefix,
  fromPromise,
  HOUR,
  packetOf,
  pool,
  servicesLayer,
  session,
  setup,
  sql,
  store,
  useRecoveryDatabase,
  withStored,
  type Services,
} from "./utils/recoveryServices.js"

useRecoveryDatabase()

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
                await pool().query(
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
    "runs in each pass of the Cleanup loop (every cleanupInterval) once retention was asked for",
    () =>
      Effect.gen(function* () {
        const prefix = freshPrefix("rec_clean_clock")
        // Every statement the services run, to see the cleanup's without waiting for wall time.
        const statements: Array<string> = []
        const real = Database.fromPool(pool())
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
                AdapterConfig.AdapterConfig,
                AdapterConfig.decodeSync({ recoveryTablePrefix: prefix, cleanupInterval: 1000 }),
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

        // Without retention a pass runs no statement. The loop's passes fall on whole seconds.
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
