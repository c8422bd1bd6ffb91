/**
 * Pending requests as a specification: a request waits for one answer from each node it counted,
 * ends at once when they all answered or left, at its timeout with what it has, or when closed;
 * answers are matched by request id and sender; only answers to our own requests are wanted.
 * Timers run on the TestClock.
 */
import { afterEach, assert, beforeEach, describe, it, vi } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import { TestClock } from "effect/testing"
import * as Protocol from "../src/Protocol.js"
import { Requests } from "../src/Requests.js"

const { MessageType } = Protocol

const socket = (id: string): Protocol.SocketDescription => ({
  id,
  handshake: {},
  rooms: [id],
  data: {},
})

const socketsFrom = (uid: string, requestId: string, ids: ReadonlyArray<string>) =>
  ({
    uid,
    nsp: "/",
    type: MessageType.FETCH_SOCKETS_RESPONSE,
    data: { requestId, sockets: ids.map(socket) },
  }) as const

const valueFrom = (uid: string, requestId: string, packet: unknown) =>
  ({
    uid,
    nsp: "/",
    type: MessageType.SERVER_SIDE_EMIT_RESPONSE,
    data: { requestId, packet },
  }) as const

/**
 * Starts a request to `nodes` on a fiber; resolves once it was sent, with its id, the ids sent
 * (one per send) and the fiber.
 */
const start = <
  T extends
    typeof MessageType.FETCH_SOCKETS_RESPONSE | typeof MessageType.SERVER_SIDE_EMIT_RESPONSE,
>(
  requests: Requests,
  answer: T,
  nodes: ReadonlyArray<string>,
  timeout = Duration.seconds(5),
) =>
  Effect.gen(function* () {
    const sent: Array<string> = []
    const fiber = yield* requests
      .request({
        answer,
        nodes,
        timeout,
        send: (requestId) => Effect.sync(() => void sent.push(requestId)),
      })
      .pipe(Effect.forkChild)
    yield* Effect.yieldNow
    return { requestId: sent[0]!, sent, fiber }
  })

/** Whether the fiber has ended (without waiting for it). */
const ended = (fiber: Fiber.Fiber<unknown, unknown>) =>
  Effect.yieldNow.pipe(Effect.map(() => fiber.pollUnsafe() !== undefined))

