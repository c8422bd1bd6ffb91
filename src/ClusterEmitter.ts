/**
 * The emitter as an Effect service: sends to the cluster's clients from a process that runs no
 * Socket.IO server, and, beyond `@socket.io/postgres-emitter`, asks the servers questions
 * (`fetchSockets`, `serverSideEmit` with acknowledgement) by listening for their answers.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as AttachmentStore from "./AttachmentStore.js"
import { channelName } from "./Channel.js"
import * as Codec from "./Codec.js"
import { Config } from "./Config.js"
import type { Database } from "./Database.js"
import { PublishError } from "./Errors.js"
import * as Heartbeat from "./Heartbeat.js"
import { makeInbox } from "./internal/inbox.js"
import * as Listener from "./Listener.js"
import * as Publisher from "./Publisher.js"

const { MessageType } = Codec

/** Which sockets a message targets. */
export interface Target {
  readonly rooms: ReadonlyArray<string>
  readonly except: ReadonlyArray<string>
  readonly flags: { readonly volatile?: boolean; readonly compress?: boolean }
}

/** A socket as a server describes it in a `fetchSockets` answer. */
export interface SocketDescription {
  readonly id: string
  readonly handshake: Record<string, unknown>
  readonly rooms: ReadonlyArray<string>
  readonly data: unknown
}

/** What a request collected: the answers, and how many servers did not answer in time. */
export interface RequestResult<A> {
  readonly responses: ReadonlyArray<A>
  readonly missing: number
}

/** The ClusterEmitter service. */
export class ClusterEmitter extends Context.Service<
  ClusterEmitter,
  {
    /** Publishes a message of namespace `nsp` as the emitter (uid `"emitter"`). */
    readonly publish: (
      nsp: string,
      message: { readonly type: number; readonly data?: unknown },
    ) => Effect.Effect<void, PublishError>
    /**
     * Broadcasts a packet and stores it for connection state recovery, so that clients that are
     * disconnected get it when they come back (the servers must run with `connectionStateRecovery`
     * and have created the recovery tables).
     */
    readonly broadcastStored: (
      nsp: string,
      packet: { readonly type: number; readonly data: ReadonlyArray<unknown> },
      target: Target,
    ) => Effect.Effect<void, PublishError>
    /** Asks every server of `nsp` for its matching sockets. */
    readonly fetchSockets: (
      nsp: string,
      target: Target,
    ) => Effect.Effect<RequestResult<SocketDescription>, PublishError>
    /** Sends a server-side event and collects one answer per server. */
    readonly serverSideEmitWithAck: (
      nsp: string,
      packet: ReadonlyArray<unknown>,
    ) => Effect.Effect<RequestResult<unknown>, PublishError>
  }
>()("socket.io-postgres-effect/ClusterEmitter") {}

interface Pending {
  readonly missing: Set<string>
  readonly responses: Array<unknown>
  readonly flatten: boolean
  readonly done: Deferred.Deferred<void>
}

interface Watch {
  readonly membership: Heartbeat.Membership
}

// Servers answer an INITIAL_HEARTBEAT at once. The first request waits until its own heartbeat came
// back through PostgreSQL (at most DISCOVERY_MAX or requestsTimeout), which took E; the servers'
// answers take about as long again: it then waits until no new server showed up for 2E (at least
// DISCOVERY_QUIET). A fixed window was too short on a busy machine (requests missed servers).
const DISCOVERY_QUIET = Duration.millis(50)
const DISCOVERY_MAX = Duration.seconds(2)

