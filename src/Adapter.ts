/**
 * The facade: a socket.io-adapter `ClusterAdapter` whose every override is one call on the node of
 * its namespace (see `Namespace`), on one runtime per `createAdapter` call, shared by every namespace.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as ManagedRuntime from "effect/ManagedRuntime"
import type * as Scope from "effect/Scope"
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
import { channelName } from "./Channel.js"
import * as Cluster from "./Cluster.js"
import * as AdapterConfig from "./AdapterConfig.js"
import * as Database from "./Database.js"
import { ConfigError, ErrorHandler } from "./Errors.js"
import * as DebugLog from "./internal/debugLog.js"
import { ListenGate } from "./internal/gate.js"
import type { PlaceRoom, RoomServer } from "./internal/placed.js"
import * as asking from "./internal/asking.js"
import { roomChannelsOf } from "./internal/rooms.js"
import { NOT_RESTORED } from "./internal/recovering.js"
import { fromContext, type Runner } from "./internal/runner.js"
import { type ListenStatus, type Local, type MembershipStatus, NamespaceNode } from "./Namespace.js"
import * as Placement from "./Placement.js"
import type { Pools } from "./Placement.js"
import { MessageType, type Body } from "./Protocol.js"

/** What every namespace adapter of one `createAdapter` call (or adapter factory) shares. */
interface Shared {
  readonly config: AdapterConfig.ClusterConfig
  readonly acquire: () => Runner
  readonly release: () => Promise<void>
  /** Publishes of the server wait here while a room's LISTEN is in flight (dynamic modes). */
  readonly gate: ListenGate
  /** With rooms placed apart from their namespace: the other server of a room channel. */
  readonly placeRoom?: PlaceRoom | undefined
}

/** The `socket.io-adapter` adapter of one namespace, created by {@link createAdapter}. */
export class PostgresAdapter extends ClusterAdapter {
  readonly #node: NamespaceNode
  readonly #release: () => Promise<void>
  #closing: Promise<void> | undefined

