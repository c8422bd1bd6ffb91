/**
 * Local delivery in offset order, for connection state recovery.
 *
 * A client's offset is the last one it received, and a restore replays every packet after it: a
 * client must therefore get its namespace's packets in offset order, or a second restore would
 * replay one it already has (or skip one it never had). Other servers' packets arrive in commit
 * order, which is offset order. A server's own packets learn their offset when their statement
 * returns, and that answer races with the notifications on the LISTEN connection. So while own
 * packets are being stored, notifications wait; when a statement returns, the waiting ones and
 * the statement's own packets are merged by offset and delivered. That is safe with more own
 * packets still queued: those are sent after the waiting notifications arrived, so they take
 * higher offsets. A session restore holds everything until the restored socket exists.
 */
export class Sequencer<A> {
  #storing = 0
  #restoring = 0
  #waiting: Array<{ readonly offset: bigint | undefined; readonly item: A }> = []
  #own: Array<{ readonly offset: bigint; readonly item: A }> = []
  #scheduled = false

  constructor(private readonly deliver: (item: A) => void) {}

  /** Items held back, own and others'. */
  get held(): number {
    return this.#waiting.length + this.#own.length
  }

  /** An own packet is being stored: hold notifications until it is settled. */
  beginStore(): void {
    this.#storing++
  }

  /**
   * The store's statement returned: `own` is the packet with its offset (none when it failed,
   * in which case the caller delivers it itself). Delivery follows once the returning
   * statement's other packets have settled too (a microtask later).
   */
  endStore(own?: { readonly offset: bigint; readonly item: A }): void {
    this.#storing--
    if (own !== undefined) this.#own.push(own)
    this.#schedule()
  }

  /** A session is being restored: hold everything until {@link endRestore}. */
  beginRestore(): void {
    this.#restoring++
  }

  /** The restored socket exists (or the restore failed): deliver what waited. */
  endRestore(): void {
    this.#restoring--
    this.#flush()
  }

  /** A message from another node, in commit order; `offset` for stored broadcasts. */
  push(offset: bigint | undefined, item: A): void {
    if (this.#storing === 0 && this.#restoring === 0 && this.held === 0) {
      this.deliver(item)
      return
    }
    this.#waiting.push({ offset, item })
  }

  #schedule(): void {
    if (this.#scheduled) return
    this.#scheduled = true
    queueMicrotask(() => {
      this.#scheduled = false
      this.#flush()
    })
  }

  #flush(): void {
    if (this.#restoring > 0 || this.held === 0) return
    const own = this.#own.sort((a, b) => (a.offset < b.offset ? -1 : a.offset > b.offset ? 1 : 0))
    const waiting = this.#waiting
    this.#own = []
    this.#waiting = []
    let next = 0
    for (const { offset, item } of waiting) {
      if (offset !== undefined) {
        while (next < own.length && own[next]!.offset < offset) this.deliver(own[next++]!.item)
      }
      this.deliver(item)
    }
    while (next < own.length) this.deliver(own[next++]!.item)
  }
}
