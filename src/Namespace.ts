/**
 * One namespace of this server in the cluster: the node behind each `PostgresAdapter`.
 *
 * What reaches the namespace takes one path (`internal/inbound.ts`): a notification on its channel
 * → own ones dropped by their prefix, unparsed → decoded and checked against the protocol, delivered
 * in commit order with attachments fetched ahead (`internal/inbox.ts`) → the typed message:
 * heartbeats, departures and answers are the node's, the rest goes to socket.io-adapter (in offset
 * order with connection state recovery, `internal/recovering.ts`).
 *
 * The node also publishes (one path, `publish`), announces itself once it listens, keeps the
 * namespace's members and pending requests (`Requests`, `internal/asking.ts`), and with recovery
 * stores broadcasts and writes sessions.
 *
 * @since 0.2.0
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import type { BroadcastOptions, Room } from "socket.io-adapter"
import { broadcastChannel, channelName } from "./Channel.js"
import type * as Codec from "./Codec.js"
import type * as AdapterConfig from "./AdapterConfig.js"
import { Heartbeat, type Membership } from "./Heartbeat.js"
import * as asking from "./internal/asking.js"
import { listen, ListenWatch } from "./internal/inbound.js"
import { makeSkipLogger } from "./internal/inbox.js"
import { Outbox } from "./internal/outbox.js"
import { type PlaceRoom, PlacedOutboxes } from "./internal/placed.js"
import { type NamespaceRecovery, recoveryOf } from "./internal/recovering.js"
import { Replies } from "./internal/replies.js"
import type { RoomChannels } from "./internal/rooms.js"
import { makeReporter, type Runner } from "./internal/runner.js"
import * as Protocol from "./Protocol.js"
import { Requests } from "./Requests.js"

const { MessageType } = Protocol

/** What the node drives in socket.io-adapter: this server's own sockets, and the base class. */
export interface Local {
  /** Delivers a packet to this server's matching sockets. */
  readonly broadcast: (packet: any, opts: BroadcastOptions) => void
  /** This server's matching sockets join rooms. */
  readonly addSockets: (opts: BroadcastOptions, rooms: Array<Room>) => void
  /** This server's matching sockets leave rooms. */
  readonly delSockets: (opts: BroadcastOptions, rooms: Array<Room>) => void
  /** This server's matching sockets are disconnected. */
  readonly disconnectSockets: (opts: BroadcastOptions, close: boolean) => void
  /** This server's matching sockets. */
  readonly fetchSockets: (opts: BroadcastOptions) => Promise<Array<unknown>>
  /** socket.io-adapter's own handling of another node's message (acknowledgements, answers). */
  readonly onMessage: (message: Protocol.Message) => void
  /** The namespace's connected sockets. */
  readonly sockets: ReadonlyMap<
    string,
    { readonly pid?: unknown; readonly rooms: Set<unknown>; readonly data: unknown }
  >
}

/** What a node needs. */
export interface NamespaceOptions {
  readonly nsp: string
  /** This node's uid (socket.io-adapter's, one per namespace adapter). */
  readonly uid: string
  readonly config: AdapterConfig.ClusterConfig
  readonly runner: Runner
  readonly local: Local
  /** Set when the server runs with `connectionStateRecovery`: how long sessions are kept. */
  readonly maxDisconnection?: Duration.Duration | undefined
  /** The rooms' channels, in the dynamic subscription modes (see `internal/rooms.ts`). */
  readonly rooms?: RoomChannels | undefined
  /** Where room channels live when not with the namespace (see `internal/placed.ts`). */
  readonly placeRoom?: PlaceRoom | undefined
}

/** A namespace's LISTEN right now, as {@link NamespaceNode.listenStatus} tells it. */
export interface ListenStatus {
  /**
   * Whether the namespace's channel is listened on: not before its first LISTEN holds, nor while
   * the LISTEN connection is down, nor once the node closed.
   */
  readonly listening: boolean
  /**
   * The PostgreSQL backend pid (`pg_stat_activity.pid`) of the server's LISTEN connection, shared
   * by its namespaces, while it is up; else `undefined`.
   */
  readonly backendPid: number | undefined
  /** The room channels listened on now; only in the dynamic subscription modes, while open. */
  readonly roomChannels?: ReadonlyArray<string>
  /**
   * Whether the node's private channel is listened on: its requests then ask nodes of ours to
   * answer there, where only it hears them, instead of on the namespace's channel.
   */
  readonly privateChannel: boolean
}

