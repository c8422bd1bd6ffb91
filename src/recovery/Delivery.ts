/**
 * Local delivery of one namespace's adapter with connection state recovery: stored broadcasts get
 * their offset before they are delivered, every delivery goes through the Sequencer (offset
 * order), what was missed while the LISTEN connection was down is read back, and session restores
 * neither miss nor repeat the packets delivered around them.
 */
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Metric from "effect/Metric"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import type { BroadcastOptions, PrivateSessionId, Session } from "socket.io-adapter"
import * as Codec from "../Codec.js"
import * as Config from "../Config.js"
import * as Metrics from "../Metrics.js"
import { Publisher } from "../Publisher.js"
import { Recovery, type StoredRow } from "./Recovery.js"
import { Sequencer } from "./Sequencer.js"

const { MessageType } = Codec

/** What `restoreSession` resolves with when it restores nothing (Socket.IO takes `null`). */
export const NOT_RESTORED = null as unknown as Session

const decodeOptions = (opts: {
  rooms: Array<string>
  except: Array<string>
  flags?: BroadcastOptions["flags"]
}): BroadcastOptions => ({
  rooms: new Set(opts.rooms),
  except: new Set(opts.except),
  flags: opts.flags ?? {},
})

// Whether a packet sent with `opts` is for a socket in `rooms` (as Socket.IO's own adapter decides
// which stored packets a session missed).
const matches = (rooms: ReadonlyArray<string>, opts: BroadcastOptions): boolean =>
  (opts.rooms.size === 0 || rooms.some((room) => opts.rooms.has(room))) &&
  !rooms.some((room) => opts.except?.has(room))

const maxOffset = (a: bigint | undefined, b: bigint | undefined): bigint | undefined =>
  a === undefined || (b !== undefined && b > a) ? b : a

const notFound = Metric.withAttributes(Metrics.restoresFailed, { reason: "not_found" })
const failed = Metric.withAttributes(Metrics.restoresFailed, { reason: "error" })

// Every restore that reached the Recovery service, but one interrupted (the adapter closed).
const countRestore = (exit: Exit.Exit<unknown, unknown>): Effect.Effect<void> => {
  if (Exit.isSuccess(exit)) {
    return Metric.update(exit.value === undefined ? notFound : Metrics.sessionsRestored, 1)
  }
  return Cause.hasInterruptsOnly(exit.cause) ? Effect.void : Metric.update(failed, 1)
}

/** At most this many packets are read back after the LISTEN connection was lost. */
const CATCH_UP_LIMIT = 100_000

/** What Socket.IO keeps for recovery: an EVENT without acknowledgement, not volatile. */
export const isStorable = (packet: any, opts: BroadcastOptions): boolean =>
  packet.type === 2 && packet.id === undefined && opts.flags?.volatile === undefined

/** What the delivery needs from its adapter. */
export interface RecoveredDeliveryOptions {
  readonly nsp: string
  /** The namespace's notification channel. */
  readonly channel: string
  readonly maxDisconnection: Duration.Duration
  /** Longest a catch-up may hold deliveries. */
  readonly publishTimeout: Duration.Duration
  /** Longest a restore may take. */
  readonly requestsTimeout: Duration.Duration
  readonly run: <A, E>(effect: Effect.Effect<A, E, Recovery>) => Promise<Exit.Exit<A, E>>
  /** Told of each failure (a failed store, catch-up or restore). */
  readonly report: (failure: unknown) => void
  /** Logs a warning. */
  readonly warn: (message: string) => void
  /** Told why a message was not delivered. */
  readonly onSkipped: (reason: string) => void
  /** Around each store and catch-up, so that `close()` can wait for them. */
  readonly begin: () => void
  readonly end: () => void
  /** A notification is about to be published (it postpones the next heartbeat). */
  readonly published: () => void
  /** Delivers a broadcast to the local sockets: the base `Adapter`'s `broadcast`. */
  readonly deliver: (packet: any, opts: BroadcastOptions) => void
  /** Handles any other cluster message: `ClusterAdapter`'s `onMessage`. */
  readonly onMessage: (message: any) => void
}

