/**
 * The emitter facade: the API of `@socket.io/postgres-emitter`, with promises that say whether
 * PostgreSQL took the message, for workers and services that run no Socket.IO server.
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as ManagedRuntime from "effect/ManagedRuntime"
import type pg from "pg"
import { broadcastChannel, channelName } from "./Channel.js"
import * as ClusterEmitter from "./ClusterEmitter.js"
import * as Codec from "./Codec.js"
import * as AdapterConfig from "./AdapterConfig.js"
import * as Database from "./Database.js"
import { ConfigError, ErrorHandler, PublishError, RequestTimeoutError } from "./Errors.js"
import * as DebugLog from "./internal/debugLog.js"
import * as Placement from "./Placement.js"
import type { Pools } from "./Placement.js"

const { MessageType } = Codec

/**
 * A map of event names to listener signatures, as in Socket.IO. Its values are `any` so that an
 * `interface` of events satisfies it (an index signature of functions would take type aliases only).
 */
export interface EventsMap {
  [event: string]: any
}

/** The events map used when none is given: any event, any arguments. */
export interface DefaultEventsMap {
  [event: string]: (...args: any[]) => void
}

/** The event names of a map. */
export type EventNames<Map extends EventsMap> = keyof Map & string

/** The parameters of an event of a map. */
export type EventParams<Map extends EventsMap, Ev extends EventNames<Map>> = Parameters<Map[Ev]>

type Last<T extends ReadonlyArray<unknown>> = T extends readonly [...Array<unknown>, infer L]
  ? L
  : any
type AllButLast<T extends ReadonlyArray<unknown>> = T extends readonly [...infer H, unknown]
  ? H
  : Array<any>

/** The events of a map whose listener takes an acknowledgement as its last parameter. */
export type EventNamesWithAck<Map extends EventsMap> = {
  [Ev in EventNames<Map>]: 0 extends 1 & Map[Ev]
    ? Ev
    : Last<Parameters<Map[Ev]>> extends (...args: Array<any>) => unknown
      ? Ev
      : never
}[EventNames<Map>]

/**
 * What a server answers to an event with an acknowledgement: the acknowledgement's first
 * argument, or its second when the first is an `Error` (the `(err, value)` style).
 */
export type AckValue<Map extends EventsMap, Ev extends EventNames<Map>> =
  Last<Parameters<Map[Ev]>> extends (...args: infer A) => unknown
    ? A[0] extends Error
      ? A[1]
      : A[0]
    : any

/** Options of `new Emitter(pool, nsp, options)`. */
export interface EmitterOptions {
  /** Prefix of the notification channels. @default "socket.io" */
  readonly channelPrefix?: string
  /** Attachments table (created by the adapters), may be `schema.table`. @default "socket_io_attachments" */
  readonly tableName?: string
  /** JSON byte length above which a message goes through the table (capped at 7999). @default 8000 */
  readonly payloadThreshold?: number
  /** Milliseconds `fetchSockets` / `serverSideEmitWithAck` wait for the servers. @default 5000 */
  readonly requestsTimeout?: number
  /** The servers' heartbeat interval, in ms (requests only). @default 5000 */
  readonly heartbeatInterval?: number
  /** The servers' heartbeat timeout: a server silent that long is not waited for. @default 10000 */
  readonly heartbeatTimeout?: number
  /** Largest delay between two reconnection attempts of the listening connection, in ms. @default 5000 */
  readonly reconnectMaxDelay?: number
  /** Milliseconds a publish may take before it fails. @default 10000 */
  readonly publishTimeout?: number
  /** How many publishes may wait for PostgreSQL before new ones fail fast. @default 65536 */
  readonly maxPendingPublishes?: number
  /** Milliseconds between two liveness pings of the listening connection (requests only). @default 2500 */
  readonly livenessInterval?: number
  /** Milliseconds that connection may stay silent with a ping unanswered before it is replaced. @default 5000 */
  readonly livenessTimeout?: number
  /**
   * Store broadcasts for connection state recovery, like the servers do when they run with
   * `connectionStateRecovery`: clients disconnected at the time get them when they come back.
   * Set it when the servers use recovery. @default false
   */
  readonly connectionStateRecovery?: boolean
  /** Prefix of the recovery tables (created by the servers). @default "socket_io_recovery" */
  readonly recoveryTablePrefix?: string
  /**
   * The cluster's shared secret, when its servers sign (see the adapter's option): the emitter's
   * messages are signed, and only signed answers are taken. @default undefined (unsigned)
   */
  readonly secret?: string | Uint8Array
  /** Several secrets, for key rotation: the first signs, any verifies. @default undefined */
  readonly secrets?: ReadonlyArray<string | Uint8Array>
  /**
   * The servers' `subscriptionMode`: in `"dynamic"` and `"dynamic-private"`, a broadcast to one
   * room goes to that room's channel, where its servers listen (stored there too with
   * `connectionStateRecovery`). @default "static"
   */
  readonly subscriptionMode?: AdapterConfig.AdapterOptions["subscriptionMode"]
  /**
   * The servers' `roomPlacement`: with several PostgreSQL servers in a dynamic mode, a broadcast
   * to one room goes to the server of that room's channel (`"room"`) or of its namespace's
   * (`"namespace"`, the only one with `connectionStateRecovery`). @default "room"
   */
  readonly roomPlacement?: AdapterConfig.AdapterOptions["roomPlacement"]
  /** Called with each failed publish, awaited or not. @default logs a warning */
  readonly errorHandler?: (error: Error) => void
}

