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
 * - A server's own packet learns its offset when its statement returns, and that answer races with
 *   the notifications. While own packets are being stored, pushed packets wait; when a statement
 *   returns, the waiting packets and the own ones are merged by offset. Waiting packets arrived
 *   before the next statement was sent, so own packets still queued take higher offsets.
 * - An own packet also waits for the packets announced before it with a lower offset.
 * - A session restore, or a lost LISTEN connection being caught up, holds everything until it ends.
 *
 * Deliveries are therefore in increasing offset order; a packet whose offset was already delivered
 * (a caught-up packet that also arrives live) is dropped.
 */
export class Sequencer<A> {
  #storing = 0
  #holds = 0
  /** Pushed packets not delivered yet, in arrival order. */
  #waiting: Array<{ readonly offset: bigint | undefined; readonly item: A }> = []
  /** Own packets not delivered yet, any order. */
  #own: Array<{ readonly offset: bigint; readonly item: A }> = []
  /** Offsets announced but not pushed yet, in arrival (offset) order. */
  #announced: Array<bigint> = []
  #scheduled = false
  #last: bigint | undefined

  constructor(private readonly deliver: (item: A, offset: bigint | undefined) => void) {}

  /** Items held back, own and others'. */
  get held(): number {
    return this.#waiting.length + this.#own.length
  }

  /** The highest offset delivered so far. */
  get lastDelivered(): bigint | undefined {
    return this.#last
  }

  /** Raises the delivered offset (a starting point known from PostgreSQL). */
  advanceTo(offset: bigint): void {
    if (this.#last === undefined || offset > this.#last) this.#last = offset
  }

  /** An own packet is being stored: hold pushed packets until it is settled. */
  beginStore(): void {
    this.#storing++
  }

  /**
   * The store's statement returned: `own` is the packet with its offset (none when it failed, in
   * which case the caller delivers it itself). Delivery follows a microtask later, once the
   * statement's other packets have settled too.
   */
  endStore(own?: { readonly offset: bigint; readonly item: A }): void {
    this.#storing--
    if (own !== undefined) this.#own.push(own)
    if (this.#scheduled) return
    this.#scheduled = true
    queueMicrotask(() => {
      this.#scheduled = false
      this.#flush(true)
    })
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
      this.#announced = this.#announced.filter((offset) => offset > caughtUp.upTo)
    }
    this.#flush(false)
  }

  /** A notification with this offset arrived; its packet is pushed later, in order. */
  announce(offset: bigint): void {
    this.#announced.push(offset)
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

  // Right after a statement returned, everything waiting can go (see above); otherwise only
  // when no own packet is in flight.
  #flush(afterStore: boolean): void {
    if (this.#holds > 0 || this.held === 0) return
    if (!afterStore && this.#storing > 0) return
    const own = this.#own.sort((a, b) => (a.offset < b.offset ? -1 : a.offset > b.offset ? 1 : 0))
    const waiting = this.#waiting
    this.#waiting = []
    let next = 0
    for (const { offset, item } of waiting) {
      if (offset !== undefined) {
        while (next < own.length && own[next]!.offset < offset) {
          this.#emit(own[next]!.item, own[next]!.offset)
          next++
        }
      }
      this.#emit(item, offset)
    }
    // An own packet still waits for lower offsets announced before it.
    const bound = this.#announced[0]
    while (next < own.length && (bound === undefined || own[next]!.offset < bound)) {
      this.#emit(own[next]!.item, own[next]!.offset)
      next++
    }
    this.#own = own.slice(next)
  }
}
