/**
 * Local delivery in offset order, for connection state recovery.
 *
 * A client's offset is the last one it received, and a restore replays every packet after it: a
 * client must therefore get its namespace's packets in offset order, or a later restore would
 * replay one it already has (or skip one it never had).
 *
 * - Other servers' packets arrive in commit order, which is offset order. They are announced when
 *   their notification arrives and pushed when they are ready (an attachment may be fetched in
 *   between), in the same order.
 * - This server's own packets keep the order they were sent in. A stored one learns its offset
 *   when its statement returns, and that answer races with the notifications: while own packets
 *   are being stored, pushed packets wait; when a statement returns, the waiting packets and the
 *   own ones are merged by offset. (Waiting packets arrived before the next statement was sent, so
 *   own packets still queued take higher offsets.) The other way round, a notification committed
 *   just before an own packet may arrive after its statement returned: the statement also returns
 *   the last offset notified before it (`after`), and an own packet waits until that one was seen,
 *   and until the announced packets with lower offsets were pushed. Own packets without offset
 *   (volatile, with an acknowledgement, or whose store failed) only keep their place among own
 *   packets.
 * - A session restore, or a lost LISTEN connection being caught up, holds everything until it ends.
 *
 * Deliveries are therefore in increasing offset order; a packet whose offset was already delivered
 * (a caught-up packet that also arrives live) is dropped.
 */

/** An own packet's place, taken when it is sent; filled when its store settles. */
export interface Slot<A> {
  done: boolean
  offset: bigint | undefined
  after: bigint | undefined
  item: A | undefined
  /** Delivered without waiting for `after` (what it waits for is known to be lost). */
  unblocked?: boolean
  /** When it stops waiting for `after` anyway (ms since the epoch); never when unset. */
  deadline?: number
}

/** A packet of another node, pushed and not delivered yet. */
interface Waiting<A> {
  readonly offset: bigint | undefined
  readonly item: A
}

/** What is known of the other nodes' notifications: announced ones, and the highest offset seen. */
class Arrivals {
  /** Offsets announced but not pushed yet, in arrival (offset) order. */
  #announced: Array<bigint> = []
  /** The highest offset known to have arrived (announced, pushed, own, or read back). */
  #seen: bigint | undefined