/** The options the emitter takes (a misspelled one is refused with the nearest name). */
const EMITTER_OPTIONS: AdapterConfig.Accepted = {
  names: [
    "channelPrefix",
    "tableName",
    "payloadThreshold",
    "requestsTimeout",
    "heartbeatInterval",
    "heartbeatTimeout",
    "reconnectMaxDelay",
    "publishTimeout",
    "maxPendingPublishes",
    "livenessInterval",
    "livenessTimeout",
    "connectionStateRecovery",
    "recoveryTablePrefix",
    "errorHandler",
    "secret",
    "secrets",
    "subscriptionMode",
    "roomPlacement",
  ] satisfies ReadonlyArray<keyof EmitterOptions>,
  who: "the emitter",
}

/** Event names Socket.IO reserves; emitting them is an error. */
export const RESERVED_EVENTS = Codec.RESERVED_EVENTS

// A programming error, thrown at once like Socket.IO does, not a rejected promise.
const assertNotReserved = (ev: string) => {
  if (RESERVED_EVENTS.has(ev)) throw new Error(`"${ev}" is a reserved event name`)
}

/** What every emitter made by `of()` from one constructor call shares, on one server. */
class Core {
  #runtime: ManagedRuntime.ManagedRuntime<ClusterEmitter.ClusterEmitter, never> | undefined
  #built: Promise<unknown> | undefined
  #waiting = 0
  readonly #layer: Layer.Layer<ClusterEmitter.ClusterEmitter>
  readonly #errorHandler: (error: Error) => void

