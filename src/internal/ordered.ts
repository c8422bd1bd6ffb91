/**
 * Delivery in arrival order when some values arrive late: each notification takes a slot at
 * once; a slot that waits (an attachment being fetched) holds back the ones behind it, so
 * packets reach Socket.IO in the order PostgreSQL delivered them, while fetches run ahead.
 */
export class OrderedDelivery<A> {
  private readonly slots: Array<{ done: boolean; value: A | undefined }> = []
  private head = 0

  constructor(private readonly deliver: (value: A) => void) {}

  /** Number of slots not yet delivered. */
  get pending(): number {
    return this.slots.length - this.head
  }

  /** A value that is ready now: delivered at once unless earlier slots still wait. */
  push(value: A): void {
    if (this.pending === 0) {
      this.deliver(value)
      return
    }
    this.slots.push({ done: true, value })
  }

  /**
   * Reserves a slot; call the returned function exactly once with the value, or with
   * `undefined` to skip the slot (e.g. the attachment was missing).
   */
  reserve(): (value: A | undefined) => void {
    const slot: { done: boolean; value: A | undefined } = { done: false, value: undefined }
    this.slots.push(slot)
    return (value) => {
      if (slot.done) return
      slot.done = true
      slot.value = value
      this.flush()
    }
  }

  private flush(): void {
    while (this.head < this.slots.length && this.slots[this.head]!.done) {
      const slot = this.slots[this.head]!
      this.slots[this.head] = undefined as never
      this.head++
      if (slot.value !== undefined) this.deliver(slot.value)
    }
    if (this.head === this.slots.length) {
      this.slots.length = 0
      this.head = 0
    } else if (this.head > 1024 && this.head * 2 > this.slots.length) {
      this.slots.splice(0, this.head)
      this.head = 0
    }
  }
}
