/**
 * Stored packets against real PostgreSQL (live services): the PacketStore's SQL spliced into the
 * Publisher's statements gives offsets consecutive per namespace whatever the number of writers,
 * each stored notification carries its offset, and the packets are read back in order. Each test
 * has tables of its own (a fresh prefix).
 */
import { assert, describe, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Result from "effect/Result"
import { channelName } from "../src/Channel.js"
import * as Codec from "../src/Codec.js"
import * as Publisher from "../src/Publisher.js"
import * as Recovery from "../src/recovery/Recovery.js"
import { makePool } from "./utils/postgres.js"
import {
  eventually,
  freshPrefix,
  fromPromise,
  listen,
  packetOf,
  servicesLayer,
  setup,
  sql,
  store,
  useRecoveryDatabase,
} from "./utils/recoveryServices.js"

useRecoveryDatabase()

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

describe("Publisher.unsafeStore, with the PacketStore's SQL", () => {
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
