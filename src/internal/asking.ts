/**
 * The requests a namespace node makes for socket.io-adapter: `fetchSockets` (this server's sockets
 * and the other nodes') and `serverSideEmit` with an acknowledgement (one answer per node), each in
 * a span, answered through `Requests`, ended by the answers, a timeout or the node's close.
 */
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type { BroadcastOptions } from "socket.io-adapter"
import type * as AdapterConfig from "../AdapterConfig.js"
import type { Local } from "../Namespace.js"
import * as Protocol from "../Protocol.js"
import type { Requests } from "../Requests.js"
import type * as Codec from "../Codec.js"
import { privateChannelName } from "../Channel.js"
import type { Replies } from "./replies.js"
import type { Runner } from "./runner.js"

const { MessageType } = Protocol

/**
 * What a request of a node needs, and its answers to other nodes' requests; the node's receiving
 * side (`internal/inbound.ts`) is built from the same (requests, publish, closed, replies).
 */
export interface Asking {
  readonly nsp: string
  readonly runner: Runner
  readonly local: Local
  readonly config: AdapterConfig.ClusterConfig
  readonly requests: Requests
  /** The other nodes of the namespace now: one answer is awaited from each. */
  readonly nodes: () => ReadonlyArray<string>
  /** Publishes on the namespace's channel; never rejects. */
  readonly publish: (body: Protocol.Body) => Promise<void>
  /** Whether the node closed: a request that ends unanswered then says so. */
  readonly closed: () => boolean
  /**
   * Whether requests run in spans (a tracer is installed, or the runtime is not up yet); else they
   * skip the fibers, as publishes do (see `Outbox`).
   */
  readonly traced: () => boolean
  /**
   * Whether the node listens on its private channel now: its requests then ask for their answers
   * there (see `internal/replies.ts`).
   */
  readonly answersHere: () => boolean
  /** The other nodes' requests delivered here that want their answers on a private channel. */
  readonly replies: Replies
  /** Publishes a message of this node on another channel of its namespace's server. */
  readonly sendOn: (channel: string, wire: Codec.WireMessage) => Promise<void>
  readonly uid: string
}

/**
 * Answers another node's request (socket.io-adapter's `doPublishResponse`): on that node's private
 * channel when its request asked for it (see `internal/replies.ts`), else on the namespace's
 * channel. Never rejects.
 */
export const answer = (asking: Asking, uid: string, response: Protocol.Body): Promise<void> => {
  const requestId = (response as { readonly data?: { readonly requestId?: unknown } }).data
    ?.requestId
  if (asking.closed() || !asking.replies.take(requestId)) return asking.publish(response)
  const wire = Protocol.message(asking.uid, asking.nsp, response)
  return asking.sendOn(privateChannelName(asking.config.channelPrefix, uid), wire)
}

// The mark of a request whose answers may come on the asker's private channel.
const replyOf = (asking: Asking): { readonly reply?: 1 } =>
  asking.answersHere() ? { reply: 1 } : {}

/** An acknowledgement as socket.io-adapter passes it last to `serverSideEmit`. */
type Acknowledgement = (error: Error | null, responses: ReadonlyArray<unknown>) => void

/** This server's matching sockets and the other nodes'; rejects when a node did not answer. */
export const fetchSockets = (asking: Asking, opts: BroadcastOptions): Promise<Array<unknown>> => {
  if (!asking.traced()) return fetchDirect(asking, opts)
  return asking.runner.runPromiseExit(fetchAll(asking, opts)).then((exit) => {
    if (Exit.isFailure(exit)) throw failure(exit.cause)
    if (exit.value.missing > 0) throw unanswered(asking, exit.value.missing)
    return exit.value.sockets
  })
}