describe("Requests", () => {
  it.effect("ends once every node answered, with the answers in arrival order", () =>
    Effect.gen(function* () {
      const requests = new Requests()
      const { requestId, fiber } = yield* start(requests, MessageType.FETCH_SOCKETS_RESPONSE, [
        "a",
        "b",
      ])
      requests.answer(socketsFrom("b", requestId, ["b1", "b2"]))
      assert.isFalse(yield* ended(fiber))
      requests.answer(socketsFrom("a", requestId, ["a1"]))
      const result = yield* Fiber.join(fiber)
      assert.deepStrictEqual(result, {
        responses: [socket("b1"), socket("b2"), socket("a1")],
        missing: 0,
      })
      assert.strictEqual(requests.size, 0)
    }),
  )

  it.effect("collects one value per node for server-side emits, undefined included", () =>
    Effect.gen(function* () {
      const requests = new Requests()
      const { requestId, fiber } = yield* start(requests, MessageType.SERVER_SIDE_EMIT_RESPONSE, [
        "a",
        "b",
      ])
      requests.answer(valueFrom("a", requestId, { ok: 1 }))
      requests.answer(valueFrom("b", requestId, undefined))
      assert.deepStrictEqual(yield* Fiber.join(fiber), {
        responses: [{ ok: 1 }, undefined],
        missing: 0,
      })
    }),
  )

  it.effect(
    "counts one answer per node it waits for: a second one, a stranger's, another request's or another type's are ignored",
    () =>
      Effect.gen(function* () {
        const requests = new Requests()
        const { requestId, fiber } = yield* start(requests, MessageType.SERVER_SIDE_EMIT_RESPONSE, [
          "a",
          "b",
        ])
        requests.answer(valueFrom("a", requestId, 1))
        requests.answer(valueFrom("a", requestId, 2))
        requests.answer(valueFrom("stranger", requestId, 3))
        requests.answer(valueFrom("b", "another request", 4))
        requests.answer(socketsFrom("b", requestId, ["s"]))
        assert.isFalse(yield* ended(fiber))
        requests.answer(valueFrom("b", requestId, 5))
        assert.deepStrictEqual(yield* Fiber.join(fiber), { responses: [1, 5], missing: 0 })
      }),
  )

  it.effect("ends at its timeout with the answers it has and how many nodes are missing", () =>
    Effect.gen(function* () {
      const requests = new Requests()
      const { requestId, fiber } = yield* start(
        requests,
        MessageType.SERVER_SIDE_EMIT_RESPONSE,
        ["a", "b", "c"],
        Duration.seconds(2),
      )
      requests.answer(valueFrom("b", requestId, "b"))
      yield* TestClock.adjust("1999 millis")
      assert.isFalse(yield* ended(fiber))
      yield* TestClock.adjust("1 millis")
      assert.deepStrictEqual(yield* Fiber.join(fiber), { responses: ["b"], missing: 2 })
      assert.strictEqual(requests.size, 0)
      // Too late: not wanted any more.
      assert.isFalse(requests.wanted(MessageType.SERVER_SIDE_EMIT_RESPONSE, requestId))
    }),
  )

  it.effect(
    "no longer waits for a node that left, and ends when only such nodes were missing",
    () =>
      Effect.gen(function* () {
        const requests = new Requests()
        const { requestId, fiber } = yield* start(requests, MessageType.FETCH_SOCKETS_RESPONSE, [
          "a",
          "b",
        ])
        requests.answer(socketsFrom("a", requestId, ["a1"]))
        requests.forget("b")
        assert.deepStrictEqual(yield* Fiber.join(fiber), { responses: [socket("a1")], missing: 0 })
      }),
  )

  it.effect("ends at once, unsent, when there is no node to ask", () =>
    Effect.gen(function* () {
      const requests = new Requests()
      const { sent, fiber } = yield* start(requests, MessageType.FETCH_SOCKETS_RESPONSE, [])
      assert.deepStrictEqual(yield* Fiber.join(fiber), { responses: [], missing: 0 })
      assert.deepStrictEqual(sent, [])
    }),
  )

  it.effect("close ends every pending request with what it has; later ones end at once", () =>
    Effect.gen(function* () {
      const requests = new Requests()
      const first = yield* start(requests, MessageType.SERVER_SIDE_EMIT_RESPONSE, ["a", "b"])
      const second = yield* start(requests, MessageType.FETCH_SOCKETS_RESPONSE, ["a"])
      requests.answer(valueFrom("a", first.requestId, "a"))
      requests.close()
      assert.deepStrictEqual(yield* Fiber.join(first.fiber), { responses: ["a"], missing: 1 })
      assert.deepStrictEqual(yield* Fiber.join(second.fiber), { responses: [], missing: 1 })
      const later = yield* start(requests, MessageType.FETCH_SOCKETS_RESPONSE, ["a", "b"])
      assert.deepStrictEqual(yield* Fiber.join(later.fiber), { responses: [], missing: 2 })
      assert.deepStrictEqual(later.sent, [])
      assert.strictEqual(requests.size, 0)
    }),
  )

  it.effect("fails as its send fails, and is forgotten", () =>
    Effect.gen(function* () {
      const requests = new Requests()
      let requestId = ""
      const error = yield* requests
        .request({
          answer: MessageType.FETCH_SOCKETS_RESPONSE,
          nodes: ["a"],
          timeout: Duration.seconds(5),
          send: (id) => {
            requestId = id
            return Effect.fail("PostgreSQL is down" as const)
          },
        })
        .pipe(Effect.flip)
      assert.strictEqual(error, "PostgreSQL is down")
      assert.strictEqual(requests.size, 0)
      assert.isFalse(requests.wanted(MessageType.FETCH_SOCKETS_RESPONSE, requestId))
    }),
  )

  it.effect(
    "wants the answers to its own pending requests, not answers to other nodes' requests, and everything else",
    () =>
      Effect.gen(function* () {
        const requests = new Requests()
        const { requestId, fiber } = yield* start(requests, MessageType.FETCH_SOCKETS_RESPONSE, [
          "a",
        ])
        assert.isTrue(requests.wanted(MessageType.FETCH_SOCKETS_RESPONSE, requestId))
        assert.isTrue(requests.wanted(MessageType.SERVER_SIDE_EMIT_RESPONSE, requestId))
        assert.isFalse(requests.wanted(MessageType.FETCH_SOCKETS_RESPONSE, "theirs"))
        assert.isFalse(requests.wanted(MessageType.SERVER_SIDE_EMIT_RESPONSE, "theirs"))
        // Acknowledgements of broadcasts are socket.io-adapter's to match; requests are not answers.
        assert.isTrue(requests.wanted(MessageType.BROADCAST_ACK, "theirs"))
        assert.isTrue(requests.wanted(MessageType.BROADCAST_CLIENT_COUNT, "theirs"))
        assert.isTrue(requests.wanted(MessageType.FETCH_SOCKETS, "theirs"))
        assert.isTrue(requests.wanted(MessageType.BROADCAST, undefined))
        // An answer whose request id is unknown (an attachment header without one): fetched.
        assert.isTrue(requests.wanted(MessageType.FETCH_SOCKETS_RESPONSE, undefined))
        requests.answer(socketsFrom("a", requestId, []))
        yield* Fiber.join(fiber)
        assert.isFalse(requests.wanted(MessageType.FETCH_SOCKETS_RESPONSE, requestId))
      }),
  )

  it.effect("keeps concurrent requests apart", () =>
    Effect.gen(function* () {
      const requests = new Requests()
      const one = yield* start(requests, MessageType.SERVER_SIDE_EMIT_RESPONSE, ["a", "b"])
      const two = yield* start(requests, MessageType.SERVER_SIDE_EMIT_RESPONSE, ["a"])
      assert.notStrictEqual(one.requestId, two.requestId)
      requests.answer(valueFrom("a", two.requestId, "two"))
      requests.answer(valueFrom("a", one.requestId, "one-a"))
      assert.deepStrictEqual(yield* Fiber.join(two.fiber), { responses: ["two"], missing: 0 })
      assert.isFalse(yield* ended(one.fiber))
      requests.answer(valueFrom("b", one.requestId, "one-b"))
      assert.deepStrictEqual(yield* Fiber.join(one.fiber), {
        responses: ["one-a", "one-b"],
        missing: 0,
      })
    }),
  )
})

