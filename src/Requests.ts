/**
 * Pending requests to the other nodes of a namespace (`fetchSockets`, `serverSideEmitWithAck`, the
 * emitter's questions): one implementation for the adapter and the emitter. A request waits for one
 * answer from each node it counted, until its timeout; a node that leaves is no longer waited for.
 *
 * @since 0.2.0
 */
import * as Deferred from "effect/Deferred"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Protocol from "./Protocol.js"

const { MessageType } = Protocol

/** The type of the answers a request collects. */
export type AnswerType =
  typeof MessageType.FETCH_SOCKETS_RESPONSE | typeof MessageType.SERVER_SIDE_EMIT_RESPONSE

/** What one answer adds to the result: a node's sockets, or its one value. */
export type AnswerOf<T extends AnswerType> = T extends typeof MessageType.FETCH_SOCKETS_RESPONSE
  ? Protocol.SocketDescription
  : unknown

/** What a request collected: the answers, and how many nodes did not answer. */
export interface RequestResult<A> {
  readonly responses: ReadonlyArray<A>
  /** Nodes that did not answer before the timeout (or before `close`). */
  readonly missing: number
}

/** What a request needs. */
export interface RequestOptions<T extends AnswerType, E, R> {
  /** The type of the answers it collects. */
  readonly answer: T
  /** The nodes it waits for: one answer each. None: the request ends at once, unsent. */
  readonly nodes: ReadonlyArray<string>
  readonly timeout: Duration.Duration
  /** Sends the question; answers are recognised by this `requestId`. */
  readonly send: (requestId: string) => Effect.Effect<void, E, R>
}

/** A request as {@link Requests.unsafeRequest} takes it: plain callbacks, no fiber. */
export interface UnsafeRequestOptions<T extends AnswerType> {
  readonly answer: T
  readonly nodes: ReadonlyArray<string>
  readonly timeoutMillis: number
  /** Sends the question (synchronously: a publish that reports its own failures). */
  readonly send: (requestId: string) => void
}

interface Pending {
  readonly answer: AnswerType
  readonly missing: Set<string>
  readonly responses: Array<unknown>
  /** Ends the wait: every node answered or left, or the requests were closed. */
  readonly settle: () => void
}

// socket.io-adapter's request ids are 16 hex digits too.
const randomId = () => crypto.randomUUID().replaceAll("-", "").slice(0, 16)

/** The pending requests of a node (or of an emitter). */
export class Requests {
  readonly #pending = new Map<string, Pending>()
  #closed = false

  /** How many requests are waiting. */
  get size(): number {
    return this.#pending.size
  }

  /**
   * Registers a request, sends it, and waits until every node answered or left, the timeout, or
   * `close`; it is forgotten when it ends, however it ends. Fails only when `send` fails.
   */
  request<T extends AnswerType, E, R>(
    options: RequestOptions<T, E, R>,
  ): Effect.Effect<RequestResult<AnswerOf<T>>, E, R> {
    return Effect.suspend(() => {
      if (options.nodes.length === 0 || this.#closed) {
        return Effect.succeed({ responses: [], missing: this.#closed ? options.nodes.length : 0 })
      }
      const requestId = randomId()
      const done = Deferred.makeUnsafe<void>()
      const pending: Pending = {
        answer: options.answer,
        missing: new Set(options.nodes),
        responses: [],
        settle: () => void Deferred.doneUnsafe(done, Exit.void),
      }
      this.#pending.set(requestId, pending)
      return options.send(requestId).pipe(
        Effect.andThen(Deferred.await(done).pipe(Effect.timeout(options.timeout), Effect.ignore)),
        Effect.map(() => ({
          responses: pending.responses as Array<AnswerOf<T>>,
          missing: pending.missing.size,
        })),
        Effect.ensuring(Effect.sync(() => this.#pending.delete(requestId))),
      )
    })
  }

  /**
   * The same request with plain callbacks and a `setTimeout`, for the adapter's own calls when no
   * tracer wants their spans: a fiber, a `Deferred` and a forked timeout per request cost more
   * CPU than the rest of a round trip (measured with `npm run bench`, `serverSideEmitWithAck`).
   * `done` is called once, never synchronously.
   */
  unsafeRequest<T extends AnswerType>(
    options: UnsafeRequestOptions<T>,
    done: (result: RequestResult<AnswerOf<T>>) => void,
  ): void {
    if (options.nodes.length === 0 || this.#closed) {
      const missing = this.#closed ? options.nodes.length : 0
      return queueMicrotask(() => done({ responses: [], missing }))
    }
    const requestId = randomId()
    let timer: ReturnType<typeof setTimeout> | undefined
    const pending: Pending = {
      answer: options.answer,
      missing: new Set(options.nodes),
      responses: [],
      settle: () => {
        clearTimeout(timer)
        this.#pending.delete(requestId)
        done({
          responses: pending.responses as Array<AnswerOf<T>>,
          missing: pending.missing.size,
        })
      },
    }
    this.#pending.set(requestId, pending)
    timer = setTimeout(pending.settle, options.timeoutMillis)
    options.send(requestId)
  }

  /** An answer from another node: counted once per node it waits for, ignored otherwise. */
  answer(message: Protocol.Answer): void {
    const pending = this.#pending.get(message.data.requestId)
    if (pending === undefined || pending.answer !== message.type) return
    if (!pending.missing.delete(message.uid)) return
    if (message.type === MessageType.FETCH_SOCKETS_RESPONSE) {
      pending.responses.push(...message.data.sockets)
    } else {
      pending.responses.push(message.data.packet)
    }
    if (pending.missing.size === 0) pending.settle()
  }

  /**
   * Whether a notification is worth fetching and delivering: anything but an answer, and answers
   * to our own pending requests (answers to other nodes' requests travel on the same channel).
   */
  wanted(type: number, requestId: string | undefined): boolean {
    return requestId === undefined || !Protocol.isAnswer(type) || this.#pending.has(requestId)
  }

  /** A node left (or was found down): no request waits for it any more. */
  forget(uid: string): void {
    for (const pending of [...this.#pending.values()]) {
      if (pending.missing.delete(uid) && pending.missing.size === 0) pending.settle()
    }
  }

  /** Ends every pending request with the answers it has; later requests end at once. */
  close(): void {
    this.#closed = true
    for (const pending of [...this.#pending.values()]) pending.settle()
  }
}
