/**
 * Connection state recovery for one namespace node: what the node hands to recovery's delivery
 * (stored broadcasts, offset order, catch-up after a lost LISTEN connection, restores) and to its
 * session writer. Built only when the server runs with `connectionStateRecovery`.
 */
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Scope from "effect/Scope"
import type { BroadcastOptions, PrivateSessionId, Session } from "socket.io-adapter"
import { broadcastChannel, privateChannelName } from "../Channel.js"
import type * as Cluster from "../Cluster.js"
import * as Codec from "../Codec.js"
import type * as AdapterConfig from "../AdapterConfig.js"
import { Listener } from "../Listener.js"
import * as Protocol from "../Protocol.js"
import type { Local } from "../Namespace.js"
import { isStorable, RecoveredDelivery, type Route } from "../recovery/Delivery.js"
import type { Outbox } from "./outbox.js"
import type { RoomChannels } from "./rooms.js"
import type { Runner } from "./runner.js"
import { SessionWriter } from "../recovery/SessionWriter.js"

const { MessageType } = Protocol

export { NOT_RESTORED } from "../recovery/Delivery.js"

/** What the recovery of a namespace needs from its node. */
export interface NamespaceRecoveryOptions {
  readonly nsp: string
  readonly channel: string
  /** How long sessions and packets are kept (`connectionStateRecovery.maxDisconnectionDuration`). */
  readonly maxDisconnection: Duration.Duration
  readonly config: AdapterConfig.ClusterConfig
  readonly runner: Runner
  readonly local: Local
  /** Counts recovery's writes and catch-ups in flight (`close()` waits for them). */
  readonly outbox: Outbox
  /** This node's uid. */
  readonly uid: string
  /** The node's publish, for what is not stored. */
  readonly publish: (body: Protocol.Body, span?: "broadcast") => void
  /** A stored message is about to be notified (it postpones the next heartbeat). */
  readonly published: () => void
  readonly report: (failure: unknown) => void
  readonly warn: (message: string) => void
  readonly onSkipped: (reason: string) => void
  /** Resolves once the namespace's channel is listened on (first time). */
  readonly ready: Promise<void>
  /** The node's room channels, in the dynamic subscription modes. */
  readonly rooms?: RoomChannels | undefined
}

// Runs restores once `ready` resolved, or `millis` after they were asked for: a restore still runs
// (and fails or succeeds on its own) while PostgreSQL cannot be listened on. Once ready, a restore
// runs at once, its own promise returned, with no microtasks added between its end and Socket.IO
// building the socket (see `Restores.restore`).
const afterFirstListen = (ready: Promise<void>, millis: number) => {
  let listened = false
  void ready.then(() => (listened = true))
  return <A>(restore: () => Promise<A>): Promise<A> => {
    if (listened) return restore()
    let timer: ReturnType<typeof setTimeout> | undefined
    const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, millis)))
    return Promise.race([ready, timeout])
      .finally(() => clearTimeout(timer))
      .then(restore)
  }
}

/** The recovery of a namespace whose server runs with `connectionStateRecovery`, else none. */
export const recoveryOf = (
  options: Omit<NamespaceRecoveryOptions, "maxDisconnection"> & {
    readonly maxDisconnection?: Duration.Duration | undefined
  },
): NamespaceRecovery | undefined => {
  const { maxDisconnection } = options
  return maxDisconnection === undefined
    ? undefined
    : new NamespaceRecovery({ ...options, maxDisconnection })
}

/**
 * Where a stored broadcast goes in the dynamic subscription modes, where a node hears only some of
 * a namespace's channels (see `RecoveredDelivery.store`): a one-room broadcast to the room's
 * channel, anything else to the namespace's, and a packet for one local socket to the node's
 * private channel, where only it listens, with nothing but its offset.
 */
class Routes {
  readonly #private: string
  readonly #heard: () => boolean
  /** What a packet for one local socket notifies: its offset is added to it. */
  readonly fence: Codec.WireMessage

  constructor(
    private readonly options: NamespaceRecoveryOptions,
    private readonly rooms: RoomChannels,
  ) {
    this.#private = privateChannelName(options.config.channelPrefix, options.uid)
    this.#heard = rooms.keep(this.#private)
    this.fence = Protocol.message(options.uid, options.nsp, { type: MessageType.HEARTBEAT })
  }

