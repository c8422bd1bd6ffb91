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
import { broadcastChannel, channelName } from "./Channel.js"
import * as AdapterConfigModule from "./AdapterConfig.js"
import { AdapterConfig } from "./AdapterConfig.js"
import * as Database from "./Database.js"
import { ConfigError, PublishError } from "./Errors.js"
import * as Heartbeat from "./Heartbeat.js"
import { makeInbox, verifierOf } from "./internal/inbox.js"
import * as Listener from "./Listener.js"
import * as Placement from "./Placement.js"
import * as Protocol from "./Protocol.js"
import * as Publisher from "./Publisher.js"
import { type AnswerType, type RequestResult, Requests } from "./Requests.js"

export type { RequestResult } from "./Requests.js"

const { EMITTER_UID, MessageType } = Protocol

/** Which sockets a message targets. */
export interface Target {
  readonly rooms: ReadonlyArray<string>
  readonly except: ReadonlyArray<string>
  readonly flags: { readonly volatile?: boolean; readonly compress?: boolean }
}

/** A socket as a server describes it in a `fetchSockets` answer. */
export type SocketDescription = Protocol.SocketDescription

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
     * The same without a fiber: queued at once, so that messages go out in call order whatever
     * the scheduling of fibers (the facade's path); `done` is called once with the outcome.
     */
    readonly unsafePublish: (
      nsp: string,
      message: { readonly type: number; readonly data?: unknown },
      done: (error: PublishError | undefined) => void,
    ) => void
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
    /** `broadcastStored` without a fiber, queued at once (see `unsafePublish`). */
    readonly unsafeBroadcastStored: (
      nsp: string,
      packet: { readonly type: number; readonly data: ReadonlyArray<unknown> },
      target: Target,
      done: (error: PublishError | undefined) => void,
    ) => void
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

/**
 * The channel a message of namespace `nsp` goes to: its namespace's, or in the dynamic
 * subscription modes, for a broadcast to one room (without acknowledgements), that room's.
 */
export const publishChannel = (
  config: AdapterConfigModule.ClusterConfig,
  nsp: string,
  message: { readonly type: number; readonly data?: any },
): string =>
  (message.type === MessageType.BROADCAST &&
    message.data?.requestId === undefined &&
    broadcastChannel(config, nsp, message.data?.opts?.rooms ?? [])) ||
  channelName(config.channelPrefix, nsp)

/** Sends a message of namespace `nsp` as the emitter. */
type Send = (
  nsp: string,
  message: { readonly type: number; readonly data?: unknown },
) => Effect.Effect<void, PublishError>

// Servers answer an INITIAL_HEARTBEAT at once. The first request waits until its own heartbeat came
// back through PostgreSQL (at most DISCOVERY_MAX or requestsTimeout), which took E; the servers'
// answers take about as long again: it then waits until no new server showed up for 2E (at least
// DISCOVERY_QUIET). A fixed window was too short on a busy machine (requests missed servers).
const DISCOVERY_QUIET = Duration.millis(50)
const DISCOVERY_MAX = Duration.seconds(2)

/** Builds the service; namespaces are watched lazily, for the lifetime of the layer. */
export const make = Effect.gen(function* () {
  const config = yield* AdapterConfig
  const publisher = yield* Publisher.Publisher
  const requests = new Requests()

  const channelOf = (nsp: string, message: { readonly type: number; readonly data?: any }) =>
    publishChannel(config, nsp, message)

  const send: Send = (nsp, message) =>
    publisher.publish(channelOf(nsp, message), { ...message, uid: EMITTER_UID, nsp })

  const unsafePublish = (
    nsp: string,
    message: { readonly type: number; readonly data?: unknown },
    done: (error: PublishError | undefined) => void,
  ) => publisher.unsafePublish(channelOf(nsp, message), { ...message, uid: EMITTER_UID, nsp }, done)

  const unsafeBroadcastStored = (
    nsp: string,
    packet: { readonly type: number; readonly data: ReadonlyArray<unknown> },
    target: Target,
    done: (error: PublishError | undefined) => void,
  ) =>
    publisher.unsafeStore(
      broadcastChannel(config, nsp, target.rooms) ?? channelName(config.channelPrefix, nsp),
      {
        uid: EMITTER_UID,
        nsp,
        type: MessageType.BROADCAST,
        data: { packet: { ...packet, nsp }, opts: target },
      },
      { nsp, rooms: target.rooms, except: target.except, data: packet.data },
      done,
    )

  const broadcastStored = (
    nsp: string,
    packet: { readonly type: number; readonly data: ReadonlyArray<unknown> },
    target: Target,
  ) =>
    Effect.callback<void, PublishError>((resume) =>
      unsafeBroadcastStored(nsp, packet, target, (error) =>
        resume(error === undefined ? Effect.void : Effect.fail(error)),
      ),
    )

  const members = yield* watchNamespaces(requests, send)

  // Asks every server of the namespace known once it was watched.
  const ask = <T extends AnswerType>(
    nsp: string,
    answer: T,
    question: (requestId: string) => Protocol.Body,
  ) =>
    Effect.flatMap(members(nsp), (membership) =>
      requests.request({
        answer,
        nodes: membership.nodes(),
        timeout: config.requestsTimeout,
        send: (requestId) => send(nsp, question(requestId)),
      }),
    )

  return ClusterEmitter.of({
    publish: Effect.fn("ClusterEmitter.publish")(send),
    unsafePublish,
    broadcastStored: Effect.fn("ClusterEmitter.broadcastStored")(broadcastStored),
    unsafeBroadcastStored,
    fetchSockets: Effect.fn("ClusterEmitter.fetchSockets")((nsp: string, target: Target) =>
      ask(nsp, MessageType.FETCH_SOCKETS_RESPONSE, (requestId) => ({
        type: MessageType.FETCH_SOCKETS,
        data: {
          opts: { rooms: [...target.rooms], except: [...target.except], flags: target.flags },
          requestId,
        },
      })),
    ),
    serverSideEmitWithAck: Effect.fn("ClusterEmitter.serverSideEmitWithAck")(
      (nsp: string, packet: ReadonlyArray<unknown>) =>
        ask(nsp, MessageType.SERVER_SIDE_EMIT_RESPONSE, (requestId) => ({
          type: MessageType.SERVER_SIDE_EMIT,
          // An empty packet (no event name) is skipped by every server.
          data: { requestId, packet: [...packet] as unknown as Protocol.ServerSidePacket },
        })),
    ),
  })
})

/**
 * The emitter's view of the namespaces it asks: from its first request on, it listens on the
 * namespace's channel (the servers' heartbeats and answers) for the lifetime of the layer.
 * Resolves with the namespace's members once the servers' answers to its heartbeat went quiet.
 */
const watchNamespaces = Effect.fnUntraced(function* (requests: Requests, send: Send) {
  const config = yield* AdapterConfig
  const listener = yield* Listener.Listener
  const heartbeat = yield* Heartbeat.Heartbeat
  const store = yield* AttachmentStore.AttachmentStore
  const scope = yield* Effect.scope
  // Work started from callbacks runs with the application's services (logger included).
  const runFork = Effect.runForkWith(yield* Effect.context<never>())
  const watches = new Map<string, Deferred.Deferred<Heartbeat.Membership, PublishError>>()

  const watchIn = (nsp: string) =>
    Effect.gen(function* () {
      const echoed = yield* Deferred.make<void>()
      const membership = yield* heartbeat.track({
        nsp,
        publishHeartbeat: Effect.void,
        onNodeDown: (uid) => requests.forget(uid),
        member: false,
      })
      const channel = channelName(config.channelPrefix, nsp)
      const receive = makeInbox({
        store,
        verifier: verifierOf(config, channel, (line) =>
          runFork(Effect.logWarning(line).pipe(Effect.annotateLogs({ module: "ClusterEmitter" }))),
        ),
        onSkipped: () => {},
        // Servers' messages (and our own INITIAL_HEARTBEAT coming back); of the answers, only
        // those to our own requests.
        wanted: (header) =>
          (header.uid !== EMITTER_UID || header.type === MessageType.INITIAL_HEARTBEAT) &&
          requests.wanted(header.type, header.requestId),
        deliver: (message) => {
          if (message.uid === EMITTER_UID) return Deferred.doneUnsafe(echoed, Exit.void)
          membership.receive(message)
          if (message.type === MessageType.ADAPTER_CLOSE) {
            membership.remove(message.uid)
            requests.forget(message.uid)
          } else if (
            message.type === MessageType.FETCH_SOCKETS_RESPONSE ||
            message.type === MessageType.SERVER_SIDE_EMIT_RESPONSE
          ) {
            requests.answer(message)
          }
        },
      })
      const listening = yield* Deferred.make<void>()
      yield* listener.subscribe(channel, {
        onNotification: receive,
        onListen: () => {
          membership.resync()
          runFork(send(nsp, { type: MessageType.INITIAL_HEARTBEAT }).pipe(Effect.ignore))
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
      return membership
    })

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

  return (nsp: string): Effect.Effect<Heartbeat.Membership, PublishError> =>
    Effect.suspend(() => {
      const existing = watches.get(nsp)
      if (existing !== undefined) return Deferred.await(existing)
      const created = Deferred.makeUnsafe<Heartbeat.Membership, PublishError>()
      watches.set(nsp, created)
      return startWatch(nsp).pipe(
        Effect.exit,
        Effect.flatMap((exit) => {
          if (Exit.isFailure(exit)) watches.delete(nsp)
          return Deferred.done(created, exit).pipe(Effect.andThen(exit))
        }),
      )
    })
})

/** The ClusterEmitter over its own Publisher, Listener and Heartbeat; needs `AdapterConfig`, `Database`. */
export const layer: Layer.Layer<ClusterEmitter, never, AdapterConfig | Database.Database> =
  Layer.effect(ClusterEmitter, make).pipe(
    Layer.provide(
      Heartbeat.layer.pipe(
        Layer.provideMerge(Publisher.layer.pipe(Layer.provideMerge(Listener.layer))),
        Layer.provideMerge(AttachmentStore.layer),
      ),
    ),
  )

/**
 * The ClusterEmitter over several PostgreSQL servers, placed as `createAdapter(pools)` places the
 * namespaces (`Placement`): one emitter per server (it connects once a namespace of that server is
 * used), and each call goes to the one that holds its namespace's channel. One pool: the same as
 * {@link layer} over it. A bad option or pool list fails with a `ConfigError` naming it.
 */
export const layerPools = (
  pools: Placement.Pools,
  options?: AdapterConfigModule.AdapterOptions,
): Layer.Layer<ClusterEmitter, ConfigError> =>
  Layer.effect(
    ClusterEmitter,
    Effect.gen(function* () {
      const servers = yield* Effect.try({
        try: () => Placement.decodePoolsSync(pools, "ClusterEmitter.layerPools(pools, options)"),
        catch: (e) =>
          e instanceof ConfigError ? e : new ConfigError({ option: "pools", message: String(e) }),
      })
      const config = yield* Effect.fromResult(AdapterConfigModule.decode(options))
      const emitters: Array<ClusterEmitter["Service"]> = []
      for (const { pool } of servers) {
        const built = yield* Layer.build(
          layer.pipe(
            Layer.provide(
              Layer.merge(Layer.succeed(AdapterConfig, config), Database.layerPool(pool)),
            ),
          ),
        )
        emitters.push(Context.get(built, ClusterEmitter))
      }
      const placement = Placement.make(servers.map((server) => server.name))
      const of = (nsp: string) =>
        emitters[placement.indexOf(channelName(config.channelPrefix, nsp))]!
      // With rooms placed apart (`roomPlacement`), a broadcast to one room goes to its server.
      const apart = Placement.roomsApart(servers.length, config)
      const forMessage = (nsp: string, message: { readonly type: number; readonly data?: any }) =>
        apart ? emitters[placement.indexOf(publishChannel(config, nsp, message))]! : of(nsp)
      return ClusterEmitter.of({
        publish: (nsp, message) => forMessage(nsp, message).publish(nsp, message),
        unsafePublish: (nsp, message, done) =>
          forMessage(nsp, message).unsafePublish(nsp, message, done),
        broadcastStored: (nsp, packet, target) => of(nsp).broadcastStored(nsp, packet, target),
        unsafeBroadcastStored: (nsp, packet, target, done) =>
          of(nsp).unsafeBroadcastStored(nsp, packet, target, done),
        fetchSockets: (nsp, target) => of(nsp).fetchSockets(nsp, target),
        serverSideEmitWithAck: (nsp, packet) => of(nsp).serverSideEmitWithAck(nsp, packet),
      })
    }),
  )
