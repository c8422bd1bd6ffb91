/**
 * Catching up after the LISTEN connection of one namespace's adapter was lost: local delivery is
 * held until the stored packets missed meanwhile are read back, and they go first, in order.
 *
 * @since 0.2.0
 */
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Schedule from "effect/Schedule"
import type { BroadcastOptions } from "socket.io-adapter"
import type { StoredRow } from "./PacketStore.js"
import { Recovery } from "./Recovery.js"
import type { Sequencer } from "./Sequencer.js"

/** At most this many packets are read back after the LISTEN connection was lost. */
export const CATCH_UP_LIMIT = 100_000

const maxOffset = (a: bigint | undefined, b: bigint | undefined): bigint | undefined =>
  a === undefined || (b !== undefined && b > a) ? b : a

/** What the catch-up needs from its adapter. */
export interface CatchUpOptions {
  readonly nsp: string
  /** Longest a catch-up may hold deliveries. */
  readonly publishTimeout: Duration.Duration
  readonly run: <A, E>(effect: Effect.Effect<A, E, Recovery>) => Promise<Exit.Exit<A, E>>
  /** Told of each failure. */
  readonly report: (failure: unknown) => void
  /** Logs a warning. */
  readonly warn: (message: string) => void
  /** Around each read, so that `close()` can wait for it. */
  readonly begin: () => void
  readonly end: () => void
  /** Delivers a stored packet read back to the local sockets, with its offset. */
  readonly deliver: (packet: any, opts: BroadcastOptions, offset: bigint) => void
}

/** What a catch-up read: the namespace's last offset, and the packets after the last delivered. */
interface Read {
  readonly last: bigint
  readonly rows: ReadonlyArray<StoredRow>
}

/** Holds and catches up one namespace's deliveries around LISTEN connection losses. */
export class CatchUp {
  /** The LISTEN connection was lost and the packets missed are not read back yet. */
  #catchingUp = false
  #timer: ReturnType<typeof setTimeout> | undefined
  /** Offsets up to this one were delivered, or committed before we listened. */
  #caughtUpTo: bigint | undefined

  constructor(
    private readonly sequencer: Sequencer<() => void>,
    private readonly options: CatchUpOptions,
  ) {}

  /** The adapter closes: no timer any more. */
  close(): void {
    clearTimeout(this.#timer)
  }

  /**
   * The LISTEN connection was lost: hold every delivery until what was missed meanwhile is read
   * back (`listening`), for at most `publishTimeout`: then local delivery goes on, and what was
   * missed is lost.
   */
  lost(): void {
    if (this.#catchingUp) return
    this.#catchingUp = true
    this.sequencer.hold()
    this.#timer = setTimeout(() => {
      if (!this.#catchingUp) return
      this.#catchingUp = false
      this.options.warn("LISTEN connection still down: delivering without catching up")
      this.sequencer.stopWaiting()
      this.sequencer.release()
    }, Duration.toMillis(this.options.publishTimeout))
  }

  /**
   * The channel is listened on (again). Nothing is lost while the LISTEN connection is down: the
   * stored packets after the last delivered offset are read back and delivered first, in order,
   * then the live ones. The first time, the namespace's last offset is where listening started.
   */
  listening(): void {
    const catchingUp = this.#catchingUp
    if (!catchingUp && this.#caughtUpTo !== undefined) return
    const from = maxOffset(this.#caughtUpTo, this.sequencer.lastDelivered)
    const nsp = this.options.nsp
    this.options.begin()
    const read = Effect.flatMap(Recovery, (recovery) =>
      Effect.flatMap(recovery.lastOffset(nsp), (last) =>
        !catchingUp || from === undefined
          ? Effect.succeed<Read>({ last, rows: [] })
          : Effect.map(recovery.packetsSince(nsp, from, CATCH_UP_LIMIT), (rows) => ({
              last,
              rows,
            })),
      ),
    ).pipe(
      Effect.retry(Schedule.max([Schedule.exponential("100 millis"), Schedule.recurs(4)])),
      // Deliveries are held meanwhile: a frozen PostgreSQL must not hold them for ever.
      Effect.timeout(this.options.publishTimeout),
    )
    void this.options.run(read).then((exit) => {
      this.options.end()
      this.#read(exit, catchingUp, from)
    })
  }

  #read(exit: Exit.Exit<Read, unknown>, catchingUp: boolean, from: bigint | undefined): void {
    const sequencer = this.sequencer
    if (Exit.isSuccess(exit)) {
      this.#caughtUpTo = maxOffset(this.#caughtUpTo, exit.value.last)
      // Up to there, notifications came before we listened, were read back, or are lost: none
      // to wait for.
      sequencer.seenUpTo(exit.value.last)
    } else {
      if (!Exit.hasInterrupts(exit)) this.options.report(Cause.squash(exit.cause))
      // Unknown: the own packets sent so far stop waiting for earlier notifications.
      sequencer.stopWaiting()
    }
    // Not caught up in time: the hold was released already (see lost).
    if (!catchingUp || !this.#catchingUp) return
    this.#catchingUp = false
    clearTimeout(this.#timer)
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
        const packet = { type: 2, data: [...row.data, String(row.offset)], nsp: this.options.nsp }
        const opts: BroadcastOptions = {
          rooms: new Set(row.rooms),
          except: new Set(row.except),
          flags: {},
        }
        return { offset: row.offset, item: () => this.options.deliver(packet, opts, row.offset) }
      }),
    })
  }
}
