/**
 * The facade: a socket.io-adapter `ClusterAdapter` whose publishing, listening and membership run
 * as Effects on one `ManagedRuntime` per `createAdapter` call, shared by every namespace.
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as ManagedRuntime from "effect/ManagedRuntime"
import type pg from "pg"
import {
  Adapter,
  type BroadcastOptions,
  ClusterAdapter,
  type ClusterMessage,
  type ClusterResponse,
  type PrivateSessionId,
  type Room,
  type Session,
} from "socket.io-adapter"
import { AttachmentStore } from "./AttachmentStore.js"
import { channelName } from "./Channel.js"
import * as Cluster from "./Cluster.js"
import * as Codec from "./Codec.js"
import * as Config from "./Config.js"
import * as Database from "./Database.js"
import { ErrorHandler } from "./Errors.js"
import { Heartbeat, type Membership } from "./Heartbeat.js"
import { makeInbox } from "./internal/inbox.js"
import { Listener } from "./Listener.js"
import * as Metrics from "./Metrics.js"
import { Publisher } from "./Publisher.js"
import { isStorable, NOT_RESTORED, RecoveredDelivery } from "./recovery/Delivery.js"
import { SessionWriter } from "./recovery/SessionWriter.js"

const { MessageType } = Codec

/** Runs the adapter's effects: a `ManagedRuntime` (facade) or the caller's runtime (Effect apps). */
interface Runner {
  readonly runFork: <A, E>(effect: Effect.Effect<A, E, Cluster.Services>) => Fiber.Fiber<A, E>
  readonly runPromise: <A, E>(effect: Effect.Effect<A, E, Cluster.Services>) => Promise<A>
  readonly runPromiseExit: <A, E>(
    effect: Effect.Effect<A, E, Cluster.Services>,
  ) => Promise<Exit.Exit<A, E>>
}

/** What every namespace adapter of one `createAdapter` call shares. */
interface Shared {
  readonly config: Config.ClusterConfig
  readonly errorHandler: (error: Error) => void
  readonly acquire: () => Runner
  readonly release: () => Promise<void>
}

/** A pending `fetchSockets` or `serverSideEmitWithAck`: it waits for every node it counted. */
interface PendingRequest {
  readonly missing: Set<string>
  readonly responses: Array<unknown>
  readonly timer: ReturnType<typeof setTimeout>
  readonly settle: (error: Error | null) => void
}

// Logs at most one line per second per namespace for skipped notifications, with a count.
const makeSkipLogger = (log: (message: string) => void) => {
  let skipped = 0
  let last = 0
  return (reason: string) => {
    skipped++
    Metrics.malformedNotifications.updateUnsafe(1, Context.empty())
    const now = Date.now()
    if (now - last >= 1000) {
      log(`skipped ${skipped} malformed notification(s), last: ${reason}`)
      skipped = 0
      last = now
    }
  }
}

const encodeOptions = (opts: BroadcastOptions) => ({
  rooms: [...opts.rooms],
  except: [...(opts.except ?? [])],
  flags: opts.flags ?? {},
})

const randomId = () => crypto.randomUUID().replaceAll("-", "").slice(0, 16)

/** The `socket.io-adapter` adapter of one namespace, created by {@link createAdapter}. */
export class PostgresAdapter extends ClusterAdapter {
  /** The notification channel of this namespace. */
  readonly channel: string
  readonly #shared: Shared
  readonly #runtime: Runner
  readonly #requests = new Map<string, PendingRequest>()
  #publisher: Publisher["Service"] | undefined
  /** Publishes not settled yet; `close()` waits for them. */
  #pending = 0
  #slowPending = 0
  #drained: (() => void) | undefined
  #inbox: ((payload: string) => void) | undefined
  readonly #skip: (reason: string) => void
  #membership: Membership | undefined
  #fiber: Fiber.Fiber<never, never> | undefined
  #closed = false
  #listening: () => void = () => {}
  /** Resolves once this namespace's channel is listened on (first time). */
  readonly ready: Promise<void>
  readonly #selfPrefix: string
  /** Set when the server runs with `connectionStateRecovery`. */
  readonly #recovered: RecoveredDelivery | undefined
  /** Session writes (recovery only). */
  #sessions: SessionWriter | undefined
  #listenerPid: (() => number | undefined) | undefined