/** How a namespace keeps its members now, as {@link NamespaceNode.membershipStatus} tells it. */
export interface MembershipStatus {
  /**
   * Whether the namespace relies on its server's heartbeats (one per server on the server channel)
   * and sends none of its own: every node heard in it is ours, and `membership` is `"auto"`.
   */
  readonly serverLevel: boolean
  /** The uids of the nodes of another kind (0.5.0) heard in the namespace and still members. */
  readonly foreignNodes: ReadonlyArray<string>
  /**
   * The wire the namespace's messages take now: 0 for 0.5.0's (a node of another kind is heard),
   * 1 packed in the notifications, 2 packed with deflated JSON (every node speaks version 2 of our
   * extensions). See the README's packed wire.
   */
  readonly wire: Codec.Wire
}

/** A namespace of this server in the cluster. */
export class NamespaceNode {
  /** The namespace's notification channel. */
  readonly channel: string
  readonly #watch = new ListenWatch()
  /** Resolves once the channel is listened on (first time). */
  readonly ready: Promise<void> = this.#watch.ready
  readonly #recovery: NamespaceRecovery | undefined
  readonly #outbox: Outbox
  readonly #outboxes: PlacedOutboxes
  readonly #requests = new Requests()
  readonly #log: { readonly skip: (reason: string) => void; readonly warn: (line: string) => void }
  /** What `fetchSockets` and `serverSideEmit` of this node need (see `internal/asking.ts`). */
  readonly asking: asking.Asking
  #membership: Membership | undefined
  #fiber: Fiber.Fiber<never> | undefined
  #closed = false
  #stopped = false