/** Stores, orders, catches up and restores for one namespace (connection state recovery on). */
export class RecoveredDelivery {
  /** Orders every local delivery of the namespace (see Sequencer). */
  readonly sequencer = new Sequencer<() => void>((deliver) => deliver())
  /** Restored sockets and the last offset their restore read: older packets are not resent. */
  readonly #restored = new Map<string, bigint>()
  #publisher: Publisher["Service"] | undefined
  /** Resolves with the Publisher once recovery's tables are there. */
  readonly #storeReady: Promise<Publisher["Service"] | undefined>
  #storeReadyResolve: ((publisher: Publisher["Service"] | undefined) => void) | undefined
  #storesWaiting = 0
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
  #closed = false

  constructor(private readonly options: RecoveredDeliveryOptions) {
    this.#storeReady = new Promise((resolve) => (this.#storeReadyResolve = resolve))
  }

  /**
   * Keeps packets for `maxDisconnection`. Recovery's tables must exist before the first packet is
   * stored: wait for them (up to 5 s, then stores fail and are delivered without offset while
   * creation goes on in the background).
   */
  setup(): Effect.Effect<void, never, Recovery | Config.Config | Publisher | Scope.Scope> {
    return Effect.gen({ self: this }, function* () {
      this.#publisher = yield* Publisher
      const recovery = yield* Recovery
      const config = yield* Config.Config
      yield* recovery.retain(this.options.maxDisconnection)
      if (config.createTable) {
        const setup = yield* recovery.ensureTables.pipe(
          Effect.tapError((error) =>
            Effect.logWarning(`creating the recovery tables failed: ${error.message}`),
          ),
          Effect.retry(
            Schedule.min([Schedule.exponential("200 millis"), Schedule.spaced("10 seconds")]),
          ),
          Effect.forkScoped,
        )
        yield* Fiber.await(setup).pipe(Effect.timeout("5 seconds"), Effect.ignore)
      }
      this.#storeReadyResolve!(this.#publisher)
      this.#storeReadyResolve = undefined
    })
  }