  /** Use {@link createAdapter}; constructed by Socket.IO for each namespace. */
  constructor(nsp: any, shared: Shared) {
    super(nsp)
    this.#shared = shared
    this.#runtime = shared.acquire()
    this.channel = channelName(shared.config.channelPrefix, nsp.name)
    this.#selfPrefix = `{"uid":${JSON.stringify(this.uid)},`
    this.#skip = makeSkipLogger((line) => this.#log("warning", line))
    this.ready = new Promise((resolve) => (this.#listening = resolve))
    const recovery = nsp.server?.opts?.connectionStateRecovery
    if (recovery) {
      const maxDisconnection = Duration.millis(recovery.maxDisconnectionDuration ?? 120_000)
      this.#sessions = new SessionWriter({
        nsp: nsp.name,
        maxDisconnection,
        timeout: shared.config.publishTimeout,
        run: (effect) => this.#runtime.runPromiseExit(effect),
        report: (exit) => {
          if (Exit.isFailure(exit) && !Cause.hasInterruptsOnly(exit.cause)) {
            this.#report(Cause.squash(exit.cause))
          }
        },
        socket: (sid) => this.nsp.sockets.get(sid),
        backendPid: () => this.#listenerPid?.(),
        begin: () => void this.#pending++,
        end: () => this.#settled(),
      })
      this.#recovered = new RecoveredDelivery({
        nsp: nsp.name,
        channel: this.channel,
        maxDisconnection,
        publishTimeout: shared.config.publishTimeout,
        requestsTimeout: shared.config.requestsTimeout,
        run: (effect) => this.#runtime.runPromiseExit(effect),
        report: (failure) => this.#report(failure),
        warn: (message) => this.#log("warning", message),
        onSkipped: (reason) => this.#skip(reason),
        begin: () => void this.#pending++,
        end: () => this.#settled(),
        published: () => this.#membership?.published(),
        deliver: (packet, opts) => Adapter.prototype.broadcast.call(this, packet, opts),
        onMessage: (message) => super.onMessage(message),
      })
    }
  }

  /** Starts listening on the namespace's channel and tracking the cluster's members. */
  override init(): void {
    if (this.#fiber !== undefined || this.#closed) return
    this.#fiber = this.#runtime.runFork(
      Effect.gen({ self: this }, function* () {
        const recovered = this.#recovered
        this.#publisher = yield* Publisher
        this.#inbox = makeInbox({
          store: yield* AttachmentStore,
          deliver: (message) => this.#handle(message),
          onSkipped: this.#skip,
          wanted: (notification) => this.#wanted(notification),
          ...(recovered === undefined
            ? {}
            : {
                announce: (offset: string) => recovered.sequencer.announce(BigInt(offset)),
                retract: (offset: string) => recovered.sequencer.retract(BigInt(offset)),
              }),
        })
        if (recovered !== undefined) yield* recovered.setup()
        const heartbeat = yield* Heartbeat
        const listener = yield* Listener
        this.#listenerPid = listener.unsafeBackendPid
        this.#membership = yield* heartbeat.track({
          publishHeartbeat: Effect.promise(() => this.#send({ type: MessageType.HEARTBEAT })),
          onNodeDown: (uid) => this.#removeNode(uid),
        })
        yield* listener.subscribe(this.channel, {
          onNotification: (payload) => this.#receive(payload),
          onListen: () => {
            // Announce ourselves only once we can hear the replies (and again after a reconnect).
            this.#send({ type: MessageType.INITIAL_HEARTBEAT })
            this.#listening()
            if (recovered !== undefined) {
              // A new LISTEN connection is a new backend: tie the live sessions to it.
              for (const sid of this.nsp.sockets.keys()) this.#sessions?.changed(sid)
              recovered.catchUp()
            }
          },
          onLost: () => recovered?.lost(),
        })
        return yield* Effect.never
      }).pipe(Effect.scoped, Effect.annotateLogs({ module: "Adapter", nsp: this.nsp.name })),
    )
  }

  /** Announces `ADAPTER_CLOSE`, waits for in-flight publishes, then releases everything. */
  override async close(): Promise<void> {
    if (this.#closed) return
    this.#send({ type: MessageType.ADAPTER_CLOSE })
    this.#closed = true
    this.#sessions?.close()
    this.#recovered?.close()
    if (this.#pending > 0) await new Promise<void>((resolve) => (this.#drained = resolve))
    for (const [requestId, request] of this.#requests) {
      this.#requests.delete(requestId)
      clearTimeout(request.timer)
      request.settle(new Error("the adapter was closed"))
    }
    if (this.#fiber !== undefined) await this.#runtime.runPromise(Fiber.interrupt(this.#fiber))
    await this.#shared.release()
  }

  /** Number of servers in this namespace's cluster, this one included. */
  override serverCount(): Promise<number> {
    return Promise.resolve(1 + (this.#membership?.nodes().length ?? 0))
  }

  // Local clients never wait for PostgreSQL: deliver here first, then publish. With recovery, a
  // stored packet needs its offset first: it is delivered when its statement returns.
  override async broadcast(packet: any, opts: BroadcastOptions): Promise<void> {
    if (opts.flags?.local) return Adapter.prototype.broadcast.call(this, packet, opts)
    const recovered = this.#recovered
    // With recovery, Socket.IO sends even `socket.emit` through here: not a cluster matter.
    const toLocalSocket =
      recovered !== undefined &&
      opts.rooms.size === 1 &&
      this.nsp.sockets.has(opts.rooms.values().next().value)
    const message = toLocalSocket
      ? undefined
      : { type: MessageType.BROADCAST, data: { packet, opts: encodeOptions(opts) } }
    if (recovered !== undefined && isStorable(packet, opts)) {
      return recovered.store(packet, opts, message && this.#wire(message))
    }
    if (message !== undefined) this.#send(message)
    // With recovery, after the stored packets sent before it.
    if (recovered !== undefined) {
      return recovered.sequencer.own(() => Adapter.prototype.broadcast.call(this, packet, opts))
    }
    Adapter.prototype.broadcast.call(this, packet, opts)
  }

  /** Saves a disconnected socket's session in PostgreSQL (recovery on); never rejects. */
  override persistSession(session: Omit<Session, "missedPackets">): void {
    if (this.#closed) return
    this.#sessions?.disconnected({ ...session, nsp: this.nsp.name })
  }

  // The session of a connected socket is written when it connects and when its rooms change, so
  // that it survives this server being killed: see `Recovery`.
  override addAll(id: string, rooms: Set<Room>): void {
    super.addAll(id, rooms)
    this.#sessions?.changed(id)
  }

  override del(id: string, room: Room): void {
    super.del(id, room)
    if (this.#sessions?.isLive(id)) this.#sessions.changed(id)
  }

  // A socket leaves for good (or was persisted just before): its live row goes.
  override delAll(id: string): void {
    super.delAll(id)
    this.#sessions?.left(id)
  }

  /**
   * Restores a session from any server of the cluster, with the packets it missed; `null` when
   * it is unknown, expired, its offset is unknown or too old, or PostgreSQL does not answer
   * within `requestsTimeout`: Socket.IO then connects the client as a new socket.
   */
  // Typed `Promise<Session>` like the base class, though Socket.IO takes `null` for "not restored".
  // Not async: the restore's own promise is returned, as awaiting it would put microtasks between
  // the restore's end and Socket.IO building the socket (see RecoveredDelivery.restore).
  override restoreSession(pid: PrivateSessionId, offset: string): Promise<Session> {
    if (this.#recovered === undefined || this.#closed) return Promise.resolve(NOT_RESTORED)
    return this.#recovered.restore(pid, offset)
  }

  override addSockets(opts: BroadcastOptions, rooms: Array<Room>): Promise<void> {
    Adapter.prototype.addSockets.call(this, opts, rooms)
    if (!opts.flags?.local) {
      this.#send({ type: MessageType.SOCKETS_JOIN, data: { opts: encodeOptions(opts), rooms } })
    }
    return Promise.resolve()
  }

  override delSockets(opts: BroadcastOptions, rooms: Array<Room>): Promise<void> {
    Adapter.prototype.delSockets.call(this, opts, rooms)
    if (!opts.flags?.local) {
      this.#send({ type: MessageType.SOCKETS_LEAVE, data: { opts: encodeOptions(opts), rooms } })
    }
    return Promise.resolve()
  }

  override disconnectSockets(opts: BroadcastOptions, close: boolean): Promise<void> {
    if (!opts.flags?.local) {
      this.#send({
        type: MessageType.DISCONNECT_SOCKETS,
        data: { opts: encodeOptions(opts), close },
      })
    }
    Adapter.prototype.disconnectSockets.call(this, opts, close)
    return Promise.resolve()
  }

  override async fetchSockets(opts: BroadcastOptions): Promise<Array<any>> {
    const local = await Adapter.prototype.fetchSockets.call(this, {
      rooms: opts.rooms,
      except: opts.except,
      flags: { local: true },
    } as BroadcastOptions)
    const nodes = this.#membership?.nodes() ?? []
    if (opts.flags?.local || nodes.length === 0) return local
    const timeout = opts.flags?.timeout ?? this.#timeoutMillis()
    return new Promise((resolve, reject) => {
      const requestId = this.#request(nodes, local, timeout, (error, responses) =>
        error ? reject(error) : resolve(responses),
      )
      this.#send({
        type: MessageType.FETCH_SOCKETS,
        data: { opts: encodeOptions(opts), requestId },
      })
    })
  }

  override async serverSideEmit(packet: Array<any>): Promise<any> {
    const ack = typeof packet[packet.length - 1] === "function" ? packet.pop() : undefined
    if (ack === undefined) {
      this.#send({ type: MessageType.SERVER_SIDE_EMIT, data: { packet } })
      return
    }
    const nodes = this.#membership?.nodes() ?? []
    if (nodes.length === 0) return ack(null, [])
    const requestId = this.#request(nodes, [], this.#timeoutMillis(), (error, responses) =>
      ack(error, responses),
    )
    this.#send({ type: MessageType.SERVER_SIDE_EMIT, data: { requestId, packet } })
  }

  override onResponse(response: ClusterResponse): void {
    const data = response.data as { requestId: string; sockets?: Array<unknown>; packet?: unknown }
    const request = this.#requests.get(data.requestId)
    if (request === undefined) {
      // Broadcast acknowledgements are kept by the base class.
      if (
        response.type === MessageType.BROADCAST_CLIENT_COUNT ||
        response.type === MessageType.BROADCAST_ACK
      ) {
        super.onResponse(response)
      }
      return
    }
    if (!request.missing.delete(response.uid)) return
    if (response.type === MessageType.FETCH_SOCKETS_RESPONSE) {
      request.responses.push(...(data.sockets ?? []))
    } else if (response.type === MessageType.SERVER_SIDE_EMIT_RESPONSE) {
      request.responses.push(data.packet)
    }
    if (request.missing.size === 0) this.#settle(data.requestId, null)
  }

  protected override publish(message: any): void {
    this.#send(message)
  }

  protected override doPublish(message: ClusterMessage): Promise<string> {
    return this.#send(message).then(() => "")
  }

  protected override doPublishResponse(
    _requesterUid: string,
    response: ClusterResponse,
  ): Promise<void> {
    return this.#send(response)
  }

  /** Publishes a message of this namespace; never rejects: errors go to the errorHandler. */
  #send(message: { type: number; data?: unknown }): Promise<void> {
    if (this.#closed) return Promise.resolve()
    const wire = this.#wire(message)
    this.#membership?.published()
    this.#pending++
    const publisher = this.#publisher
    // Until the runtime is up, publishes go through fibers; later ones must not overtake them.
    if (publisher !== undefined && this.#slowPending === 0) {
      return new Promise((resolve) =>
        publisher.unsafePublish(this.channel, wire, (error) => {
          if (error !== undefined) this.#report(error)
          this.#settled()
          resolve()
        }),
      )
    }
    this.#slowPending++
    return this.#runtime
      .runPromiseExit(
        Effect.flatMap(Publisher, (publisher) => publisher.publish(this.channel, wire)),
      )
      .then((exit) => {
        this.#slowPending--
        if (Exit.isFailure(exit) && !Cause.hasInterruptsOnly(exit.cause)) {
          this.#report(Cause.squash(exit.cause))
        }
        this.#settled()
      })
  }

  #wire(message: { type: number; data?: unknown }): Codec.WireMessage {
    // `uid` first: receivers recognise their own notifications by this prefix, unparsed.
    return {
      uid: this.uid,
      nsp: this.nsp.name,
      type: message.type,
      data: message.data,
    } as Codec.WireMessage
  }

  #settled(): void {
    if (--this.#pending === 0) this.#drained?.()
  }

  #report(failure: unknown): void {
    const error =
      failure instanceof Error ? failure : new Error(`publish failed: ${String(failure)}`)
    this.#log("warning", error.message)
    try {
      this.#shared.errorHandler(error)
    } catch (e) {
      this.#log("error", `errorHandler threw: ${(e as Error)?.message}`)
    }
  }

  #log(level: "warning" | "error", message: string): void {
    if (this.#closed && level === "warning") return
    const log = level === "warning" ? Effect.logWarning(message) : Effect.logError(message)
    this.#runtime.runFork(log.pipe(Effect.annotateLogs({ module: "Adapter", nsp: this.nsp.name })))
  }

  // A notification, in commit order. Own ones are dropped before any attachment is fetched.
  #receive(payload: string): void {
    Metrics.notificationsReceived.updateUnsafe(1, Context.empty())
    // Ours start with this prefix (inline and attachment headers alike): no need to parse them.
    if (payload.startsWith(this.#selfPrefix)) {
      // Except for the offset of a stored one (its last field): a store reported as failed may
      // have committed after all, and later own packets wait until its offset was seen.
      if (this.#recovered !== undefined) {
        const offset = Codec.storedOffsetOf(payload)
        if (offset !== undefined) this.#recovered.sequencer.seenUpTo(BigInt(offset))
      }
      return
    }
    this.#inbox?.(payload)
  }

  // Not our own, and not an answer to another node's request (not worth a SELECT here).
  #wanted(notification: { uid: string; type: number; requestId?: string }): boolean {
    if (notification.uid === this.uid) return false
    return (
      notification.requestId === undefined ||
      (notification.type !== MessageType.FETCH_SOCKETS_RESPONSE &&
        notification.type !== MessageType.SERVER_SIDE_EMIT_RESPONSE) ||
      this.#requests.has(notification.requestId)
    )
  }

  #handle(message: Codec.WireMessage): void {
    // An announced offset that is not going to be pushed must not hold own packets back.
    const drop = () => {
      if (this.#recovered !== undefined && Codec.isOffset(message.offset)) {
        this.#recovered.sequencer.retract(BigInt(message.offset))
      }
    }
    if (this.#closed) return
    if (message.uid === this.uid) return drop()
    if (message.nsp !== undefined && message.nsp !== this.nsp.name) return drop()
    const invalid = Codec.validateMessage(message)
    if (invalid !== undefined) {
      drop()
      return this.#skip(invalid)
    }
    // Emitters before ours send no nsp: the channel tells the namespace.
    const full = (message.nsp === undefined ? { ...message, nsp: this.nsp.name } : message) as any
    if (message.uid !== Codec.EMITTER_UID) this.#membership?.seen(message.uid)
    try {
      switch (message.type) {
        case MessageType.INITIAL_HEARTBEAT:
          this.#send({ type: MessageType.HEARTBEAT })
          return
        case MessageType.HEARTBEAT:
          return
        case MessageType.ADAPTER_CLOSE:
          this.#membership?.remove(message.uid)
          return this.#removeNode(message.uid)
        default:
          if (this.#recovered === undefined) return super.onMessage(full)
          return this.#recovered.sequence(full)
      }
    } catch (e) {
      this.#skip(`message of type ${message.type} failed: ${(e as Error)?.message}`)
    }
  }

  #timeoutMillis(): number {
    return Duration.toMillis(this.#shared.config.requestsTimeout)
  }

  #request(
    nodes: ReadonlyArray<string>,
    responses: Array<unknown>,
    timeout: number,
    settle: (error: Error | null, responses: Array<any>) => void,
  ): string {
    const requestId = randomId()
    const timer = setTimeout(() => {
      const request = this.#requests.get(requestId)
      if (request === undefined) return
      this.#settle(
        requestId,
        new Error(`timeout reached: missing ${request.missing.size} responses`),
      )
    }, timeout)
    this.#requests.set(requestId, {
      missing: new Set(nodes),
      responses,
      timer,
      settle: (error) => settle(error, responses),
    })
    return requestId
  }

  #settle(requestId: string, error: Error | null): void {
    const request = this.#requests.get(requestId)
    if (request === undefined) return
    this.#requests.delete(requestId)
    clearTimeout(request.timer)
    request.settle(error)
  }

  // A node that left or timed out is no longer waited for.
  #removeNode(uid: string): void {
    for (const [requestId, request] of this.#requests) {
      if (request.missing.delete(uid) && request.missing.size === 0) this.#settle(requestId, null)
    }
  }
}