/** Builds the service; namespaces are watched lazily, for the lifetime of the layer. */
export const make = Effect.gen(function* () {
  const config = yield* Config
  const publisher = yield* Publisher.Publisher
  const listener = yield* Listener.Listener
  const heartbeat = yield* Heartbeat.Heartbeat
  const store = yield* AttachmentStore.AttachmentStore
  const scope = yield* Effect.scope
  // Work started from callbacks runs with the application's services (logger included).
  const runFork = Effect.runForkWith(yield* Effect.context<never>())
  const pending = new Map<string, Pending>()
  const watches = new Map<string, Deferred.Deferred<Watch, PublishError>>()

  const publish = (nsp: string, message: { readonly type: number; readonly data?: unknown }) =>
    publisher.publish(channelName(config.channelPrefix, nsp), {
      ...message,
      uid: Codec.EMITTER_UID,
      nsp,
    })

  const broadcastStored = (
    nsp: string,
    packet: { readonly type: number; readonly data: ReadonlyArray<unknown> },
    target: Target,
  ) =>
    Effect.callback<void, PublishError>((resume) =>
      publisher.unsafeStore(
        channelName(config.channelPrefix, nsp),
        {
          uid: Codec.EMITTER_UID,
          nsp,
          type: MessageType.BROADCAST,
          data: { packet: { ...packet, nsp }, opts: target },
        },
        { nsp, rooms: target.rooms, except: target.except, data: packet.data },
        (error) => resume(error === undefined ? Effect.void : Effect.fail(error)),
      ),
    )

  const complete = (requestId: string, request: Pending) => {
    pending.delete(requestId)
    Deferred.doneUnsafe(request.done, Exit.void)
  }

  const forget = (uid: string) => {
    for (const [requestId, request] of pending) {
      if (request.missing.delete(uid) && request.missing.size === 0) complete(requestId, request)
    }
  }

  const handle = (watch: () => Watch | undefined) => (message: Codec.WireMessage) => {
    if (message.uid === Codec.EMITTER_UID) return
    if (Codec.validateMessage(message) !== undefined) return
    const membership = watch()?.membership
    membership?.seen(message.uid)
    if (message.type === MessageType.ADAPTER_CLOSE) {
      membership?.remove(message.uid)
      return forget(message.uid)
    }
    if (
      message.type !== MessageType.FETCH_SOCKETS_RESPONSE &&
      message.type !== MessageType.SERVER_SIDE_EMIT_RESPONSE
    ) {
      return
    }
    const data = message.data as { requestId: string; sockets?: Array<unknown>; packet?: unknown }
    const request = pending.get(data.requestId)
    if (request === undefined || !request.missing.delete(message.uid)) return
    if (request.flatten) request.responses.push(...(data.sockets ?? []))
    else request.responses.push(data.packet)
    if (request.missing.size === 0) complete(data.requestId, request)
  }

  // In a scope of its own: a watch that failed (e.g. PostgreSQL down) must not leave its
  // subscription and membership behind, one more per failed request, until the layer closes.
  const startWatch = (nsp: string) =>
    Effect.gen(function* () {
      const child = yield* Scope.fork(scope, "sequential")
      return yield* watchIn(nsp).pipe(
        Scope.provide(child),
        Effect.onExit((exit) => (Exit.isFailure(exit) ? Scope.close(child, exit) : Effect.void)),
      )
    })

  const watchIn = (nsp: string) =>
    Effect.gen(function* () {
      let current: Watch | undefined
      const echoed = yield* Deferred.make<void>()
      const deliver = handle(() => current)
      const receive = makeInbox({
        store,
        deliver: (message) => {
          if (message.uid === Codec.EMITTER_UID && message.type === MessageType.INITIAL_HEARTBEAT) {
            Deferred.doneUnsafe(echoed, Exit.void)
          }
          deliver(message)
        },
        onSkipped: () => {},
        // Servers' messages (and our own INITIAL_HEARTBEAT coming back); of the answers, only
        // those to our own requests.
        wanted: (notification) =>
          (notification.uid !== Codec.EMITTER_UID ||
            notification.type === MessageType.INITIAL_HEARTBEAT) &&
          (notification.requestId === undefined ||
            pending.has(notification.requestId) ||
            (notification.type !== MessageType.FETCH_SOCKETS_RESPONSE &&
              notification.type !== MessageType.SERVER_SIDE_EMIT_RESPONSE)),
      })
      const listening = yield* Deferred.make<void>()
      const membership = yield* heartbeat.track({
        publishHeartbeat: Effect.void,
        onNodeDown: forget,
      })
      current = { membership }
      yield* listener.subscribe(channelName(config.channelPrefix, nsp), {
        onNotification: receive,
        onListen: () => {
          runFork(publish(nsp, { type: MessageType.INITIAL_HEARTBEAT }).pipe(Effect.ignore))
          Deferred.doneUnsafe(listening, Exit.void)
        },
      })
      yield* Deferred.await(listening).pipe(
        Effect.timeoutOrElse({
          duration: config.requestsTimeout,
          orElse: () =>
            Effect.fail(
              new PublishError({
                reason: "Timeout",
                message: `could not listen for the servers' answers within the requestsTimeout`,
              }),
            ),
        }),
      )
      // Wait for the servers' answers to the INITIAL_HEARTBEAT to go quiet.
      const now = Effect.clockWith((clock) => clock.currentTimeMillis)
      const started = yield* now
      yield* Deferred.await(echoed).pipe(
        Effect.timeout(Duration.min(DISCOVERY_MAX, config.requestsTimeout)),
        Effect.ignore,
      )
      const echo = Duration.millis((yield* now) - started)
      const quiet = Duration.min(
        DISCOVERY_MAX,
        Duration.max(DISCOVERY_QUIET, Duration.times(echo, 2)),
      )
      let known = -1
      while (membership.nodes().length !== known) {
        known = membership.nodes().length
        yield* Effect.sleep(quiet)
      }
      return current
    })

  const watch = (nsp: string) =>
    Effect.suspend(() => {
      const existing = watches.get(nsp)
      if (existing !== undefined) return Deferred.await(existing)
      const created = Deferred.makeUnsafe<Watch, PublishError>()
      watches.set(nsp, created)
      return startWatch(nsp).pipe(
        Effect.exit,
        Effect.flatMap((exit) => {
          if (Exit.isFailure(exit)) watches.delete(nsp)
          return Deferred.done(created, exit).pipe(Effect.andThen(exit))
        }),
      )
    })

  const request = <A>(
    nsp: string,
    type: typeof MessageType.FETCH_SOCKETS | typeof MessageType.SERVER_SIDE_EMIT,
    data: (requestId: string) => Record<string, unknown>,
  ) =>
    Effect.gen(function* () {
      const { membership } = yield* watch(nsp)
      const nodes = membership.nodes()
      if (nodes.length === 0) return { responses: [], missing: 0 } as RequestResult<A>
      const requestId = crypto.randomUUID()
      const entry: Pending = {
        missing: new Set(nodes),
        responses: [],
        flatten: type === MessageType.FETCH_SOCKETS,
        done: Deferred.makeUnsafe<void>(),
      }
      pending.set(requestId, entry)
      yield* publish(nsp, { type, data: data(requestId) }).pipe(
        Effect.andThen(
          Deferred.await(entry.done).pipe(Effect.timeout(config.requestsTimeout), Effect.ignore),
        ),
        Effect.ensuring(Effect.sync(() => pending.delete(requestId))),
      )
      return { responses: entry.responses as Array<A>, missing: entry.missing.size }
    })

  return ClusterEmitter.of({
    publish,
    broadcastStored,
    fetchSockets: (nsp, target) =>
      request<SocketDescription>(nsp, MessageType.FETCH_SOCKETS, (requestId) => ({
        opts: { rooms: [...target.rooms], except: [...target.except], flags: target.flags },
        requestId,
      })),
    serverSideEmitWithAck: (nsp, packet) =>
      request<unknown>(nsp, MessageType.SERVER_SIDE_EMIT, (requestId) => ({
        requestId,
        packet: [...packet],
      })),
  })
})

/** The ClusterEmitter over its own Publisher, Listener and Heartbeat; needs `Config`, `Database`. */
export const layer: Layer.Layer<ClusterEmitter, never, Config | Database> = Layer.effect(
  ClusterEmitter,
  make,
).pipe(
  Layer.provide(
    Layer.mergeAll(Publisher.layer, Listener.layer, Heartbeat.layer).pipe(
      Layer.provideMerge(AttachmentStore.layer),
    ),
  ),
)