/** A server-side event for the other nodes; with an acknowledgement last, collects their answers. */
export const serverSideEmit = (asking: Asking, packet: Array<unknown>): void => {
  const ack = typeof packet.at(-1) === "function" ? (packet.pop() as Acknowledgement) : undefined
  // Socket.IO gives the event's name first.
  const args = packet as unknown as Protocol.ServerSidePacket
  if (ack === undefined)
    return void asking.publish({ type: MessageType.SERVER_SIDE_EMIT, data: { packet: args } })
  if (!asking.traced()) {
    return asking.requests.unsafeRequest(
      {
        answer: MessageType.SERVER_SIDE_EMIT_RESPONSE,
        nodes: asking.nodes(),
        timeoutMillis: Duration.toMillis(asking.config.requestsTimeout),
        send: (requestId) =>
          asking.publish({
            type: MessageType.SERVER_SIDE_EMIT,
            data: { requestId, packet: args },
            ...replyOf(asking),
          }),
      },
      ({ missing, responses }) => ack(missing > 0 ? unanswered(asking, missing) : null, responses),
    )
  }
  void asking.runner.runPromiseExit(emitWithAck(asking, args)).then((exit) => {
    if (Exit.isFailure(exit)) return ack(failure(exit.cause), [])
    const { missing, responses } = exit.value
    ack(missing > 0 ? unanswered(asking, missing) : null, responses)
  })
}

// What a node asks the others for `fetchSockets`.
const fetchQuestion = (
  asking: Asking,
  opts: BroadcastOptions,
  requestId: string,
): Protocol.Body => ({
  type: MessageType.FETCH_SOCKETS,
  data: { opts: Protocol.encodeOpts(opts), requestId },
  ...replyOf(asking),
})

const localOnly = (opts: BroadcastOptions): BroadcastOptions => ({
  rooms: opts.rooms,
  except: opts.except,
  flags: { local: true },
})

// Without spans: the local sockets, then one request with a timer, no fiber.
const fetchDirect = async (asking: Asking, opts: BroadcastOptions): Promise<Array<unknown>> => {
  const here = await asking.local.fetchSockets(localOnly(opts))
  if (opts.flags?.local) return here
  const timeout = opts.flags?.timeout
  return new Promise((resolve, reject) =>
    asking.requests.unsafeRequest(
      {
        answer: MessageType.FETCH_SOCKETS_RESPONSE,
        nodes: asking.nodes(),
        timeoutMillis: timeout ?? Duration.toMillis(asking.config.requestsTimeout),
        send: (requestId) => asking.publish(fetchQuestion(asking, opts, requestId)),
      },
      ({ missing, responses }) =>
        missing > 0 ? reject(unanswered(asking, missing)) : resolve([...here, ...responses]),
    ),
  )
}

const fetchAll = Effect.fn("PostgresAdapter.fetchSockets")(function* (
  asking: Asking,
  opts: BroadcastOptions,
) {
  const here = yield* Effect.tryPromise(() => asking.local.fetchSockets(localOnly(opts)))
  if (opts.flags?.local) return { sockets: here, missing: 0 }
  const timeout = opts.flags?.timeout
  const { responses, missing } = yield* asking.requests.request({
    answer: MessageType.FETCH_SOCKETS_RESPONSE,
    nodes: asking.nodes(),
    timeout: timeout === undefined ? asking.config.requestsTimeout : Duration.millis(timeout),
    send: (requestId) => Effect.sync(() => asking.publish(fetchQuestion(asking, opts, requestId))),
  })
  yield* Effect.annotateCurrentSpan({ nsp: asking.nsp, missing })
  return { sockets: [...here, ...responses], missing }
})

const emitWithAck = Effect.fn("PostgresAdapter.serverSideEmitWithAck")(function* (
  asking: Asking,
  packet: Protocol.ServerSidePacket,
) {
  const result = yield* asking.requests.request({
    answer: MessageType.SERVER_SIDE_EMIT_RESPONSE,
    nodes: asking.nodes(),
    timeout: asking.config.requestsTimeout,
    send: (requestId) =>
      Effect.sync(() =>
        asking.publish({
          type: MessageType.SERVER_SIDE_EMIT,
          data: { requestId, packet },
          ...replyOf(asking),
        }),
      ),
  })
  yield* Effect.annotateCurrentSpan({ nsp: asking.nsp, missing: result.missing })
  return result
})

const unanswered = (asking: Asking, missing: number): Error =>
  new Error(
    asking.closed() ? "the adapter was closed" : `timeout reached: missing ${missing} responses`,
  )

// Interrupted: the runtime was disposed while the request waited (the adapter closed).
const failure = (cause: Cause.Cause<unknown>): Error => {
  if (Cause.hasInterruptsOnly(cause)) return new Error("the adapter was closed")
  const error = Cause.squash(cause)
  return error instanceof Error ? error : new Error(String(error))
}