const defaultErrorHandler = () => {}

/**
 * Returns what `io.adapter()` takes: every namespace of the server gets a `PostgresAdapter`, all
 * on one runtime over `pool` (one dedicated LISTEN connection besides). Options are validated
 * here: a bad one throws an error that names it. The pool is never ended by us.
 */
export function createAdapter(
  pool: pg.Pool,
  options?: Config.AdapterOptions,
): (nsp: any) => PostgresAdapter {
  if (pool === null || typeof pool !== "object" || typeof (pool as any).query !== "function") {
    throw new TypeError("createAdapter(pool, options): pool must be a pg.Pool")
  }
  const config = Config.decodeSync(options)
  const errorHandler = options?.errorHandler ?? defaultErrorHandler
  const layer = Cluster.layer.pipe(
    Layer.provide(Layer.succeed(Config.Config, config)),
    Layer.provide(Database.layerPool(pool)),
    Layer.provide(Layer.succeed(ErrorHandler, errorHandler)),
  )
  let runtime: ManagedRuntime.ManagedRuntime<Cluster.Services, never> | undefined
  let users = 0
  const shared: Shared = {
    config,
    errorHandler,
    acquire: () => {
      users++
      runtime ??= ManagedRuntime.make(layer)
      return runtime
    },
    release: async () => {
      if (--users > 0 || runtime === undefined) return
      const last = runtime
      runtime = undefined
      await last.dispose()
    },
  }
  // A `function`, not an arrow: Socket.IO calls it with `new`.
  return function (nsp: any) {
    return new PostgresAdapter(nsp, shared)
  }
}

/**
 * The Effect way to get what `io.adapter()` takes: an adapter factory on the current runtime,
 * for apps that provide the cluster layers themselves (e.g. `Cluster.layerPool(pool, options)`).
 * The services live as long as the layer that provides them; closing namespaces releases nothing.
 */
export const makeAdapterFactory: Effect.Effect<
  (nsp: any) => PostgresAdapter,
  never,
  Cluster.Services
> = Effect.gen(function* () {
  const context = yield* Effect.context<Cluster.Services>()
  const config = yield* Config.Config
  const errorHandler = yield* ErrorHandler
  const runner: Runner = {
    runFork: (effect) => Effect.runForkWith(context)(effect),
    runPromise: (effect) => Effect.runPromiseWith(context)(effect),
    runPromiseExit: (effect) => Effect.runPromiseExitWith(context)(effect),
  }
  const shared: Shared = {
    config,
    errorHandler,
    acquire: () => runner,
    release: () => Promise.resolve(),
  }
  return function (nsp: any) {
    return new PostgresAdapter(nsp, shared)
  }
})