  constructor(
    readonly pool: pg.Pool,
    readonly options: EmitterOptions | undefined,
    readonly config: AdapterConfig.ClusterConfig,
    /** With rooms placed apart from their namespace: the core of a room channel's server. */
    private readonly placeRoom?: ((channel: string) => Core) | undefined,
  ) {
    this.#errorHandler = options?.errorHandler ?? DebugLog.makeDefaultErrorHandler()
    this.#layer = ClusterEmitter.layer.pipe(
      Layer.provide(Layer.succeed(AdapterConfig.AdapterConfig, config)),
      Layer.provide(Database.layerPool(pool)),
      Layer.provide(Layer.succeed(ErrorHandler, this.#errorHandler)),
      // Logs go to `debug` (quiet unless DEBUG asks); failures to the errorHandler.
      Layer.provideMerge(DebugLog.layer),
    )
  }

  /**
   * The core that publishes a broadcast to `rooms` of `nsp`: that of its one room's server when
   * it goes to a room channel placed apart from the namespace, else this one.
   */
  forBroadcast(nsp: string, rooms: Iterable<string>): Core {
    const channel = this.placeRoom && broadcastChannel(this.config, nsp, rooms)
    return channel === undefined ? this : this.placeRoom!(channel)
  }

  /**
   * Runs an effect; the promise rejects with a typed error on failure, and is marked handled so
   * that fire-and-forget use never causes an unhandled rejection (the error handler and the log
   * see every failure).
   */
  run<A>(
    f: (emitter: ClusterEmitter.ClusterEmitter["Service"]) => Effect.Effect<A, PublishError>,
  ): Promise<A> {
    return this.#reported(
      this.#withService((emitter, runtime) =>
        runtime.runPromiseExit(f(emitter)).then((exit) => {
          if (Exit.isSuccess(exit)) return exit.value
          const failure = Cause.squash(exit.cause)
          throw failure instanceof Error
            ? failure
            : new PublishError({ reason: "Database", message: String(failure) })
        }),
      ),
    )
  }

  /**
   * Queues a message with a callback variant of the service: no fiber, so messages go out in
   * call order. Rejects, handled, like {@link run}.
   */
  send(
    f: (
      emitter: ClusterEmitter.ClusterEmitter["Service"],
      done: (error: PublishError | undefined) => void,
    ) => void,
  ): Promise<void> {
    return this.#reported(
      this.#withService(
        (emitter) =>
          new Promise<void>((resolve, reject) =>
            f(emitter, (error) => (error === undefined ? resolve() : reject(error))),
          ),
      ),
    )
  }

  // The service at once once it is built and no earlier call waits; else the call waits for the
  // build, behind the earlier ones. (The build may end within the first call, whose own wait ends
  // a tick later: the calls made meanwhile would go first.)
  #withService<A>(
    use: (
      emitter: ClusterEmitter.ClusterEmitter["Service"],
      runtime: ManagedRuntime.ManagedRuntime<ClusterEmitter.ClusterEmitter, never>,
    ) => Promise<A>,
  ): Promise<A> {
    const runtime = (this.#runtime ??= ManagedRuntime.make(this.#layer))
    const start = () => {
      const context = runtime.cachedContext
      if (context === undefined)
        return Promise.reject(
          new PublishError({ reason: "Closed", message: "the emitter could not start" }),
        )
      return use(Context.get(context, ClusterEmitter.ClusterEmitter), runtime)
    }
    if (runtime.cachedContext !== undefined && this.#waiting === 0) return start()
    this.#waiting++
    const started = () => {
      this.#waiting--
      return start()
    }
    return (this.#built ??= runtime.context()).then(started, started)
  }

  // Every failure is logged and given to the errorHandler; the promise is marked handled.
  #reported<A>(promise: Promise<A>): Promise<A> {
    const reported = promise.catch((error: Error) => {
      this.#runtime?.runFork(
        Effect.logWarning(`emitter: ${error.message}`).pipe(
          Effect.annotateLogs({ module: "Emitter" }),
        ),
      )
      try {
        this.#errorHandler(error)
      } catch {
        // The caller's handler must not turn a failed publish into an exception.
      }
      throw error
    })
    reported.catch(() => {})
    return reported
  }

  async close(): Promise<void> {
    const runtime = this.#runtime
    this.#runtime = undefined
    this.#built = undefined
    await runtime?.dispose()
  }
}

/**
 * The answers, or a `RequestTimeoutError` if a server did not answer; like `Core.run`'s, the promise is
 * marked handled so that an ignored request never causes an unhandled rejection.
 */
const allAnswered = <A>(request: Promise<ClusterEmitter.RequestResult<A>>): Promise<Array<A>> => {
  const promise = request.then(({ missing, responses }) => {
    if (missing > 0)
      throw new RequestTimeoutError({
        missing,
        message: `timeout reached: missing ${missing} responses`,
      })
    return [...responses]
  })
  promise.catch(() => {})
  return promise
}

interface Flags {
  readonly volatile?: boolean
  readonly compress?: boolean
}

const toArray = (room: string | ReadonlyArray<string>): ReadonlyArray<string> =>
  typeof room === "string" ? [room] : room

/**
 * Sends to the clients of a Socket.IO cluster that uses this adapter, from any Node process.
 * Same constructor and chainable API as `@socket.io/postgres-emitter`; every call returns a
 * promise that resolves once PostgreSQL accepted the message.
 */
export class Emitter<
  EmitEvents extends EventsMap = DefaultEventsMap,
  ServerSideEvents extends EventsMap = DefaultEventsMap,
