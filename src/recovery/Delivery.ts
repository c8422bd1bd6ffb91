/**
 * Local delivery of one namespace's adapter with connection state recovery: stored broadcasts get
 * their offset before they are delivered, every delivery goes through the Sequencer (offset
 * order), what was missed while the LISTEN connection was down is read back, and session restores
 * neither miss nor repeat the packets delivered around them.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Exit from "effect/Exit"
import type * as Scope from "effect/Scope"
import type { BroadcastOptions, PrivateSessionId, Session } from "socket.io-adapter"
import * as Codec from "../Codec.js"
import * as AdapterConfig from "../AdapterConfig.js"
import { Publisher } from "../Publisher.js"
import { setUpTables } from "../internal/tableSetup.js"
import { CatchUp } from "./CatchUp.js"
import { Recovery } from "./Recovery.js"
import { Restores, type RestoresOptions } from "./Restores.js"
import type { ListenGate } from "../internal/gate.js"
import { Sequencer, type Slot } from "./Sequencer.js"

export { NOT_RESTORED } from "./Restores.js"

const { MessageType } = Codec

const decodeOptions = (opts: {
  rooms: Array<string>
  except: Array<string>
  flags?: BroadcastOptions["flags"]
}): BroadcastOptions => ({
  rooms: new Set(opts.rooms),
  except: new Set(opts.except),
  flags: opts.flags ?? {},
})

/** What Socket.IO keeps for recovery: an EVENT without acknowledgement, not volatile. */
export const isStorable = (packet: any, opts: BroadcastOptions): boolean =>
  packet.type === 2 && packet.id === undefined && opts.flags?.volatile === undefined

/**
 * Keeps packets for `maxDisconnection`. Recovery's tables must exist before the first packet is
 * stored: waits for them (up to 5 s, then stores fail and are delivered without offset while
 * creation goes on in the background). Resolves with the Publisher that stores.
 */
const setupStore = Effect.fnUntraced(function* (maxDisconnection: Duration.Duration) {
  const publisher = yield* Publisher
  const recovery = yield* Recovery
  const config = yield* AdapterConfig.AdapterConfig
  yield* recovery.retain(maxDisconnection)
  if (config.createTable) {
    yield* setUpTables("the recovery tables", recovery.ensureTables)
  }
  return publisher
})

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
  /** In the dynamic modes: the server's gate, which stores pass like every publish. */
  readonly gate?: ListenGate | undefined
  /** In the dynamic modes: listens on a restored session's rooms (see `Restores`). */
  readonly listenRooms?: RestoresOptions["listenRooms"]
}

/** Where a stored broadcast goes in the dynamic modes, and whether its node hears that channel. */
export interface Route {
  readonly channel: string
  readonly heard: boolean
}

/**
 * Delivers an own stored packet in its place (see Sequencer). Without `offset` (not stored, or in
 * the dynamic modes on a channel its node does not hear, where lower offsets may still be on their
 * way), local clients still get it, without an offset. With `maxWait` (dynamic modes) it waits for
 * its own notification, a bounded time: a LISTEN ended meanwhile may make it miss it.
 */
const settle = (
  sequencer: Sequencer<() => void>,
  slot: Slot<() => void>,
  deliver: (offset?: string) => void,
  offset: string | undefined,
  after: string | undefined,
  maxWait: number | undefined,
): void => {
  if (offset === undefined) return sequencer.endStore(slot, () => deliver())
  const at = BigInt(offset)
  if (maxWait !== undefined) return sequencer.endStore(slot, () => deliver(offset), at, at, maxWait)
  sequencer.endStore(
    slot,
    () => deliver(offset),
    at,
    after === undefined ? undefined : BigInt(after),
  )
}

/**
 * Runs stores in call order once recovery's tables are there (until then they wait; those still
 * waiting at close run without a Publisher, so unstored), each after the room LISTENs begun before
 * it (the server's gate, in the dynamic modes).
 */
class StoreQueue {
  #publisher: Publisher["Service"] | undefined
  #resolve: ((publisher: Publisher["Service"] | undefined) => void) | undefined
  /** Resolves with the Publisher once recovery's tables are there. */
  readonly #ready: Promise<Publisher["Service"] | undefined>
  #waiting = 0

  constructor(private readonly gate: ListenGate | undefined) {
    this.#ready = new Promise((resolve) => (this.#resolve = resolve))
  }

  /** The tables are there: stores go through `publisher`. */
  settle(publisher: Publisher["Service"] | undefined): void {
    this.#publisher = publisher
    this.#resolve?.(publisher)
    this.#resolve = undefined
  }