  /** Whether the notification of `offset` arrived (or will never come); 0 is no offset. */
  hasSeen(offset: bigint): boolean {
    return offset <= 0n || (this.#seen !== undefined && offset <= this.#seen)
  }

  /** Whether no packet announced below `offset` is still to be pushed. */
  noneAnnouncedBelow(offset: bigint): boolean {
    const bound = this.#announced[0]
    return bound === undefined || bound >= offset
  }

  see(offset: bigint): void {
    if (this.#seen === undefined || offset > this.#seen) this.#seen = offset
  }

  announce(offset: bigint): void {
    this.#announced.push(offset)
    this.see(offset)
  }

  retract(offset: bigint): void {
    const at = this.#announced.indexOf(offset)
    if (at !== -1) this.#announced.splice(at, 1)
  }

  /**
   * Packets up to `offset` were pushed or read back: none announced up to there is expected any
   * more (announced in offset order, so skipped ones too).
   */
  arrivedUpTo(offset: bigint): void {
    this.see(offset)
    let n = 0
    while (n < this.#announced.length && this.#announced[n]! <= offset) n++
    if (n > 0) this.#announced.splice(0, n)
  }
}

/** Own packets that stop waiting for `after` at their deadline (see `Slot.deadline`). */
class Deadlines {
  #timer: ReturnType<typeof setTimeout> | undefined

  /** One timer, for the first own packet while it waits with a deadline; then `expired`. */
  watch(own: ReadonlyArray<Slot<unknown>>, expired: () => void): void {
    const head = own[0]
    if (this.#timer !== undefined || head?.deadline === undefined || head.unblocked) return
    const timer = setTimeout(
      () => {
        this.#timer = undefined
        const now = Date.now()
        for (const slot of own) if (slot.deadline! <= now) slot.unblocked = true
        expired()
      },
      Math.max(0, head.deadline - Date.now()),
    )
    // Never what keeps a process alive.
    timer.unref?.()
    this.#timer = timer
  }
}

/** Orders one namespace's local deliveries by offset (see above). */
export class Sequencer<A> {
  #storing = 0 // own slots not filled yet
  #holds = 0
  #waiting: Array<Waiting<A>> = [] // pushed packets not delivered yet, in arrival order
  #own: Array<Slot<A>> = [] // own packets not delivered yet, in the order they were sent
  readonly #arrivals = new Arrivals()
  #scheduled = false
  #last: bigint | undefined
  readonly #deadlines = new Deadlines()

  constructor(private readonly deliver: (item: A, offset: bigint | undefined) => void) {}

  /** Items held back (own ones being stored included). */
  get held(): number {
    return this.#waiting.length + this.#own.length
  }

  /** The highest offset delivered so far. */
  get lastDelivered(): bigint | undefined {
    return this.#last
  }

  /**
   * Every notification up to `offset` has arrived or will never come: where listening started,
   * read from PostgreSQL. Until it is known, own stored packets wait.
   */
  seenUpTo(offset: bigint): void {
    this.#arrivals.see(offset)
    this.#flush(false)
  }

  /**
   * The own packets sent so far stop waiting for earlier notifications: some are lost (a catch-up
   * failed), and whether theirs are among them is unknown. Later packets wait as usual.
   */
  stopWaiting(): void {
    for (const slot of this.#own) slot.unblocked = true
    this.#flush(false)
  }

  /** An own packet is being stored: it takes its place, and pushed packets wait. */
  beginStore(): Slot<A> {
    const slot: Slot<A> = { done: false, offset: undefined, after: undefined, item: undefined }
    this.#storing++
    this.#own.push(slot)
    return slot
  }

  /**
   * The store settled: `offset` and `after` when it was stored, none when it failed. Delivery
   * follows a microtask later, once the statement's other packets have settled too.
   */
  endStore(slot: Slot<A>, item: A, offset?: bigint, after?: bigint, maxWait?: number): void {
    if (slot.done) return
    slot.done = true
    slot.offset = offset
    slot.after = after
    slot.item = item
    if (maxWait !== undefined) slot.deadline = Date.now() + maxWait
    this.#storing--
    if (this.#scheduled) return
    this.#scheduled = true
    queueMicrotask(() => {
      this.#scheduled = false
      this.#flush(true)
    })
  }

  /** An own packet without offset: delivered at once unless earlier ones still wait. */
  own(item: A): void {
    if (this.#own.length === 0 && this.#holds === 0) return this.deliver(item, undefined)
    this.#own.push({ done: true, offset: undefined, after: undefined, item })
  }

  /** Holds everything (a session restore, a catch-up) until {@link release}. */
  hold(): void {
    this.#holds++
  }

  /**
   * Ends a hold. `caughtUp` are packets read from PostgreSQL meanwhile, in offset order, up to
   * `upTo`: they go first, and waiting packets they cover are dropped.
   */
  release(caughtUp?: {
    readonly upTo: bigint
    readonly items: ReadonlyArray<{ readonly offset: bigint; readonly item: A }>
  }): void {
    this.#holds--
    if (caughtUp !== undefined) {
      const later = this.#waiting.filter(
        ({ offset }) => offset === undefined || offset > caughtUp.upTo,
      )
      this.#waiting = [...caughtUp.items, ...later]
      this.#arrivals.arrivedUpTo(caughtUp.upTo)
    }
    this.#flush(false)
  }

  /** A notification with this offset arrived; its packet is pushed later, in order. */
  announce(offset: bigint): void {
    this.#arrivals.announce(offset)
  }

  /** An announced packet will not come (unreadable, attachment missing). */
  retract(offset: bigint): void {
    this.#arrivals.retract(offset)
    this.#flush(false)
  }

  /** A message from another node, in commit order; `offset` for stored broadcasts. */
  push(offset: bigint | undefined, item: A): void {
    if (offset !== undefined) this.#arrivals.arrivedUpTo(offset)
    if (this.#storing === 0 && this.#holds === 0 && this.held === 0) {
      this.#emit(item, offset)
      return
    }
    this.#waiting.push({ offset, item })
    this.#flush(false)
  }

  #emit(item: A, offset: bigint | undefined): void {
    if (offset !== undefined) {
      if (this.#last !== undefined && offset <= this.#last) return
      this.#last = offset
    }
    this.deliver(item, offset)
  }

  // Right after a statement returned, every waiting packet can go (see above); otherwise only
  // while no own packet is being stored.
  #flush(afterStore: boolean): void {
    if (this.#holds > 0 || this.held === 0) return
    const [o, w] = drain(
      this.#own,
      this.#waiting,
      afterStore || this.#storing === 0,
      // Wait for what was committed before it (`after`) and announced below it.
      (slot, offset) =>
        (slot.unblocked === true || this.#arrivals.hasSeen(slot.after ?? 0n)) &&
        this.#arrivals.noneAnnouncedBelow(offset),
      (item, offset, own) => {
        if (own && offset !== undefined) this.#arrivals.see(offset)
        this.#emit(item, offset)
      },
    )
    this.#own = this.#own.slice(o)
    this.#waiting = this.#waiting.slice(w)
    this.#deadlines.watch(this.#own, () => this.#flush(false))
  }
}

/**
 * Takes from the own slots and the waiting packets, in delivery order, what may go now, and
 * returns how many of each went. An own packet without offset goes in its place among own ones;
 * one with an offset goes after the waiting packets below it (and those without offset), once
 * `mayGo` says nothing it waits for is missing. Waiting packets go only when `foreignFree`.
 */
const drain = <A>(
  own: ReadonlyArray<Slot<A>>,
  waiting: ReadonlyArray<Waiting<A>>,
  foreignFree: boolean,
  mayGo: (slot: Slot<A>, offset: bigint) => boolean,
  emit: (item: A, offset: bigint | undefined, own: boolean) => void,
): [number, number] => {
  let o = 0
  let w = 0
  for (;;) {
    const slot = own[o]
    const next = waiting[w]
    if (slot !== undefined && slot.done) {
      const offset = slot.offset
      if (offset === undefined) {
        emit(slot.item!, undefined, true)
        o++
        continue
      }
      // Lower offsets first, and anything of the others without an offset.
      const nextFirst = next !== undefined && (next.offset === undefined || next.offset < offset)
      if (nextFirst && foreignFree) {
        emit(next.item, next.offset, false)
        w++
        continue
      }
      if (nextFirst || !mayGo(slot, offset)) break
      emit(slot.item!, offset, true)
      o++
      continue
    }
    // The next own packet is still being stored (or there is none).
    if (!foreignFree || next === undefined) break
    emit(next.item, next.offset, false)
    w++
  }
  return [o, w]
}