> {
  /** The namespace this emitter targets. */
  readonly nsp: string
  /** The notification channel of that namespace. */
  readonly channel: string
  readonly #cores: Cores
  readonly #core: Core

  /**
   * @param pools - a `pg.Pool`, or a list of pools of several PostgreSQL servers (the servers'
   *   list: see "Several PostgreSQL servers" in the README); never ended by the emitter
   * @param nsp - the namespace, `"/"` by default
   * @param options - validated here: a bad option throws an error that names it
   */
  constructor(pools: Pools, nsp?: string, options?: EmitterOptions)
  /** @internal */
  constructor(pools: Pools, nsp: string, options: EmitterOptions | undefined, cores: Cores)
  constructor(pools: Pools, nsp = "/", options?: EmitterOptions, cores?: Cores) {
    if (cores === undefined) {
      if (typeof nsp !== "string")
        throw new TypeError("new Emitter(pool, nsp): nsp must be a string")
      cores = coresOf(pools, options)
    }
    this.#cores = cores
    this.nsp = nsp.startsWith("/") ? nsp : `/${nsp}`
    this.#core = cores.of(this.nsp)
    this.channel = channelName(cores.config.channelPrefix, this.nsp)
  }

  /** An emitter for another namespace, with the same pools and options. */
  of(nsp: string): Emitter<EmitEvents, ServerSideEvents> {
    return new Emitter(this.#cores.servers[0]!.pool, nsp, this.#cores.options, this.#cores)
  }

  /** Emits to every client of the namespace. */
  emit<Ev extends EventNames<EmitEvents>>(
    ev: Ev,
    ...args: EventParams<EmitEvents, Ev>
  ): Promise<void> {
    return new BroadcastOperator<EmitEvents, ServerSideEvents>(this.#core, this.nsp).emit(
      ev,
      ...args,
    )
  }

  /** Targets a room (or several) when emitting. */
  to(room: string | ReadonlyArray<string>): BroadcastOperator<EmitEvents, ServerSideEvents> {
    return new BroadcastOperator<EmitEvents, ServerSideEvents>(this.#core, this.nsp).to(room)
  }

  /** Alias of {@link Emitter.to}. */
  in(room: string | ReadonlyArray<string>): BroadcastOperator<EmitEvents, ServerSideEvents> {
    return this.to(room)
  }

  /** Excludes a room (or several) when emitting. */
  except(room: string | ReadonlyArray<string>): BroadcastOperator<EmitEvents, ServerSideEvents> {
    return new BroadcastOperator<EmitEvents, ServerSideEvents>(this.#core, this.nsp).except(room)
  }

  /** The next emit may be lost if a client is not ready to receive it. */
  get volatile(): BroadcastOperator<EmitEvents, ServerSideEvents> {
    return new BroadcastOperator<EmitEvents, ServerSideEvents>(this.#core, this.nsp).volatile
  }

  /** Sets the compress flag of the next emit. */
  compress(compress: boolean): BroadcastOperator<EmitEvents, ServerSideEvents> {
    return new BroadcastOperator<EmitEvents, ServerSideEvents>(this.#core, this.nsp).compress(
      compress,
    )
  }

  /** Makes every socket of the namespace join the rooms. */
  socketsJoin(rooms: string | ReadonlyArray<string>): Promise<void> {
    return new BroadcastOperator<EmitEvents, ServerSideEvents>(this.#core, this.nsp).socketsJoin(
      rooms,
    )
  }

  /** Makes every socket of the namespace leave the rooms. */
  socketsLeave(rooms: string | ReadonlyArray<string>): Promise<void> {
    return new BroadcastOperator<EmitEvents, ServerSideEvents>(this.#core, this.nsp).socketsLeave(
      rooms,
    )
  }

  /** Disconnects every socket of the namespace; `close` also closes the underlying connection. */
  disconnectSockets(close = false): Promise<void> {
    return new BroadcastOperator<EmitEvents, ServerSideEvents>(
      this.#core,
      this.nsp,
    ).disconnectSockets(close)
  }

  /** Describes every socket of the namespace across the cluster (id, handshake, rooms, data). */
  fetchSockets(): Promise<Array<ClusterEmitter.SocketDescription>> {
    return new BroadcastOperator<EmitEvents, ServerSideEvents>(this.#core, this.nsp).fetchSockets()
  }

  /** Sends an event to every Socket.IO server of the cluster (`io.on(ev)` there). */
  serverSideEmit<Ev extends EventNames<ServerSideEvents>>(
    ev: Ev,
    ...args: EventParams<ServerSideEvents, Ev>
  ): Promise<void> {
    assertNotReserved(ev)
    if (typeof args[args.length - 1] === "function") {
      throw new Error(
        "Acknowledgements are not supported by serverSideEmit: use serverSideEmitWithAck",
      )
    }
    return this.#core.send((emitter, done) =>
      emitter.unsafePublish(
        this.nsp,
        { type: MessageType.SERVER_SIDE_EMIT, data: { packet: [ev, ...args] } },
        done,
      ),
    )
  }

  /**
   * Sends an event to every server and resolves with one answer per server; rejects with a
   * timeout error if some did not answer within `requestsTimeout`.
   */
  serverSideEmitWithAck<Ev extends EventNamesWithAck<ServerSideEvents>>(
    ev: Ev,
    ...args: AllButLast<EventParams<ServerSideEvents, Ev>>
  ): Promise<Array<AckValue<ServerSideEvents, Ev>>> {
    // Not `async`: a reserved name throws at once, and the promise is marked handled.
    assertNotReserved(ev)
    return allAnswered(
      this.#core.run((emitter) => emitter.serverSideEmitWithAck(this.nsp, [ev, ...args])),
    ) as Promise<Array<AckValue<ServerSideEvents, Ev>>>
  }

  /** Stops listening for answers (only `fetchSockets` / `serverSideEmitWithAck` listen). */
  close(): Promise<void> {
    return this.#cores.close()
  }
}

/** A targeted emit, built by `to` / `in` / `except` / `volatile` / `compress`; immutable. */
export class BroadcastOperator<EmitEvents extends EventsMap, ServerSideEvents extends EventsMap> {
  /** @internal */
  constructor(
    private readonly core: Core,
    private readonly nsp: string,
    private readonly rooms: ReadonlySet<string> = new Set(),
    private readonly exceptRooms: ReadonlySet<string> = new Set(),
    private readonly flags: Flags = {},
  ) {}

  /** Targets a room (or several) too. */
  to(room: string | ReadonlyArray<string>): BroadcastOperator<EmitEvents, ServerSideEvents> {
    return new BroadcastOperator(
      this.core,
      this.nsp,
      new Set([...this.rooms, ...toArray(room)]),
      this.exceptRooms,
      this.flags,
    )
  }

  /** Alias of {@link BroadcastOperator.to}. */
  in(room: string | ReadonlyArray<string>): BroadcastOperator<EmitEvents, ServerSideEvents> {
    return this.to(room)
  }

  /** Excludes a room (or several) too. */
  except(room: string | ReadonlyArray<string>): BroadcastOperator<EmitEvents, ServerSideEvents> {
    return new BroadcastOperator(
      this.core,
      this.nsp,
      this.rooms,
      new Set([...this.exceptRooms, ...toArray(room)]),
      this.flags,
    )
  }

  /** Sets the compress flag. */
  compress(compress: boolean): BroadcastOperator<EmitEvents, ServerSideEvents> {
    return new BroadcastOperator(this.core, this.nsp, this.rooms, this.exceptRooms, {
      ...this.flags,
      compress,
    })
  }

  /** The emit may be lost if a client is not ready to receive it. */
  get volatile(): BroadcastOperator<EmitEvents, ServerSideEvents> {
    return new BroadcastOperator(this.core, this.nsp, this.rooms, this.exceptRooms, {
      ...this.flags,
      volatile: true,
    })
  }

  /** Emits to the targeted clients; resolves once PostgreSQL accepted the message. */
  emit<Ev extends EventNames<EmitEvents>>(
    ev: Ev,
    ...args: EventParams<EmitEvents, Ev>
  ): Promise<void> {
    assertNotReserved(ev)
    if (this.core.options?.connectionStateRecovery === true && this.flags.volatile !== true) {
      const data = [ev, ...args]
      return this.core.send((emitter, done) =>
        emitter.unsafeBroadcastStored(this.nsp, { type: 2, data }, this.#opts(), done),
      )
    }
    const packet = { type: 2, data: [ev, ...args], nsp: this.nsp }
    const data = { packet, opts: this.#opts() }
    return this.core
      .forBroadcast(this.nsp, this.rooms)
      .send((emitter, done) =>
        emitter.unsafePublish(this.nsp, { type: MessageType.BROADCAST, data }, done),
      )
  }

  /** Makes the targeted sockets join the rooms. */
  socketsJoin(rooms: string | ReadonlyArray<string>): Promise<void> {
    return this.#publish(MessageType.SOCKETS_JOIN, {
      opts: this.#opts(),
      rooms: [...toArray(rooms)],
    })
  }

  /** Makes the targeted sockets leave the rooms. */
  socketsLeave(rooms: string | ReadonlyArray<string>): Promise<void> {
    return this.#publish(MessageType.SOCKETS_LEAVE, {
      opts: this.#opts(),
      rooms: [...toArray(rooms)],
    })
  }

  /** Disconnects the targeted sockets; `close` also closes the underlying connection. */
  disconnectSockets(close = false): Promise<void> {
    return this.#publish(MessageType.DISCONNECT_SOCKETS, { opts: this.#opts(), close })
  }

  /** Describes the targeted sockets across the cluster; rejects if a server did not answer. */
  fetchSockets(): Promise<Array<ClusterEmitter.SocketDescription>> {
    return allAnswered(this.core.run((emitter) => emitter.fetchSockets(this.nsp, this.#opts())))
  }

  #opts(): ClusterEmitter.Target {
    return { rooms: [...this.rooms], except: [...this.exceptRooms], flags: this.flags }
  }

  #publish(type: number, data: unknown): Promise<void> {
    return this.core.send((emitter, done) => emitter.unsafePublish(this.nsp, { type, data }, done))
  }
}

/**
 * The cores of an emitter's PostgreSQL servers, one per server, made when a namespace placed on it
 * or a room placed on it is first used (see `Placement`: a namespace's channel, and in the dynamic
 * modes each room's, live on the server their names pick).
 */
class Cores {
  readonly #cores = new Map<number, Core>()
  readonly #placement: Placement.Placement
  readonly #placeRoom: ((channel: string) => Core) | undefined

  constructor(
    readonly servers: ReadonlyArray<Placement.Server<pg.Pool>>,
    readonly options: EmitterOptions | undefined,
    readonly config: AdapterConfig.ClusterConfig,
  ) {
    this.#placement = Placement.make(servers.map((server) => server.name))
    this.#placeRoom = Placement.roomsApart(servers.length, config)
      ? (channel) => this.#at(this.#placement.indexOf(channel))
      : undefined
  }

  /** The core of the server that holds the namespace's channel. */
  of(nsp: string): Core {
    return this.#at(this.#placement.indexOf(channelName(this.config.channelPrefix, nsp)))
  }

  #at(index: number): Core {
    let core = this.#cores.get(index)
    if (core === undefined) {
      core = new Core(this.servers[index]!.pool, this.options, this.config, this.#placeRoom)
      this.#cores.set(index, core)
    }
    return core
  }

  async close(): Promise<void> {
    await Promise.all([...this.#cores.values()].map((core) => core.close()))
  }
}

/** The shared part of a new emitter, its options validated (a bad one throws, named). */
const coresOf = (pools: Pools, options: EmitterOptions | undefined): Cores => {
  const servers = Placement.decodePoolsSync(pools, "new Emitter(pool, nsp, options)")
  const recovery = options?.connectionStateRecovery
  if (recovery !== undefined && typeof recovery !== "boolean") {
    throw new ConfigError({
      option: "connectionStateRecovery",
      message: "Invalid option connectionStateRecovery: must be a boolean",
    })
  }
  const config = AdapterConfig.decodeSync(options, EMITTER_OPTIONS)
  // As the servers: stored packets keep one offset order per namespace, rooms with it.
  if (recovery === true && Placement.roomsApart(servers.length, config)) {
    throw new ConfigError({
      option: "roomPlacement",
      message:
        'Invalid option roomPlacement: "room" (the default with several PostgreSQL servers in a ' +
        "dynamic subscriptionMode) cannot be used with connectionStateRecovery: set " +
        'roomPlacement: "namespace", as on the servers',
    })
  }
  return new Cores(servers, options, config)
}