  /** The adapter closes: stores still waiting for the tables go unstored. */
  close(): void {
    if (this.#resolve !== undefined) this.settle(undefined)
  }

  run(store: (publisher: Publisher["Service"] | undefined) => void): void {
    const gated = (publisher: Publisher["Service"] | undefined) =>
      this.gate === undefined ? store(publisher) : this.gate.run(() => store(publisher))
    if (this.#resolve === undefined && this.#waiting === 0) return gated(this.#publisher)
    this.#waiting++
    void this.#ready.then((publisher) => {
      this.#waiting--
      gated(publisher)
    })
  }
}

/** Stores, orders, catches up and restores for one namespace (connection state recovery on). */
export class RecoveredDelivery {
  /** Orders every local delivery of the namespace (see Sequencer). */
  readonly sequencer = new Sequencer<() => void>((deliver) => deliver())
  readonly #catchUp: CatchUp
  readonly #restores: Restores
  readonly #stores: StoreQueue
  #closed = false

  constructor(private readonly options: RecoveredDeliveryOptions) {
    this.#stores = new StoreQueue(options.gate)
    this.#catchUp = new CatchUp(this.sequencer, {
      ...options,
      deliver: (packet, opts, offset) => this.#deliverLocally(packet, opts, offset),
    })
    this.#restores = new Restores(options)
  }

  /** Prepares stores (see {@link setupStore}); until then they wait, in order. */
  setup(): Effect.Effect<
    void,
    never,
    Recovery | AdapterConfig.AdapterConfig | Publisher | Scope.Scope
  > {
    return Effect.map(setupStore(this.options.maxDisconnection), (publisher) =>
      this.#stores.settle(publisher),
    )
  }

  /** The adapter closes: no catch-up timer any more, stores still waiting go unstored. */
  close(): void {
    this.#closed = true
    this.#catchUp.close()
    this.#stores.close()
  }

  /**
   * Stores the packet (and notifies `message`: undefined when the packet is for one local socket),
   * then delivers it locally with its offset, in offset order with the other nodes' packets.
   *
   * `route` is for the dynamic subscription modes, where the node hears only some channels: the
   * channel `message` goes to, and whether the node hears it. A packet on a heard channel waits for
   * its own notification (everything committed before it and heard has arrived by then); one on a
   * channel not heard has no local member to order for, and is delivered without offset.
   */
  store(
    packet: any,
    opts: BroadcastOptions,
    message: Codec.WireMessage | undefined,
    route?: () => Route,
  ): void {
    if (this.#closed) return this.options.deliver(packet, opts)
    const args = packet.data as Array<unknown>
    const stored = {
      nsp: this.options.nsp,
      rooms: [...opts.rooms].map(String),
      except: [...(opts.except ?? [])].map(String),
      data: args,
    }
    if (message !== undefined) this.options.published()
    this.options.begin()
    const slot = this.sequencer.beginStore()
    const deliver = (offset?: string) => {
      if (offset !== undefined) args.push(offset)
      this.#deliverLocally(packet, opts, offset === undefined ? undefined : BigInt(offset))
    }
    this.#stores.run((publisher) => {
      // Decided when it is sent: after the room LISTENs begun before it (see `ListenGate`).
      const to = publisher && route?.()
      const maxWait = to && Duration.toMillis(this.options.publishTimeout)
      const settled = (offset?: string, after?: string) => {
        settle(this.sequencer, slot, deliver, offset, after, maxWait)
        this.options.end()
      }
      if (publisher === undefined) return settled()
      const channel = to?.channel ?? this.options.channel
      publisher.unsafeStore(channel, message, stored, (error, offset, after) => {
        if (error !== undefined) this.options.report(error)
        settled(error === undefined && to?.heard !== false ? offset : undefined, after)
      })
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
    const except =
      offset === undefined ? opts.except : this.#restores.delivering(offset, packet.data, opts)
    try {
      this.options.deliver(packet, except === opts.except ? opts : { ...opts, except })
    } catch (e) {
      this.options.onSkipped(`local delivery failed: ${(e as Error)?.message}`)
    }
  }

  /** The LISTEN connection was lost: deliveries wait for the catch-up (see CatchUp). */
  lost(): void {
    this.#catchUp.lost()
  }

  /** The channel is listened on (again): what was missed meanwhile is read back first. */
  catchUp(): void {
    this.#catchUp.listening()
  }

  /** Restores a session with the packets it missed (see Restores). */
  restore(pid: PrivateSessionId, offset: string): Promise<Session> {
    return this.#restores.restore(pid, offset)
  }
}