  constructor(private readonly options: NamespaceOptions) {
    const { config, nsp, runner } = options
    this.channel = channelName(config.channelPrefix, nsp)
    const { report, warn } = makeReporter(runner, nsp, {
      closed: () => this.#closed,
      stopped: () => this.#stopped,
    })
    this.#log = { skip: makeSkipLogger(warn), warn }
    const wire = () => wireOf(this.#membership)
    const outboxOptions = { channel: this.channel, report, gate: options.rooms?.gate, wire }
    this.#outbox = new Outbox({ ...outboxOptions, runner })
    this.#outboxes = new PlacedOutboxes(this.#outbox, {
      ...outboxOptions,
      placeRoom: options.placeRoom,
      idleMs: Duration.toMillis(config.heartbeatTimeout),
    })
    this.asking = {
      ...options,
      requests: this.#requests,
      nodes: () => this.#membership?.nodes() ?? [],
      publish: (body) => this.publish(body),
      closed: () => this.#closed,
      traced: () => this.#outbox.traced,
      answersHere: () => this.#watch.answersHere(),
      replies: new Replies(Duration.toMillis(config.requestsTimeout)),
      sendOn: (channel, wire) => this.#outbox.send(wire, undefined, channel),
    }
    this.#recovery = recoveryOf({
      ...options,
      channel: this.channel,
      outbox: this.#outbox,
      publish: (body, span) => void this.publish(body, span),
      published: () => this.#membership?.published(),
      report,
      warn,
      onSkipped: this.#log.skip,
      ready: this.ready,
    })
  }

  /** Connection state recovery, while the node is open and the server runs with it. */
  get recovery(): NamespaceRecovery | undefined {
    return this.#closed ? undefined : this.#recovery
  }

  /** Starts listening on the channel and tracking the namespace's members; returns at once. */
  start(): void {
    if (this.#fiber !== undefined || this.#closed) return
    this.#fiber = this.options.runner.runFork(
      this.#run.pipe(
        Effect.scoped,
        Effect.annotateLogs({ module: "Namespace", nsp: this.options.nsp }),
      ),
    )
  }

  readonly #run = Effect.gen({ self: this }, function* () {
    yield* this.#outbox.start
    if (this.#recovery !== undefined) yield* this.#recovery.setup
    const membership = yield* track(this.options, this.#requests, this.#log.warn, (b) =>
      this.publish(b),
    )
    this.#membership = membership
    yield* listen({
      ...this.asking,
      channel: this.channel,
      membership,
      recovery: this.#recovery,
      onSkipped: this.#log.skip,
      warn: this.#log.warn,
      watch: this.#watch,
    })
    return yield* Effect.never
  })

  /** Publishes `ADAPTER_CLOSE`, waits for what is in flight, ends pending requests, stops. */
  async close(): Promise<void> {
    if (this.#closed) return
    void this.publish({ type: MessageType.ADAPTER_CLOSE })
    this.#closed = true
    this.#recovery?.close()
    await this.#outboxes.close()
    this.#requests.close()
    const fiber = this.#fiber
    if (fiber !== undefined) await this.options.runner.runPromiseExit(Fiber.interrupt(fiber))
    this.#stopped = true
  }

  /** Whether the namespace's channel is listened on now, and on which PostgreSQL backend. */
  readonly listenStatus = (): ListenStatus => this.#watch.status(this.#closed)

  /** Whether the namespace relies on server-level heartbeats now, and which nodes stop it. */
  readonly membershipStatus = () => statusOf(this.#membership, this.options.config)

  /** Number of servers in this namespace's cluster, this one included. */
  readonly serverCount = (): number => 1 + (this.#membership?.nodes().length ?? 0)

  /** Publishes on the namespace's channel (which defers a heartbeat) or a room's; never rejects. */
  publish(body: Protocol.Body, span?: "broadcast", room?: string): Promise<void> {
    if (this.#closed) return Promise.resolve()
    if (room === undefined) this.#membership?.published()
    const wire = Protocol.message(this.options.uid, this.options.nsp, body)
    return this.#outboxes.of(room).send(wire, span, room)
  }

  /** Delivers a packet to the matching sockets of every node; never waits for PostgreSQL. */
  broadcast(packet: any, opts: BroadcastOptions): void {
    const { local } = this.options
    if (opts.flags?.local) return local.broadcast(packet, opts)
    if (this.#recovery !== undefined) return this.#recovery.broadcast(packet, opts)
    const data = { packet, opts: Protocol.encodeOpts(opts) }
    const room = broadcastChannel(this.options.config, this.options.nsp, opts.rooms)
    void this.publish({ type: MessageType.BROADCAST, data }, "broadcast", room)
    local.broadcast(packet, opts)
  }

  /** The matching sockets of every node join (`SOCKETS_JOIN`) or leave rooms. */
  rooms(type: RoomsType, opts: BroadcastOptions, rooms: Array<Room>): void {
    if (type === MessageType.SOCKETS_JOIN) this.options.local.addSockets(opts, rooms)
    else this.options.local.delSockets(opts, rooms)
    if (opts.flags?.local) return
    void this.publish({ type, data: { opts: Protocol.encodeOpts(opts), rooms } })
  }

  /** The matching sockets of every node are disconnected. */
  disconnectSockets(opts: BroadcastOptions, close: boolean): void {
    const data = { opts: Protocol.encodeOpts(opts), close }
    if (!opts.flags?.local) void this.publish({ type: MessageType.DISCONNECT_SOCKETS, data })
    this.options.local.disconnectSockets(opts, close)
  }
}

// The namespace's members (its heartbeats carry our marker); a node of another kind heard in a dynamic mode is warned about (once,
// again after it left).
const track = (
  options: { readonly nsp: string; readonly config: AdapterConfig.ClusterConfig },
  requests: Requests,
  warn: (line: string) => void,
  publish: (body: Protocol.Body) => Promise<void>,
) =>
  Effect.gen(function* () {
    const heartbeat = yield* Heartbeat
    const ours = heartbeat.marker
    const mode = options.config.subscriptionMode ?? "static"
    return yield* heartbeat.track({
      nsp: options.nsp,
      publishHeartbeat: Effect.promise(() => publish({ type: MessageType.HEARTBEAT, ours })),
      onNodeDown: (uid) => requests.forget(uid),
      onForeign: (uid) => mode !== "static" && warn(foreignWarning(mode, options.nsp, uid)),
      onOtherServers: (uid) =>
        warn(
          `node ${uid} in namespace ${JSON.stringify(options.nsp)} was given another list of ` +
            `PostgreSQL servers than this one (createAdapter(pools)), or another roomPlacement: ` +
            `channels that the two place on different servers are split between them. Give ` +
            `every node the same list and roomPlacement.`,
        ),
    })
  })

/**
 * A node of another kind (0.5.0) heard in a namespace of a dynamic cluster: it listens on the
 * namespace channel only, so broadcasts to single rooms never reach its clients.
 */
const foreignWarning = (mode: string, nsp: string, uid: string): string =>
  `a node that is not socket.io-postgres-effect (uid ${uid}, e.g. @socket.io/postgres-adapter ` +
  `0.5.0) is in namespace ${JSON.stringify(nsp)}, but this server runs with subscriptionMode ` +
  `"${mode}": broadcasts to one room go to that room's channel, which it never listens on, so its ` +
  `clients miss them. Mixed clusters need subscriptionMode "static".`

const statusOf = (
  membership: Membership | undefined,
  config: AdapterConfig.ClusterConfig,
): MembershipStatus => {
  const foreignNodes = membership?.foreign() ?? []
  const auto = config.membership !== "namespace"
  return {
    serverLevel: auto && foreignNodes.length === 0,
    foreignNodes,
    wire: wireOf(membership),
  }
}

// The wire of the namespace's messages now: packed once every node heard is ours, deflated JSON
// once they all speak version 2 (0.5.0's format until the node runs).
const wireOf = (membership: Membership | undefined): Codec.Wire =>
  membership === undefined || !membership.allOurs() ? 0 : membership.allOurs(2) ? 2 : 1

type RoomsType = typeof MessageType.SOCKETS_JOIN | typeof MessageType.SOCKETS_LEAVE