  /** The adapter closes: no catch-up timer any more, stores still waiting go unstored. */
  close(): void {
    this.#closed = true
    clearTimeout(this.#catchUpTimer)
    this.#storeReadyResolve?.(undefined)
  }

  /**
   * Stores the packet (and notifies `message`: undefined when the packet is for one local socket),
   * then delivers it locally with its offset, in offset order with the other nodes' packets.
   */
  store(packet: any, opts: BroadcastOptions, message: Codec.WireMessage | undefined): void {
    if (this.#closed) return this.options.deliver(packet, opts)
    const sequencer = this.sequencer
    const args = packet.data as Array<unknown>
    const stored = {
      nsp: this.options.nsp,
      rooms: [...opts.rooms].map(String),
      except: [...(opts.except ?? [])].map(String),
      data: args,
    }
    if (message !== undefined) this.options.published()
    this.options.begin()
    const slot = sequencer.beginStore()
    // Not stored, so not replayable: local clients still get it, in its place, without an offset.
    const unstored = () => sequencer.endStore(slot, () => this.#deliverLocally(packet, opts))
    const run = (publisher: Publisher["Service"] | undefined) => {
      if (publisher === undefined) {
        unstored()
        return this.options.end()
      }
      publisher.unsafeStore(this.options.channel, message, stored, (error, offset, after) => {
        if (error !== undefined || offset === undefined) {
          if (error !== undefined) this.options.report(error)
          unstored()
        } else {
          const at = BigInt(offset)
          const deliver = () => {
            args.push(offset)
            this.#deliverLocally(packet, opts, at)
          }
          sequencer.endStore(slot, deliver, at, after === undefined ? undefined : BigInt(after))
        }
        this.options.end()
      })
    }
    // Until the tables are there, stores wait for the runtime, in order.
    if (this.#storeReadyResolve === undefined && this.#storesWaiting === 0) {
      return run(this.#publisher!)
    }
    this.#storesWaiting++
    void this.#storeReady.then((publisher) => {
      this.#storesWaiting--
      run(publisher)
    })
  }

  /**
   * Delivers another node's message: packets of other nodes keep their order with our own (see
   * Sequencer). A stored broadcast gets its offset as last argument; no other message gets one.
   */
  sequence(message: any): void {
    const data = message.data
    if (message.type !== MessageType.BROADCAST || data.requestId !== undefined) {
      if (Codec.isOffset(message.offset)) this.sequencer.retract(BigInt(message.offset))
      return this.sequencer.push(undefined, () => {
        try {
          this.options.onMessage(message)
        } catch (e) {
          this.options.onSkipped(`message of type ${message.type} failed: ${(e as Error)?.message}`)
        }
      })
    }
    const offset = Codec.isOffset(message.offset) ? message.offset : undefined
    const packet = data.packet
    const opts = decodeOptions(data.opts)
    this.sequencer.push(offset === undefined ? undefined : BigInt(offset), () => {
      if (offset === undefined) return this.#deliverLocally(packet, opts, undefined)
      if (isStorable(packet, opts)) packet.data.push(offset)
      this.#deliverLocally(packet, opts, BigInt(offset))
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
      this.options.deliver(packet, except === opts.except ? opts : { ...opts, except })
    } catch (e) {
      this.options.onSkipped(`local delivery failed: ${(e as Error)?.message}`)
    }
  }

  /**
   * The LISTEN connection was lost: hold every delivery until what was missed meanwhile is read
   * back (catchUp), for at most publishTimeout: then local delivery goes on, and what was missed
   * is lost.
   */
  lost(): void {
    const sequencer = this.sequencer
    if (this.#catchingUp) return
    this.#catchingUp = true
    sequencer.hold()
    this.#catchUpTimer = setTimeout(() => {
      if (!this.#catchingUp) return
      this.#catchingUp = false
      this.options.warn("LISTEN connection still down: delivering without catching up")
      sequencer.stopWaiting()
      sequencer.release()
    }, Duration.toMillis(this.options.publishTimeout))
  }

  /**
   * The channel is listened on (again). Nothing is lost while the LISTEN connection is down: the
   * stored packets after the last delivered offset are read back and delivered first, in order,
   * then the live ones. The first time, the namespace's last offset is where listening started.
   */
  catchUp(): void {
    const sequencer = this.sequencer
    const catchingUp = this.#catchingUp
    if (!catchingUp && this.#caughtUpTo !== undefined) return
    const from = maxOffset(this.#caughtUpTo, sequencer.lastDelivered)
    const nsp = this.options.nsp
    this.options.begin()
    void this.options
      .run(
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
          Effect.retry(Schedule.max([Schedule.exponential("100 millis"), Schedule.recurs(4)])),
          // Deliveries are held meanwhile: a frozen PostgreSQL must not hold them for ever.
          Effect.timeout(this.options.publishTimeout),
        ),
      )
      .then((exit) => {
        this.options.end()
        if (Exit.isSuccess(exit)) {
          this.#caughtUpTo = maxOffset(this.#caughtUpTo, exit.value.last)
          // Up to there, notifications came before we listened, were read back, or are lost:
          // none to wait for.
          sequencer.seenUpTo(exit.value.last)
        } else {
          if (!Exit.hasInterrupts(exit)) this.options.report(Cause.squash(exit.cause))
          // Unknown: the own packets sent so far stop waiting for earlier notifications.
          sequencer.stopWaiting()
        }
        // Not caught up in time: the hold was released already (see lost).
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
          this.options.warn(`more than ${CATCH_UP_LIMIT} packets missed; later ones are lost`)
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

  /** Restores a session with the packets it missed, those delivered during the restore included. */
  async restore(pid: PrivateSessionId, offset: string): Promise<Session> {
    // Packets delivered while the restore runs are recorded: the session's snapshot may predate
    // them, and the restored socket does not exist yet to receive them live.
    this.#restoring++
    const recorded = this.#recorded.length
    const exit = await this.options.run(
      Effect.flatMap(Recovery, (recovery) => recovery.restore(this.options.nsp, pid, offset)).pipe(
        Effect.timeout(this.options.requestsTimeout),
        // Counted in the application's context (its metric registry).
        Effect.onExit((exit) => countRestore(exit)),
      ),
    )
    const since = this.#recorded.slice(recorded)
    if (--this.#restoring === 0) this.#recorded = []
    if (Exit.isFailure(exit)) {
      if (!Exit.hasInterrupts(exit)) this.options.report(Cause.squash(exit.cause))
      return NOT_RESTORED
    }
    const session = exit.value
    if (session === undefined) return NOT_RESTORED
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
}