  /**
   * The route of a broadcast (`body` undefined: for one local socket), decided when it is sent.
   * What was missed on the namespace's channel while the connection was down is read back: it
   * counts as heard.
   */
  route(opts: BroadcastOptions, body: unknown): () => Route {
    const { config, nsp, channel } = this.options
    if (body === undefined) return () => ({ channel: this.#private, heard: this.#heard() })
    const room = broadcastChannel(config, nsp, opts.rooms)
    if (room === undefined) return () => ({ channel, heard: true })
    const name = opts.rooms.values().next().value
    return () => ({ channel: room, heard: this.rooms.hears(name) })
  }
}

/** Stores, orders and restores one namespace's packets, and writes its sessions. */
export class NamespaceRecovery {
  readonly #delivery: RecoveredDelivery
  readonly #sessions: SessionWriter
  readonly #afterListen: <A>(restore: () => Promise<A>) => Promise<A>
  /** In the dynamic modes: where stored broadcasts go. */
  readonly #routes: Routes | undefined
  #backendPid: (() => number | undefined) | undefined

  constructor(private readonly options: NamespaceRecoveryOptions) {
    const { config, local, outbox, rooms } = options
    this.#routes = rooms && new Routes(options, rooms)
    this.#afterListen = afterFirstListen(options.ready, Duration.toMillis(config.requestsTimeout))
    const run = <A, E>(effect: Effect.Effect<A, E, Cluster.Services>) =>
      options.runner.runPromiseExit(effect)
    this.#sessions = new SessionWriter({
      nsp: options.nsp,
      maxDisconnection: options.maxDisconnection,
      timeout: config.publishTimeout,
      run,
      report: (exit) => {
        if (Exit.isFailure(exit) && !Cause.hasInterruptsOnly(exit.cause)) {
          options.report(Cause.squash(exit.cause))
        }
      },
      socket: (sid) => local.sockets.get(sid),
      backendPid: () => this.#backendPid?.(),
      begin: () => outbox.begin(),
      end: () => outbox.end(),
    })
    this.#delivery = new RecoveredDelivery({
      ...options, // nsp, channel, maxDisconnection, report, warn, onSkipped, published
      publishTimeout: config.publishTimeout,
      requestsTimeout: config.requestsTimeout,
      run,
      begin: () => outbox.begin(),
      end: () => outbox.end(),
      deliver: local.broadcast,
      onMessage: local.onMessage,
      gate: rooms?.gate,
      listenRooms: rooms && ((sessionRooms) => rooms.hold(sessionRooms)),
    })
  }

  /** A notification with this offset arrived: its packet is delivered in offset order. */
  readonly announce = (offset: string): void => this.#delivery.sequencer.announce(BigInt(offset))

  /** An announced packet will not be delivered (unreadable, attachment missing). */
  readonly retract = (offset: string): void => this.#delivery.sequencer.retract(BigInt(offset))

  /** Waits for recovery's tables (see `RecoveredDelivery.setup`); sessions follow the Listener. */
  readonly setup: Effect.Effect<void, never, Cluster.Services | Scope.Scope> = Effect.suspend(() =>
    Effect.gen({ self: this }, function* () {
      yield* this.#delivery.setup()
      this.#backendPid = (yield* Listener).unsafeBackendPid
    }),
  )

  /** The channel is listened on (again): on a new backend, and what was missed is read back. */
  listening(): void {
    for (const sid of this.options.local.sockets.keys()) this.#sessions.changed(sid)
    this.#delivery.catchUp()
  }

  /** The LISTEN connection was lost: deliveries wait for the catch-up (see `lost`). */
  lost(): void {
    this.#delivery.lost()
  }

  /** The node closes: no more live rows nor catch-ups; queued writes still go. */
  close(): void {
    this.#sessions.close()
    this.#delivery.close()
  }

  /**
   * An own notification, dropped unparsed; the offset of a stored one still counts: a store
   * reported as failed may have committed after all, and later own packets wait until it was seen.
   */
  ownSeen(payload: string): void {
    const offset = Codec.storedOffsetOf(payload)
    if (offset !== undefined) this.#delivery.sequencer.seenUpTo(BigInt(offset))
  }

  /**
   * A broadcast of this server: a stored packet is stored and notified by one statement, then
   * delivered here with its offset; another is delivered after the stored ones sent before it.
   * With recovery, Socket.IO sends even `socket.emit` this way: one local socket's packet is
   * not notified.
   */
  broadcast(packet: any, opts: BroadcastOptions): void {
    const { local, nsp, uid } = this.options
    const toLocalSocket =
      opts.rooms.size === 1 && local.sockets.has(opts.rooms.values().next().value!)
    const body = toLocalSocket
      ? undefined
      : ({
          type: MessageType.BROADCAST,
          data: { packet, opts: Protocol.encodeOpts(opts) },
        } as const)
    if (isStorable(packet, opts)) {
      const message = body && Protocol.message(uid, nsp, body)
      const routes = this.#routes
      if (routes === undefined) return this.#delivery.store(packet, opts, message)
      return this.#delivery.store(packet, opts, message ?? routes.fence, routes.route(opts, body))
    }
    if (body !== undefined) this.options.publish(body, "broadcast")
    this.#delivery.sequencer.own(() => local.broadcast(packet, opts))
  }

  /** Another node's message, delivered in offset order with this server's own packets. */
  deliver(message: Protocol.Message): void {
    this.#delivery.sequence(message)
  }

  /** Another node's message that will not be delivered: it must not hold own packets back. */
  drop(message: Protocol.Message): void {
    if (message.type === MessageType.BROADCAST && message.offset !== undefined) {
      this.retract(message.offset)
    }
  }

  /**
   * Restores a session with the packets it missed (see `RecoveredDelivery.restore`), once the
   * namespace listens (at most `requestsTimeout` later): a snapshot taken before it would miss
   * the packets stored between the two, which this server never hears of.
   */
  restore(pid: PrivateSessionId, offset: string): Promise<Session> {
    return this.#afterListen(() => this.#delivery.restore(pid, offset))
  }

  /** A socket disconnected for a reason Socket.IO recovers from: its session is kept. */
  persist(session: Omit<Session, "missedPackets">): void {
    this.#sessions.disconnected({ ...session, nsp: this.options.nsp })
  }

  /** A socket connected or joined rooms: its live session is (re)written. */
  joined(sid: string): void {
    this.#sessions.changed(sid)
  }

  /** A socket left a room. */
  left(sid: string): void {
    if (this.#sessions.isLive(sid)) this.#sessions.changed(sid)
  }

  /** A socket is gone for good (or was persisted just before): its live row goes. */
  gone(sid: string): void {
    this.#sessions.left(sid)
  }
}
