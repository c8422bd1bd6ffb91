/**
 * The ListenGate (subscriptionMode's causality across a join): publishes made while a room's
 * LISTEN is in flight wait, in their order, until every such LISTEN holds or gave up.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest"
import { ListenGate } from "../src/internal/gate.js"

describe("ListenGate", () => {
  beforeEach(() => {
    vi.useFakeTimers()
  })
  afterEach(() => {
    vi.useRealTimers()
  })

  it("runs at once while no LISTEN is in flight", () => {
    const gate = new ListenGate(1000)
    const ran: Array<number> = []
    gate.run(() => ran.push(1))
    expect(ran).toEqual([1])
    expect(gate.shut).toBe(false)
  })

  it("holds what follows a LISTEN until that LISTEN holds, in call order", () => {
    const gate = new ListenGate(1000)
    const ran: Array<number> = []
    const first = gate.hold()
    gate.run(() => ran.push(1))
    const second = gate.hold()
    gate.run(() => ran.push(2))
    expect(ran).toEqual([])
    first()
    expect(ran).toEqual([1])
    first() // a second release of the same hold counts for nothing
    expect(gate.holds).toBe(1)
    second()
    expect(ran).toEqual([1, 2])
    gate.run(() => ran.push(3))
    expect(ran).toEqual([1, 2, 3])
  })

  it("lets a publish go once the holds begun before it ended, however many began after", () => {
    const gate = new ListenGate(1000)
    const ran: Array<number> = []
    let release = gate.hold()
    gate.run(() => ran.push(1))
    // A stream of joins: each new hold begins before the previous one ends.
    for (let i = 2; i <= 5; i++) {
      const next = gate.hold()
      gate.run(() => ran.push(i))
      release()
      expect(ran).toEqual(Array.from({ length: i - 1 }, (_, k) => k + 1))
      release = next
    }
    release()
    expect(ran).toEqual([1, 2, 3, 4, 5])
  })

  it("keeps call order: a publish made while others wait goes after them", () => {
    const gate = new ListenGate(1000)
    const ran: Array<number> = []
    const first = gate.hold()
    gate.run(() => ran.push(1))
    const second = gate.hold()
    gate.run(() => ran.push(2))
    second()
    // The hold begun before publish 1 still runs: nothing goes, publish 2 included.
    expect(ran).toEqual([])
    gate.run(() => ran.push(3))
    first()
    expect(ran).toEqual([1, 2, 3])
  })

  it("gives up waiting after maxWait, and leaves no timer behind", () => {
    const gate = new ListenGate(1000)
    const ran: Array<number> = []
    gate.hold()
    gate.run(() => ran.push(1))
    vi.advanceTimersByTime(999)
    expect(ran).toEqual([])
    vi.advanceTimersByTime(1)
    expect(ran).toEqual([1])
    const release = gate.hold()
    release()
    expect(vi.getTimerCount()).toBe(0)
  })
})
