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
import * as Runtime from "effect/Runtime"
import * as Schedule from "effect/Schedule"
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
import { Recovery, type StoredRow } from "./Recovery.js"
import { Sequencer } from "./internal/sequencer.js"
import { SessionWriter } from "./internal/sessions.js"

const { MessageType } = Codec

/** Runs the adapter's effects: a `ManagedRuntime` (facade) or the caller's runtime (Effect apps). */
interface Runner {
  readonly runFork: <A, E>(
    effect: Effect.Effect<A, E, Cluster.Services>,
  ) => Fiber.RuntimeFiber<A, E>
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
    Metrics.malformedNotifications.unsafeUpdate(1, [])
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

const decodeOptions = (opts: {
  rooms: Array<string>
  except: Array<string>
  flags?: BroadcastOptions["flags"]
}): BroadcastOptions => ({
  rooms: new Set(opts.rooms),
  except: new Set(opts.except),
  flags: opts.flags ?? {},
})

const NOT_RESTORED = null as unknown as Session

// Whether a packet sent with `opts` is for a socket in `rooms` (as Socket.IO's own adapter decides
// which stored packets a session missed).
const matches = (rooms: ReadonlyArray<string>, opts: BroadcastOptions): boolean =>
  (opts.rooms.size === 0 || rooms.some((room) => opts.rooms.has(room))) &&
  !rooms.some((room) => opts.except?.has(room))

const maxOffset = (a: bigint | undefined, b: bigint | undefined): bigint | undefined =>
  a === undefined || (b !== undefined && b > a) ? b : a

// How a stored broadcast's payload ends: `,"offset":"<digits>"}`.
const OFFSET_FIELD = `"offset":"`

/** At most this many packets are read back after the LISTEN connection was lost. */
const CATCH_UP_LIMIT = 100_000

const randomId = () => crypto.randomUUID().replaceAll("-", "").slice(0, 16)

// What Socket.IO keeps for recovery: an EVENT without acknowledgement, not volatile.
const isStorable = (packet: any, opts: BroadcastOptions): boolean =>
  packet.type === 2 && packet.id === undefined && opts.flags?.volatile === undefined

/** The `socket.io-adapter` adapter of one namespace, created by {@link createAdapter}. */
export class PostgresAdapter extends ClusterAdapter {
  /** The notification channel of this namespace. */
  readonly channel: string
  readonly #shared: Shared
  readonly #runtime: Runner
  readonly #requests = new Map<string, PendingRequest>()
  #publisher: Context.Tag.Service<Publisher> | undefined
  /** Publishes not settled yet; `close()` waits for them. */
  #pending = 0
  #slowPending = 0
  #drained: (() => void) | undefined
  #inbox: ((payload: string) => void) | undefined
  readonly #skip: (reason: string) => void
  #membership: Membership | undefined
  #fiber: Fiber.RuntimeFiber<never, never> | undefined
  #closed = false
  #listening: () => void = () => {}
  /** Resolves once this namespace's channel is listened on (first time). */
  readonly ready: Promise<void>
  readonly #selfPrefix: string
  /** Set when the server runs with `connectionStateRecovery`. */
  readonly #maxDisconnection: Duration.Duration | undefined
  readonly #sequencer: Sequencer<() => void> | undefined
  /** Restored sockets and the last offset their restore read: older packets are not resent. */
  readonly #restored = new Map<string, bigint>()
  /** Resolves with the Publisher once recovery's tables are there (recovery only). */
  #storeReady: Promise<Context.Tag.Service<Publisher> | undefined> | undefined
  #storeReadyResolve: ((publisher: Context.Tag.Service<Publisher> | undefined) => void) | undefined
  #storesWaiting = 0
  /** Session writes (recovery only). */
  #sessions: SessionWriter | undefined
  #listenerPid: (() => number | undefined) | undefined
  /** The LISTEN connection was lost and the packets missed are not read back yet. */
  #catchingUp = false
  #catchUpTimer: ReturnType<typeof setTimeout> | undefined
  /** Restores in flight, and the stored packets delivered meanwhile. */
  #restoring = 0
  #recorded: Array<{
    readonly offset: bigint
    readonly data: Array<unknown>
    readonly opts: BroadcastOptions
  }> = []
  /** Offsets up to this one were delivered, or committed before we listened. */
  #caughtUpTo: bigint | undefined

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
      this.#maxDisconnection = Duration.millis(recovery.maxDisconnectionDuration ?? 120_000)
      this.#sessions = new SessionWriter({
        nsp: nsp.name,
        maxDisconnection: this.#maxDisconnection,
        timeout: shared.config.publishTimeout,
        run: (effect) => this.#runtime.runPromiseExit(effect),
        report: (exit) => {
          if (Exit.isFailure(exit) && !Exit.isInterrupted(exit)) {
            this.#report(Cause.squash(exit.cause))
          }
        },
        socket: (sid) => this.nsp.sockets.get(sid),
        backendPid: () => this.#listenerPid?.(),
        begin: () => void this.#pending++,
        end: () => this.#settled(),
      })
      this.#sequencer = new Sequencer((deliver) => deliver())
      this.#storeReady = new Promise((resolve) => (this.#storeReadyResolve = resolve))
    }
  }

  /** Starts listening on the namespace's channel and tracking the cluster's members. */
  override init(): void {
    if (this.#fiber !== undefined || this.#closed) return
    this.#fiber = this.#runtime.runFork(
      Effect.gen(this, function* () {
        this.#publisher = yield* Publisher
        this.#inbox = makeInbox({
          store: yield* AttachmentStore,
          deliver: (message) => this.#handle(message),
          skip: this.#skip,
          wanted: (notification) => this.#wanted(notification),
          ...(this.#sequencer === undefined
            ? {}
            : {
                announce: (offset: string) => this.#sequencer!.announce(BigInt(offset)),
                retract: (offset: string) => this.#sequencer!.retract(BigInt(offset)),
              }),
        })
        if (this.#maxDisconnection !== undefined) yield* this.#setupRecovery()
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
            if (this.#sequencer !== undefined) {
              // A new LISTEN connection is a new backend: tie the live sessions to it.
              for (const sid of this.nsp.sockets.keys()) this.#sessions?.changed(sid)
              this.#catchUp()
            }
          },
          onLost: () => {
            // Hold every delivery until what was missed meanwhile is read back (#catchUp), for
            // at most publishTimeout: then local delivery goes on, and what was missed is lost.
            const sequencer = this.#sequencer
            if (sequencer === undefined || this.#catchingUp) return
            this.#catchingUp = true
            sequencer.hold()
            this.#catchUpTimer = setTimeout(() => {
              if (!this.#catchingUp) return
              this.#catchingUp = false
              this.#log("warning", "LISTEN connection still down: delivering without catching up")
              sequencer.stopWaiting()
              sequencer.release()
            }, Duration.toMillis(this.#shared.config.publishTimeout))
          },
        })
        return yield* Effect.never
      }).pipe(Effect.scoped, Effect.annotateLogs({ module: "Adapter", nsp: this.nsp.name })),
    )
  }

  // Recovery's tables must exist before the first packet is stored: wait for them (up to 5 s,
  // then stores fail and are delivered without offset while creation goes on in the background).
  *#setupRecovery() {
    const recovery = yield* Recovery
    const config = yield* Config.Config
    yield* recovery.retain(this.#maxDisconnection!)
    if (config.createTable) {
      const setup = yield* recovery.ensureTables.pipe(
        Effect.tapError((error) =>
          Effect.logWarning(`creating the recovery tables failed: ${error.message}`),
        ),
        Effect.retry(
          Schedule.exponential("200 millis").pipe(Schedule.union(Schedule.spaced("10 seconds"))),
        ),
        Effect.forkScoped,
      )
      yield* setup.await.pipe(Effect.timeout("5 seconds"), Effect.ignore)
    }
    this.#storeReadyResolve!(this.#publisher!)
    this.#storeReadyResolve = undefined
  }

  /** Announces `ADAPTER_CLOSE`, waits for in-flight publishes, then releases everything. */
  override async close(): Promise<void> {
    if (this.#closed) return
    this.#send({ type: MessageType.ADAPTER_CLOSE })
    this.#closed = true
    this.#sessions?.close()
    clearTimeout(this.#catchUpTimer)
    this.#storeReadyResolve?.(undefined)
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
    // With recovery, Socket.IO sends even `socket.emit` through here: not a cluster matter.
    const toLocalSocket =
      this.#sequencer !== undefined &&
      opts.rooms.size === 1 &&
      this.nsp.sockets.has(opts.rooms.values().next().value)
    if (this.#sequencer !== undefined && isStorable(packet, opts)) {
      return this.#store(packet, opts, toLocalSocket)
    }
    if (!toLocalSocket) {
      this.#send({ type: MessageType.BROADCAST, data: { packet, opts: encodeOptions(opts) } })
    }
    // With recovery, after the stored packets sent before it.
    if (this.#sequencer !== undefined) {
      return this.#sequencer.own(() => Adapter.prototype.broadcast.call(this, packet, opts))
    }
    Adapter.prototype.broadcast.call(this, packet, opts)
  }

  // Stores the packet (and notifies it, unless it is for one local socket), then delivers it
  // locally with its offset, in offset order with the other nodes' packets.
  #store(packet: any, opts: BroadcastOptions, toLocalSocket: boolean): void {
    if (this.#closed) return Adapter.prototype.broadcast.call(this, packet, opts)
    const sequencer = this.#sequencer!
    const args = packet.data as Array<unknown>
    const stored = {
      nsp: this.nsp.name,
      rooms: [...opts.rooms].map(String),
      except: [...(opts.except ?? [])].map(String),
      data: args,
    }
    const message = toLocalSocket
      ? undefined
      : ({
          uid: this.uid,
          nsp: this.nsp.name,
          type: MessageType.BROADCAST,
          data: { packet, opts: encodeOptions(opts) },
        } as Codec.WireMessage)
    if (message !== undefined) this.#membership?.published()
    this.#pending++
    const slot = sequencer.beginStore()
    // Not stored, so not replayable: local clients still get it, in its place, without an offset.
    const unstored = () => sequencer.endStore(slot, () => this.#deliverLocally(packet, opts))
    const run = (publisher: Context.Tag.Service<Publisher> | undefined) => {
      if (publisher === undefined) {
        unstored()
        return this.#settled()
      }
      publisher.unsafeStore(this.channel, message, stored, (error, offset, after) => {
        if (error !== undefined || offset === undefined) {
          if (error !== undefined) this.#report(error)
          unstored()
        } else {
          const at = BigInt(offset)
          const deliver = () => {
            args.push(offset)
            this.#deliverLocally(packet, opts, at)
          }
          sequencer.endStore(slot, deliver, at, after === undefined ? undefined : BigInt(after))
        }
        this.#settled()
      })
    }
    // Until the tables are there, stores wait for the runtime, in order.
    if (this.#storeReadyResolve === undefined && this.#storesWaiting === 0) {
      return run(this.#publisher!)
    }
    this.#storesWaiting++
    void this.#storeReady!.then((publisher) => {
      this.#storesWaiting--
      run(publisher)
    })
  }

  // Local delivery of a packet; a socket whose restore already replayed it is left out.
  #deliverLocally(packet: any, opts: BroadcastOptions, offset?: bigint): void {
    let except = opts.except
    if (offset !== undefined && this.#restored.size > 0) {
      for (const [sid, last] of this.#restored) {
        // Deliveries come in offset order: past `last`, the entry has done its job.
        if (offset > last) this.#restored.delete(sid)
        else (except = new Set(except)).add(sid)
      }
    }
    if (offset !== undefined && this.#restoring > 0) {
      this.#recorded.push({ offset, data: packet.data, opts })
    }
    try {
      Adapter.prototype.broadcast.call(
        this,
        packet,
        except === opts.except ? opts : { ...opts, except },
      )
    } catch (e) {
      this.#skip(`local delivery failed: ${(e as Error)?.message}`)
    }
  }

  /** Saves a disconnected socket's session in PostgreSQL (recovery on); never rejects. */
  override persistSession(session: Omit<Session, "missedPackets">): void {
    if (this.#closed) return
    this.#sessions?.disconnected({ ...session, nsp: this.nsp.name })
  }

  // With recovery, nothing is lost while the LISTEN connection is down: the stored packets after
  // the last delivered offset are read back and delivered first, in order, then the live ones.
  // The first time, the namespace's last offset is where listening started.
  #catchUp(): void {
    const sequencer = this.#sequencer!
    const catchingUp = this.#catchingUp
    if (!catchingUp && this.#caughtUpTo !== undefined) return
    const from = maxOffset(this.#caughtUpTo, sequencer.lastDelivered)
    const nsp = this.nsp.name
    this.#pending++
    void this.#runtime
      .runPromiseExit(
        Effect.flatMap(Recovery, (recovery) =>
          Effect.flatMap(recovery.lastOffset(nsp), (last) =>
            !catchingUp || from === undefined
              ? Effect.succeed({ last, rows: [] as ReadonlyArray<StoredRow> })
              : Effect.map(recovery.packetsSince(nsp, from, CATCH_UP_LIMIT), (rows) => ({
                  last,
                  rows,
                })),
          ),
        ).pipe(
          Effect.retry(
            Schedule.exponential("100 millis").pipe(Schedule.intersect(Schedule.recurs(4))),
          ),
          // Deliveries are held meanwhile: a frozen PostgreSQL must not hold them for ever.
          Effect.timeout(this.#shared.config.publishTimeout),
        ),
      )
      .then((exit) => {
        this.#settled()
        if (Exit.isSuccess(exit)) {
          this.#caughtUpTo = maxOffset(this.#caughtUpTo, exit.value.last)
          // Up to there, notifications came before we listened, were read back, or are lost:
          // none to wait for.
          sequencer.seenUpTo(exit.value.last)
        } else {
          if (!Exit.isInterrupted(exit)) this.#report(Cause.squash(exit.cause))
          // Unknown: the own packets sent so far stop waiting for earlier notifications.
          sequencer.stopWaiting()
        }
        // Not caught up in time: the hold was released already (see onLost).
        if (!catchingUp || !this.#catchingUp) return
        this.#catchingUp = false
        clearTimeout(this.#catchUpTimer)
        // Could not read them back: what was missed stays missed, live delivery resumes.
        if (Exit.isFailure(exit)) return sequencer.release()
        // Nothing delivered and no start known: nothing to read back.
        if (from === undefined) return sequencer.release()
        const { rows } = exit.value
        const last = rows.length > 0 ? rows[rows.length - 1]!.offset : from
        if (rows.length === CATCH_UP_LIMIT) {
          this.#log("warning", `more than ${CATCH_UP_LIMIT} packets missed; later ones are lost`)
        }
        sequencer.release({
          upTo: last,
          items: rows.map((row) => {
            const offset = String(row.offset)
            const packet = { type: 2, data: [...row.data, offset], nsp }
            const opts = decodeOptions({ rooms: [...row.rooms], except: [...row.except] })
            return {
              offset: row.offset,
              item: () => this.#deliverLocally(packet, opts, row.offset),
            }
          }),
        })
      })
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
  override async restoreSession(pid: PrivateSessionId, offset: string): Promise<Session> {
    if (this.#sequencer === undefined || this.#closed) return NOT_RESTORED
    // Packets delivered while the restore runs are recorded: the session's snapshot may predate
    // them, and the restored socket does not exist yet to receive them live.
    this.#restoring++
    const recorded = this.#recorded.length
    const exit = await this.#runtime.runPromiseExit(
      Effect.flatMap(Recovery, (recovery) => recovery.restore(this.nsp.name, pid, offset)).pipe(
        Effect.timeout(this.#shared.config.requestsTimeout),
      ),
    )
    const since = this.#recorded.slice(recorded)
    if (--this.#restoring === 0) this.#recorded = []
    if (Exit.isFailure(exit)) {
      if (!Exit.isInterrupted(exit)) this.#report(Cause.squash(exit.cause))
      return NOT_RESTORED
    }
    const session = exit.value
    if (session === undefined) return NOT_RESTORED
    Metrics.sessionsRestored.unsafeUpdate(1, [])
    // Those after the snapshot that are the socket's go with the missed ones. Socket.IO builds the
    // socket in the microtasks after we return: with no delivery in between, later ones reach it
    // live, and earlier ones that arrive late are not sent to it again.
    const missedPackets = [...session.missedPackets]
    let last = session.last
    for (const entry of since) {
      if (entry.offset <= last || !matches(session.rooms, entry.opts)) continue
      missedPackets.push(entry.data)
      last = entry.offset
    }
    this.#restored.set(session.sid, last)
    return {
      sid: session.sid,
      pid: session.pid,
      rooms: session.rooms,
      data: session.data,
      missedPackets,
    }
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
    // `uid` first: receivers recognise their own notifications by this prefix, unparsed.
    const wire = {
      uid: this.uid,
      nsp: this.nsp.name,
      type: message.type,
      data: message.data,
    } as Codec.WireMessage
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
        if (Exit.isFailure(exit) && !Exit.isInterrupted(exit)) {
          this.#report(Cause.squash(exit.cause))
        }
        this.#settled()
      })
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
    Metrics.notificationsReceived.unsafeUpdate(1, [])
    // Ours start with this prefix (inline and attachment headers alike): no need to parse them.
    if (payload.startsWith(this.#selfPrefix)) {
      // Except for the offset of a stored one (its last field): a store reported as failed may
      // have committed after all, and later own packets wait until its offset was seen.
      if (this.#sequencer !== undefined) {
        const at = payload.lastIndexOf(OFFSET_FIELD)
        const offset = at === -1 ? "" : payload.slice(at + OFFSET_FIELD.length, -2)
        if (Codec.isOffset(offset)) this.#sequencer.seenUpTo(BigInt(offset))
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
      if (this.#sequencer !== undefined && Codec.isOffset(message.offset)) {
        this.#sequencer.retract(BigInt(message.offset))
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
          if (this.#sequencer === undefined) return super.onMessage(full)
          return this.#sequence(full)
      }
    } catch (e) {
      this.#skip(`message of type ${message.type} failed: ${(e as Error)?.message}`)
    }
  }

  // Recovery on: packets of other nodes keep their order with our own (see Sequencer). A stored
  // broadcast gets its offset as last argument; no other message gets one.
  #sequence(message: any): void {
    const data = message.data
    if (message.type !== MessageType.BROADCAST || data.requestId !== undefined) {
      if (Codec.isOffset(message.offset)) this.#sequencer!.retract(BigInt(message.offset))
      return this.#sequencer!.push(undefined, () => {
        try {
          super.onMessage(message)
        } catch (e) {
          this.#skip(`message of type ${message.type} failed: ${(e as Error)?.message}`)
        }
      })
    }
    const offset = Codec.isOffset(message.offset) ? message.offset : undefined
    const packet = data.packet
    const opts = decodeOptions(data.opts)
    this.#sequencer!.push(offset === undefined ? undefined : BigInt(offset), () => {
      if (offset === undefined) return this.#deliverLocally(packet, opts, undefined)
      if (isStorable(packet, opts)) packet.data.push(offset)
      this.#deliverLocally(packet, opts, BigInt(offset))
    })
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
  Cluster.Services | ErrorHandler
> = Effect.gen(function* () {
  const runtime = yield* Effect.runtime<Cluster.Services>()
  const config = yield* Config.Config
  const errorHandler = yield* ErrorHandler
  const runner: Runner = {
    runFork: (effect) => Runtime.runFork(runtime)(effect),
    runPromise: (effect) => Runtime.runPromise(runtime)(effect),
    runPromiseExit: (effect) => Runtime.runPromiseExit(runtime)(effect),
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