/**
 * The same specification for `unsafeRequest`, the adapter's path without spans: plain callbacks
 * and a `setTimeout` (on vitest's fake timers here).
 */
describe("Requests.unsafeRequest", () => {
  beforeEach(() => void vi.useFakeTimers())
  afterEach(() => void vi.useRealTimers())

  const startUnsafe = (
    requests: Requests,
    answer:
      typeof MessageType.FETCH_SOCKETS_RESPONSE | typeof MessageType.SERVER_SIDE_EMIT_RESPONSE,
    nodes: ReadonlyArray<string>,
    timeoutMillis = 5000,
  ) => {
    const sent: Array<string> = []
    const results: Array<{ responses: ReadonlyArray<unknown>; missing: number }> = []
    requests.unsafeRequest(
      { answer, nodes, timeoutMillis, send: (requestId) => void sent.push(requestId) },
      (result) => void results.push(result),
    )
    return { requestId: sent[0]!, sent, results }
  }

  it("ends once every node answered, with the answers in arrival order, and is forgotten", () => {
    const requests = new Requests()
    const { requestId, results } = startUnsafe(requests, MessageType.FETCH_SOCKETS_RESPONSE, [
      "a",
      "b",
    ])
    requests.answer(socketsFrom("b", requestId, ["b1"]))
    assert.deepStrictEqual(results, [])
    requests.answer(socketsFrom("a", requestId, ["a1"]))
    assert.deepStrictEqual(results, [{ responses: [socket("b1"), socket("a1")], missing: 0 }])
    assert.strictEqual(requests.size, 0)
    // Its timer is gone too: nothing is called a second time.
    vi.runAllTimers()
    assert.strictEqual(results.length, 1)
  })

  it("counts one answer per node: a second one, a stranger's or another type's are ignored", () => {
    const requests = new Requests()
    const { requestId, results } = startUnsafe(requests, MessageType.SERVER_SIDE_EMIT_RESPONSE, [
      "a",
      "b",
    ])
    requests.answer(valueFrom("a", requestId, 1))
    requests.answer(valueFrom("a", requestId, 2))
    requests.answer(valueFrom("stranger", requestId, 3))
    requests.answer(socketsFrom("b", requestId, ["s"]))
    assert.deepStrictEqual(results, [])
    requests.answer(valueFrom("b", requestId, 5))
    assert.deepStrictEqual(results, [{ responses: [1, 5], missing: 0 }])
  })

  it("ends at its timeout with the answers it has and how many nodes are missing", () => {
    const requests = new Requests()
    const { requestId, results } = startUnsafe(
      requests,
      MessageType.SERVER_SIDE_EMIT_RESPONSE,
      ["a", "b", "c"],
      2000,
    )
    requests.answer(valueFrom("b", requestId, "b"))
    vi.advanceTimersByTime(1999)
    assert.deepStrictEqual(results, [])
    vi.advanceTimersByTime(1)
    assert.deepStrictEqual(results, [{ responses: ["b"], missing: 2 }])
    assert.strictEqual(requests.size, 0)
    assert.isFalse(requests.wanted(MessageType.SERVER_SIDE_EMIT_RESPONSE, requestId))
    // A late answer changes nothing.
    requests.answer(valueFrom("a", requestId, "a"))
    assert.strictEqual(results.length, 1)
  })

  it("no longer waits for a node that left", () => {
    const requests = new Requests()
    const { requestId, results } = startUnsafe(requests, MessageType.FETCH_SOCKETS_RESPONSE, [
      "a",
      "b",
    ])
    requests.answer(socketsFrom("a", requestId, ["a1"]))
    requests.forget("b")
    assert.deepStrictEqual(results, [{ responses: [socket("a1")], missing: 0 }])
  })

  it("ends unsent when there is no node to ask, after the caller's turn", async () => {
    const requests = new Requests()
    const { sent, results } = startUnsafe(requests, MessageType.FETCH_SOCKETS_RESPONSE, [])
    assert.deepStrictEqual(results, [])
    await Promise.resolve()
    assert.deepStrictEqual(results, [{ responses: [], missing: 0 }])
    assert.deepStrictEqual(sent, [])
  })

  it("close ends every pending request with what it has; later ones end unsent", async () => {
    const requests = new Requests()
    const first = startUnsafe(requests, MessageType.SERVER_SIDE_EMIT_RESPONSE, ["a", "b"])
    const second = startUnsafe(requests, MessageType.FETCH_SOCKETS_RESPONSE, ["a"])
    requests.answer(valueFrom("a", first.requestId, "a"))
    requests.close()
    assert.deepStrictEqual(first.results, [{ responses: ["a"], missing: 1 }])
    assert.deepStrictEqual(second.results, [{ responses: [], missing: 1 }])
    const later = startUnsafe(requests, MessageType.FETCH_SOCKETS_RESPONSE, ["a", "b"])
    await Promise.resolve()
    assert.deepStrictEqual(later.results, [{ responses: [], missing: 2 }])
    assert.deepStrictEqual(later.sent, [])
    assert.strictEqual(requests.size, 0)
  })
})