  /** Use {@link createAdapter}; constructed by Socket.IO for each namespace. Never blocks. */
  constructor(nsp: any, shared: Shared) {
    super(nsp)
    this.#release = shared.release
    const recovery = nsp.server?.opts?.connectionStateRecovery
    if (recovery && shared.placeRoom !== undefined) throw recoveryWithRoomsApart()
    const { config, gate, placeRoom } = shared
    const runner = shared.acquire()
    const rooms = roomChannelsOf({ nsp: nsp.name, config, runner, gate, placeRoom })
    rooms?.attach(this)
    this.#node = new NamespaceNode({
      nsp: nsp.name,
      uid: this.uid,
      config,
      runner,
      rooms,
      placeRoom,
      local: this.#local(),
      maxDisconnection: recovery
        ? Duration.millis(recovery.maxDisconnectionDuration ?? 120_000)
        : undefined,
    })
  }

  /** The notification channel of this namespace. */
  get channel(): string {
    return this.#node.channel
  }

  /** Resolves once this namespace's channel is listened on (first time). */
  get ready(): Promise<void> {
    return this.#node.ready
  }

  /**
   * This namespace's LISTEN right now: whether its channel is listened on, and the PostgreSQL
   * backend pid of the server's LISTEN connection while it is up. For dashboards and fault drills.
   */
  listenStatus(): ListenStatus {
    return this.#node.listenStatus()
  }

  /** Whether the namespace relies on its server's heartbeats now, and which nodes stop it. */
  membershipStatus(): MembershipStatus {
    return this.#node.membershipStatus()
  }

  /** Starts listening on the namespace's channel and tracking the cluster's members. */
  override init(): void {
    this.#node.start()
  }

  /** Announces `ADAPTER_CLOSE`, waits for in-flight publishes, then releases everything. */
  override close(): Promise<void> {
    return (this.#closing ??= this.#node.close().then(this.#release))
  }

  /** Number of servers in this namespace's cluster, this one included. */
  override serverCount(): Promise<number> {
    return Promise.resolve(this.#node.serverCount())
  }

  override async broadcast(packet: any, opts: BroadcastOptions): Promise<void> {
    this.#node.broadcast(packet, opts)
  }

  override async addSockets(opts: BroadcastOptions, rooms: Array<Room>): Promise<void> {
    this.#node.rooms(MessageType.SOCKETS_JOIN, opts, rooms)
  }

  override async delSockets(opts: BroadcastOptions, rooms: Array<Room>): Promise<void> {
    this.#node.rooms(MessageType.SOCKETS_LEAVE, opts, rooms)
  }

  override async disconnectSockets(opts: BroadcastOptions, close: boolean): Promise<void> {
    this.#node.disconnectSockets(opts, close)
  }

  override fetchSockets(opts: BroadcastOptions): Promise<Array<any>> {
    return asking.fetchSockets(this.#node.asking, opts)
  }

  override async serverSideEmit(packet: Array<any>): Promise<any> {
    asking.serverSideEmit(this.#node.asking, packet)
  }

  /** Saves a disconnected socket's session in PostgreSQL (recovery on); never rejects. */
  override persistSession(session: Omit<Session, "missedPackets">): void {
    this.#node.recovery?.persist(session)
  }

  // The session of a connected socket is written when it connects and when its rooms change, so
  // that it survives this server being killed: see `Recovery`.
  override addAll(id: string, rooms: Set<Room>): void {
    super.addAll(id, rooms)
    this.#node.recovery?.joined(id)
  }

  override del(id: string, room: Room): void {
    super.del(id, room)
    this.#node.recovery?.left(id)
  }

  override delAll(id: string): void {
    super.delAll(id)
    this.#node.recovery?.gone(id)
  }

  /**
   * Restores a session from any server of the cluster, with the packets it missed; `null` when
   * it is unknown, expired, its offset is unknown or too old, or PostgreSQL does not answer
   * within `requestsTimeout`: Socket.IO then connects the client as a new socket.
   */
  // Not async: awaiting would put microtasks between the restore's end and Socket.IO building the
  // socket (see RecoveredDelivery.restore).
  override restoreSession(pid: PrivateSessionId, offset: string): Promise<Session> {
    return this.#node.recovery?.restore(pid, offset) ?? Promise.resolve(NOT_RESTORED)
  }

  // What socket.io-adapter itself publishes (broadcasts with acknowledgements, and answers to
  // other nodes) takes the node's one way out. Stored broadcasts, the ones with an offset, do not.
  protected override doPublish(message: ClusterMessage): Promise<string> {
    return this.#node.publish(message as Body).then(() => "")
  }

  protected override doPublishResponse(uid: string, response: ClusterResponse): Promise<void> {
    return asking.answer(this.#node.asking, uid, response as Body)
  }

  // This server's sockets, through the in-memory adapter, and ClusterAdapter's own handling of
  // other nodes' messages (acknowledgements, answers to their requests).
  #local(): Local {
    return {
      broadcast: (packet, opts) => Adapter.prototype.broadcast.call(this, packet, opts),
      addSockets: (opts, rooms) => Adapter.prototype.addSockets.call(this, opts, rooms),
      delSockets: (opts, rooms) => Adapter.prototype.delSockets.call(this, opts, rooms),
      disconnectSockets: (opts, close) =>
        Adapter.prototype.disconnectSockets.call(this, opts, close),
      fetchSockets: (opts) => Adapter.prototype.fetchSockets.call(this, opts),
      onMessage: (message) => super.onMessage(message as ClusterMessage),
      sockets: this.nsp.sockets,
    }
  }
}

/**
 * Returns what `io.adapter()` takes: every namespace of the server gets a `PostgresAdapter`, all
 * on one runtime over `pool` (one dedicated LISTEN connection besides). Options are validated
 * here: a bad one throws an error that names it. The pool is never ended by us.
 *
 * With a list of pools of several PostgreSQL servers, each namespace lives on one of them, chosen
 * by rendezvous hashing of its channel's name (`Placement`), with its attachments and recovery
 * rows; in the dynamic subscription modes each room channel on the server its own name picks
 * (`roomPlacement: "room"`, the default) or with its namespace. One runtime (and LISTEN
 * connection) per server that holds a channel of this server. Every node must be given the same
 * list and options (see "Several PostgreSQL servers" in the README).
 */
export function createAdapter(
  pools: Pools,
  options?: AdapterConfig.AdapterOptions,
): (nsp: any) => PostgresAdapter {
  const servers = Placement.decodePoolsSync(pools, "createAdapter(pool, options)")
  const config = withServerList(AdapterConfig.decodeSync(options), servers)
  // One gate for the server: a publish in any namespace follows the room LISTENs begun before it.
  const gate = new ListenGate(Duration.toMillis(config.publishTimeout))
  const placement = Placement.make(servers.map((server) => server.name))
  const shared = withRoomsPlaced(
    servers.map(({ pool }) => sharedOf(pool, config, gate, options)),
    placement,
  )
  // A `function`, not an arrow: Socket.IO calls it with `new`.
  return function (nsp: any) {
    const at = placement.indexOf(channelName(config.channelPrefix, nsp.name))
    return new PostgresAdapter(nsp, shared[at]!)
  }
}

/**
 * With rooms placed apart (`Placement.roomsApart`), each server's namespaces get where their
 * rooms' channels live: a room on another server uses that server's runtime (`internal/placed.ts`).
 */
const withRoomsPlaced = (
  shared: ReadonlyArray<Shared>,
  placement: Placement.Placement,
): ReadonlyArray<Shared> => {
  if (shared.length === 0 || !Placement.roomsApart(shared.length, shared[0]!.config)) return shared
  const servers: ReadonlyArray<RoomServer> = shared.map(({ acquire, release }, index) => ({
    index,
    acquire,
    release,
  }))
  return shared.map((own, at) => ({
    ...own,
    placeRoom: (channel: string) => {
      const index = placement.indexOf(channel)
      return index === at ? undefined : servers[index]
    },
  }))
}

// Offsets of connection state recovery follow one order per namespace: its rooms on one server.
const recoveryWithRoomsApart = () =>
  new ConfigError({
    option: "roomPlacement",
    message:
      'Invalid option roomPlacement: "room" (the default with several PostgreSQL servers in a ' +
      "dynamic subscriptionMode) places rooms apart from their namespace, which " +
      'connectionStateRecovery cannot follow: set roomPlacement: "namespace" on every node and ' +
      "emitter of the cluster",
  })

// The runtime of one PostgreSQL server, made when its first namespace comes, disposed after its
// last one closed.
const sharedOf = (
  pool: pg.Pool,
  config: AdapterConfig.ClusterConfig,
  gate: ListenGate,
  options: AdapterConfig.AdapterOptions | undefined,
): Shared => {
  const layer = Cluster.layer.pipe(
    Layer.provide(
      Layer.merge(Layer.succeed(AdapterConfig.AdapterConfig, config), Database.layerPool(pool)),
    ),
    // Kept in the runtime's context: the namespaces report through it too.
    Layer.provideMerge(
      Layer.succeed(ErrorHandler, options?.errorHandler ?? DebugLog.makeDefaultErrorHandler()),
    ),
    // A plain app's console stays quiet: logs go to `debug`, failures to the errorHandler.
    Layer.provideMerge(DebugLog.layer),
  )
  let runtime: ManagedRuntime.ManagedRuntime<Cluster.Services, never> | undefined
  let users = 0
  return {
    config,
    gate,
    acquire: () => {
      users++
      return (runtime ??= ManagedRuntime.make(layer))
    },
    release: async () => {
      if (--users > 0 || runtime === undefined) return
      const last = runtime
      runtime = undefined
      await last.dispose()
    },
  }
}

/**
 * The Effect way to get what `io.adapter()` takes: an adapter factory on the current context, for
 * apps that provide the cluster layers themselves (e.g. `Cluster.layerPool(pool, options)`). The
 * services live as long as the layer that provides them; closing namespaces releases nothing.
 */
export const makeAdapterFactory: Effect.Effect<
  (nsp: any) => PostgresAdapter,
  never,
  Cluster.Services
> = Effect.gen(function* () {
  // Logs, spans, metrics and the ErrorHandler are the application's.
  const runner = fromContext(yield* Effect.context<Cluster.Services>())
  const config = yield* AdapterConfig.AdapterConfig
  const shared: Shared = {
    config,
    gate: new ListenGate(Duration.toMillis(config.publishTimeout)),
    acquire: () => runner,
    release: () => Promise.resolve(),
  }
  return function (nsp: any) {
    return new PostgresAdapter(nsp, shared)
  }
})

// With several PostgreSQL servers, the heartbeats carry the id of their list and of where rooms
// live (a node given another list, or another roomPlacement, is warned about).
const withServerList = (
  config: AdapterConfig.ClusterConfig,
  servers: ReadonlyArray<Placement.Server<unknown>>,
): AdapterConfig.ClusterConfig =>
  servers.length < 2
    ? config
    : {
        ...config,
        serverList: Placement.listId(
          servers.map((server) => server.name),
          { roomsApart: Placement.roomsApart(servers.length, config) },
        ),
      }

/**
 * {@link makeAdapterFactory} over several PostgreSQL servers, for Effect apps: one cluster per
 * server (`Cluster.layerPool(pool, options)`, built in the current scope, on the application's
 * context: its logger, tracer and `ErrorHandler`), each namespace placed on one of them as
 * `createAdapter(pools)` places it. A bad option or pool list fails with a `ConfigError` naming it.
 */
export const makeAdapterFactoryPools = (
  pools: Pools,
  options?: AdapterConfig.AdapterOptions,
): Effect.Effect<(nsp: any) => PostgresAdapter, ConfigError, Scope.Scope> =>
  Effect.gen(function* () {
    const servers = yield* Effect.try({
      try: () => Placement.decodePoolsSync(pools, "makeAdapterFactoryPools(pools, options)"),
      catch: (e) =>
        e instanceof ConfigError ? e : new ConfigError({ option: "pools", message: String(e) }),
    })
    const config = withServerList(yield* Effect.fromResult(AdapterConfig.decode(options)), servers)
    const app = yield* Effect.context<never>()
    const gate = new ListenGate(Duration.toMillis(config.publishTimeout))
    const shared: Array<Shared> = []
    for (const { pool } of servers) {
      const services = yield* Layer.build(
        Cluster.layer.pipe(
          Layer.provide(
            Layer.merge(
              Layer.succeed(AdapterConfig.AdapterConfig, config),
              Database.layerPool(pool),
            ),
          ),
        ),
      )
      const runner = fromContext(Context.merge(app, services))
      shared.push({ config, gate, acquire: () => runner, release: () => Promise.resolve() })
    }
    const placement = Placement.make(servers.map((server) => server.name))
    const placed = withRoomsPlaced(shared, placement)
    return function (nsp: any) {
      return new PostgresAdapter(
        nsp,
        placed[placement.indexOf(channelName(config.channelPrefix, nsp.name))]!,
      )
    }
  })
