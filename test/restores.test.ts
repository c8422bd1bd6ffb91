/**
 * Restores: a restored socket gets the packets its session missed, plus those delivered on its
 * server while the restore ran that are for it (by rooms and except rooms), each once; and the
 * packets its restore replayed are not delivered to it again. The Recovery service is a stub whose
 * restore answers when the test says so (the SQL side is in Recovery.test.ts).
 */
import { assert, describe, it } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type { BroadcastOptions } from "socket.io-adapter"
import { Recovery, type RestoredSession } from "../src/recovery/Recovery.js"
import { NOT_RESTORED, Restores } from "../src/recovery/Restores.js"

/** Broadcast options to `rooms` (everyone when empty) except `except`. */
const to = (rooms: Array<string>, except: Array<string> = []): BroadcastOptions => ({
  rooms: new Set(rooms),
  except: new Set(except),
  flags: {},
})

/** Restores over a Recovery whose restore waits for `answer`. */
const restoresWith = Effect.gen(function* () {
  const answer = yield* Deferred.make<RestoredSession | undefined>()
  const failures: Array<unknown> = []
  const recovery = { restore: () => Deferred.await(answer) } as unknown as Recovery["Service"]
  const restores = new Restores({
    nsp: "/",
    requestsTimeout: Duration.seconds(10),
    run: (effect) => Effect.runPromiseExit(Effect.provideService(effect, Recovery, recovery)),
    report: (failure) => failures.push(failure),
  })
  return { answer, failures, restores }
})

/** A session of socket `sid` in `rooms`, read up to offset `last`, that missed `missed`. */
const session = (
  rooms: Array<string>,
  last: bigint,
  missed: Array<Array<unknown>> = [],
): RestoredSession => ({
  sid: "s1",
  pid: "p1",
  rooms,
  data: { user: 1 },
  missedPackets: missed,
  last,
})

describe("Restores", () => {
  it.live(
    "adds to the missed packets those delivered during the restore that are the socket's, by rooms and except",
    () =>
      Effect.gen(function* () {
        const { answer, restores } = yield* restoresWith
        const restoring = restores.restore("p1", "3")
        // Delivered on this server while PostgreSQL answers; the snapshot read up to 5.
        const delivered: Array<[bigint, BroadcastOptions]> = [
          [5n, to([])],
          [6n, to(["red"])],
          [7n, to(["green"])],
          [8n, to([], ["blue"])],
          [9n, to(["red"], ["blue"])],
          [10n, to(["green", "blue"])],
          [11n, to([], ["green"])],
        ]
        for (const [offset, opts] of delivered) {
          restores.delivering(offset, ["ev", Number(offset), String(offset)], opts)
        }
        yield* Deferred.succeed(answer, session(["s1", "red", "blue"], 5n, [["ev", 4, "4"]]))
        const restored = yield* Effect.promise(() => restoring)
        assert.deepStrictEqual(restored.missedPackets, [
          ["ev", 4, "4"],
          ["ev", 6, "6"],
          ["ev", 10, "10"],
          ["ev", 11, "11"],
        ])
        assert.strictEqual(restored.sid, "s1")
        assert.deepStrictEqual(restored.data, { user: 1 })
      }),
  )

  it.live("keeps the restored socket out of the deliveries its restore replayed, then not", () =>
    Effect.gen(function* () {
      const { answer, restores } = yield* restoresWith
      const restoring = restores.restore("p1", "3")
      restores.delivering(6n, ["ev", 6, "6"], to([]))
      yield* Deferred.succeed(answer, session(["s1"], 5n))
      yield* Effect.promise(() => restoring)
      // A packet up to what it replayed (6), arriving late, is not sent to it again.
      assert.deepStrictEqual([...restores.delivering(6n, [], to([], ["x"]))!], ["x", "s1"])
      // Past it, the socket gets packets live, and nobody is left out any more.
      assert.deepStrictEqual([...restores.delivering(7n, [], to([], ["x"]))!], ["x"])
      assert.deepStrictEqual([...restores.delivering(6n, [], to([], ["x"]))!], ["x"])
    }),
  )

  it.live("restores nothing when the session is unknown, or when PostgreSQL fails", () =>
    Effect.gen(function* () {
      const unknown = yield* restoresWith
      const first = unknown.restores.restore("p1", "3")
      yield* Deferred.succeed(unknown.answer, undefined)
      assert.strictEqual(yield* Effect.promise(() => first), NOT_RESTORED)
      assert.deepStrictEqual(unknown.failures, [])

      const failing = yield* restoresWith
      const second = failing.restores.restore("p1", "3")
      yield* Deferred.die(failing.answer, new Error("connection refused"))
      assert.strictEqual(yield* Effect.promise(() => second), NOT_RESTORED)
      assert.strictEqual(failing.failures.length, 1)
    }),
  )
})
