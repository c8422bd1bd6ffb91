/** The edit distance behind "did you mean": the metric's laws, and suggestions near and far. */
import { assert, describe, it } from "@effect/vitest"
import * as fc from "fast-check"
import { didYouMean, editDistance } from "../src/internal/didYouMean.js"

describe("editDistance", () => {
  it("counts insertions, deletions and substitutions", () => {
    assert.strictEqual(editDistance("", ""), 0)
    assert.strictEqual(editDistance("abc", ""), 3)
    assert.strictEqual(editDistance("", "abc"), 3)
    assert.strictEqual(editDistance("kitten", "sitting"), 3)
    assert.strictEqual(editDistance("heartbeatTimout", "heartbeatTimeout"), 1)
    assert.strictEqual(editDistance("flaw", "lawn"), 2)
    assert.strictEqual(editDistance("ab", "ba"), 2)
  })

  it("is a metric: zero only on equal strings, symmetric, with the triangle inequality", () => {
    fc.assert(
      fc.property(fc.string(), fc.string(), fc.string(), (a, b, c) => {
        assert.strictEqual(editDistance(a, b) === 0, a === b)
        assert.strictEqual(editDistance(a, b), editDistance(b, a))
        assert.isAtMost(editDistance(a, c), editDistance(a, b) + editDistance(b, c))
        assert.isAtLeast(editDistance(a, b), Math.abs(a.length - b.length))
        assert.isAtMost(editDistance(a, b), Math.max(a.length, b.length))
      }),
    )
  })
})

describe("didYouMean", () => {
  const names = ["heartbeatInterval", "heartbeatTimeout", "tableName", "channelPrefix"]

  it("suggests the nearest name, case aside", () => {
    assert.strictEqual(didYouMean("heartbeatTimout", names), "heartbeatTimeout")
    assert.strictEqual(didYouMean("heartbeatIntervall", names), "heartbeatInterval")
    assert.strictEqual(didYouMean("TABLENAME", names), "tableName")
    assert.strictEqual(didYouMean("chanelPrefix", names), "channelPrefix")
  })

  it("suggests nothing when no name is near", () => {
    assert.strictEqual(didYouMean("somethingElse", names), undefined)
    assert.strictEqual(didYouMean("x", names), undefined)
    assert.strictEqual(didYouMean("timeout", names), undefined)
  })
})
