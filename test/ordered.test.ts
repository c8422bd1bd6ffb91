/**
 * OrderedDelivery: values that arrive late (attachments being fetched) hold back the ones behind
 * them, so delivery follows arrival order whatever order the late ones are filled in.
 */
import { assert, describe, it } from "@effect/vitest"
import * as fc from "fast-check"
import { OrderedDelivery } from "../src/internal/ordered.js"

/**
 * A run: value `i` arrives at step `i`, late or not; a late one is filled at step `fillAt >= i`
 * (after arrival `fillAt`, or after all arrivals when `fillAt === length`), in `rank` order among
 * those filled at the same step, and `skip` fills it with `undefined`.
 */
const run = fc
  .array(fc.record({ late: fc.boolean(), skip: fc.boolean(), delay: fc.nat(), rank: fc.nat() }), {
    maxLength: 200,
  })
  .map((items) =>
    items.map((item, i) => ({
      ...item,
      fillAt: i + (item.delay % (items.length - i + 1)),
    })),
  )

describe("OrderedDelivery", () => {
  // fast-check directly: its record/nat arbitraries describe the runs best.
  it("delivers in arrival order, minus the skipped slots, whatever order late slots are filled in", () =>
    fc.assert(
      fc.property(run, (items) => {
        const delivered: Array<number> = []
        const ordered = new OrderedDelivery<number>((value) => delivered.push(value))
        const fills = new Map<number, Array<{ rank: number; fill: () => void }>>()
        const expected = items.flatMap((item, i) => (item.late && item.skip ? [] : [i]))

        const fillDueAt = (step: number) => {
          for (const { fill } of (fills.get(step) ?? []).sort((a, b) => a.rank - b.rank)) fill()
          // Whatever happened so far, what was delivered is the start of the expected sequence.
          assert.deepStrictEqual(delivered, expected.slice(0, delivered.length))
        }

        items.forEach((item, i) => {
          if (item.late) {
            const fill = ordered.reserve()
            const due = fills.get(item.fillAt) ?? []
            due.push({ rank: item.rank, fill: () => fill(item.skip ? undefined : i) })
            fills.set(item.fillAt, due)
          } else {
            const nothingPending = ordered.pending === 0
            const before = delivered.length
            ordered.push(i)
            // A value pushed while nothing waits is delivered synchronously.
            if (nothingPending) assert.strictEqual(delivered.length, before + 1)
          }
          fillDueAt(i)
        })
        fillDueAt(items.length)

        assert.deepStrictEqual(delivered, expected)
        assert.strictEqual(ordered.pending, 0)
      }),
    ))

  it("delivers a pushed value at once when nothing is pending", () => {
    const delivered: Array<string> = []
    const ordered = new OrderedDelivery<string>((value) => delivered.push(value))
    ordered.push("a")
    assert.deepStrictEqual(delivered, ["a"])
    ordered.push("b")
    assert.deepStrictEqual(delivered, ["a", "b"])
    assert.strictEqual(ordered.pending, 0)
  })

  it("holds values behind a reserved slot until it is filled", () => {
    const delivered: Array<string> = []
    const ordered = new OrderedDelivery<string>((value) => delivered.push(value))
    const fill = ordered.reserve()
    ordered.push("b")
    ordered.push("c")
    assert.deepStrictEqual(delivered, [])
    assert.strictEqual(ordered.pending, 3)
    fill("a")
    assert.deepStrictEqual(delivered, ["a", "b", "c"])
    assert.strictEqual(ordered.pending, 0)
  })

  it("ignores a second fill of the same slot", () => {
    const delivered: Array<string> = []
    const ordered = new OrderedDelivery<string>((value) => delivered.push(value))
    const first = ordered.reserve()
    const second = ordered.reserve()
    first("a")
    first("again")
    assert.deepStrictEqual(delivered, ["a"])
    second(undefined)
    second("late value of a skipped slot")
    ordered.push("c")
    assert.deepStrictEqual(delivered, ["a", "c"])
  })

  it("ignores a second fill of a slot that is still held back", () => {
    const delivered: Array<string> = []
    const ordered = new OrderedDelivery<string>((value) => delivered.push(value))
    const first = ordered.reserve()
    const second = ordered.reserve()
    second("b")
    second("b again")
    first("a")
    assert.deepStrictEqual(delivered, ["a", "b"])
  })

  it("keeps order across long runs that compact its slots", () => {
    const delivered: Array<number> = []
    const ordered = new OrderedDelivery<number>((value) => delivered.push(value))
    const expected: Array<number> = []
    let next = 0
    // Each round: one slot held back, a few thousand values behind it, another late slot; filling
    // the first releases most of the run while the second still waits.
    for (let round = 0; round < 3; round++) {
      const first = ordered.reserve()
      const firstValue = next++
      const behind: Array<number> = []
      for (let i = 0; i < 1500; i++) behind.push(next++)
      for (const value of behind) ordered.push(value)
      const second = ordered.reserve()
      const secondValue = next++
      const after = next++
      ordered.push(after)
      first(firstValue)
      expected.push(firstValue, ...behind)
      assert.deepStrictEqual(delivered, expected)
      second(secondValue)
      expected.push(secondValue, after)
      assert.deepStrictEqual(delivered, expected)
      assert.strictEqual(ordered.pending, 0)
    }
  })
})
