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
}

export class Sequencer<A> {
  /** Own slots not filled yet. */
  #storing = 0
  #holds = 0
  /** Pushed packets not delivered yet, in arrival order. */
  #waiting: Array<{ readonly offset: bigint | undefined; readonly item: A }> = []
  /** Own packets not delivered yet, in the order they were sent. */
  #own: Array<Slot<A>> = []
  /** Offsets announced but not pushed yet, in arrival (offset) order. */
  #announced: Array<bigint> = []
  #scheduled = false
  #last: bigint | undefined
  /** The highest offset known to have arrived (announced, pushed, own, or read back). */
  #seen: bigint | undefined

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
    this.#see(offset)
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

  #see(offset: bigint): void {
    if (this.#seen === undefined || offset > this.#seen) this.#seen = offset
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
  endStore(slot: Slot<A>, item: A, offset?: bigint, after?: bigint): void {
    if (slot.done) return
    slot.done = true
    slot.offset = offset
    slot.after = after
    slot.item = item
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
      this.#see(caughtUp.upTo)
      const later = this.#waiting.filter(
        ({ offset }) => offset === undefined || offset > caughtUp.upTo,
      )
      this.#waiting = [...caughtUp.items, ...later]
      this.#announced = this.#announced.filter((offset) => offset > caughtUp.upTo)
    }
    this.#flush(false)
  }

  /** A notification with this offset arrived; its packet is pushed later, in order. */
  announce(offset: bigint): void {
    this.#announced.push(offset)
    this.#see(offset)
  }

  /** An announced packet will not come (unreadable, attachment missing). */
  retract(offset: bigint): void {
    const at = this.#announced.indexOf(offset)
    if (at !== -1) this.#announced.splice(at, 1)
    this.#flush(false)
  }

  /** A message from another node, in commit order; `offset` for stored broadcasts. */
  push(offset: bigint | undefined, item: A): void {
    // Announced in the same order: this one and any skipped before it are no longer expected.
    if (offset !== undefined) {
      this.#see(offset)
      let n = 0
      while (n < this.#announced.length && this.#announced[n]! <= offset) n++
      if (n > 0) this.#announced.splice(0, n)
    }
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
    const foreignFree = afterStore || this.#storing === 0
    let o = 0
    let w = 0
    const own = this.#own
    const waiting = this.#waiting
    for (;;) {
      const slot = own[o]
      const next = waiting[w]
      if (slot !== undefined && slot.done) {
        const offset = slot.offset
        if (offset === undefined) {
          this.#emit(slot.item!, undefined)
          o++
          continue
        }
        // Lower offsets first, and anything of the others without an offset.
        if (
          foreignFree &&
          next !== undefined &&
          (next.offset === undefined || next.offset < offset)
        ) {
          this.#emit(next.item, next.offset)
          w++
          continue
        }
        // Wait for what was committed before it (`after`) and announced below it.
        const after = slot.unblocked === true ? 0n : (slot.after ?? 0n)
        if (after > 0n && (this.#seen === undefined || after > this.#seen)) break
        const bound = this.#announced[0]
        if (bound !== undefined && bound < offset) break
        if (
          !foreignFree &&
          next !== undefined &&
          (next.offset === undefined || next.offset < offset)
        ) {
          break
        }
        this.#see(offset)
        this.#emit(slot.item!, offset)
        o++
        continue
      }
      // The next own packet is still being stored (or there is none).
      if (foreignFree && next !== undefined) {
        this.#emit(next.item, next.offset)
        w++
        continue
      }
      break
    }
    this.#own = own.slice(o)
    this.#waiting = waiting.slice(w)
  }
}
