/**
 * Local delivery of one namespace's adapter with connection state recovery: stored broadcasts get
 * their offset before they are delivered, every delivery goes through the Sequencer (offset
 * order), what was missed while the LISTEN connection was down is read back, and session restores
 * neither miss nor repeat the packets delivered around them.
 */
import type * as Duration from "effect/Duration"
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
import { Restores } from "./Restores.js"
import { Sequencer } from "./Sequencer.js"

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
}

/** Stores, orders, catches up and restores for one namespace (connection state recovery on). */
export class RecoveredDelivery {
  /** Orders every local delivery of the namespace (see Sequencer). */
  readonly sequencer = new Sequencer<() => void>((deliver) => deliver())
  readonly #catchUp: CatchUp
  readonly #restores: Restores
  #publisher: Publisher["Service"] | undefined
  /** Resolves with the Publisher once recovery's tables are there. */
  readonly #storeReady: Promise<Publisher["Service"] | undefined>
  #storeReadyResolve: ((publisher: Publisher["Service"] | undefined) => void) | undefined
  #storesWaiting = 0
  #closed = false

  constructor(private readonly options: RecoveredDeliveryOptions) {
    this.#storeReady = new Promise((resolve) => (this.#storeReadyResolve = resolve))
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
    return Effect.map(setupStore(this.options.maxDisconnection), (publisher) => {
      this.#publisher = publisher
      this.#storeReadyResolve!(publisher)
      this.#storeReadyResolve = undefined
    })
  }

  /** The adapter closes: no catch-up timer any more, stores still waiting go unstored. */
  close(): void {
    this.#closed = true
    this.#catchUp.close()
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
