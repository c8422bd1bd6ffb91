/**
 * What a node knows of the kinds of its peers: a heartbeat with our marker is a node of ours, one
 * without is a node of another kind (0.5.0), and a namespace is "all ours" while no node of
 * another kind is in it. Checked against a model on random histories.
 */
import { assert, describe, it } from "@effect/vitest"
import * as fc from "fast-check"
import * as Capability from "../src/Capability.js"
import * as Protocol from "../src/Protocol.js"

const marker = (server: string): Capability.Marker => ({ v: Capability.VERSION, server })

type Op =
  | {
      readonly _tag: "heard"
      readonly uid: string
      readonly server: string | undefined
      readonly v: number
    }
  | { readonly _tag: "forget"; readonly uid: string }

const uid = fc.constantFrom("a", "b", "c", "d")
const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    _tag: fc.constant("heard" as const),
    uid,
    server: fc.option(fc.constantFrom("S1", "S2"), { nil: undefined }),
    v: fc.integer({ min: 1, max: 3 }),
  }),
  fc.record({ _tag: fc.constant("forget" as const), uid }),
)

describe("Capability.Peers", () => {
  it("is all ours exactly while no node last heard without the marker is still there", () => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
        const told: Array<string> = []
        const peers = new Capability.Peers((u) => void told.push(u))
        // The model: uid -> server id and version, or null for another kind.
        const model = new Map<string, { server: string; v: number } | null>()
        const expectedTold: Array<string> = []
        for (const o of ops) {
          if (o._tag === "heard") {
            const kind = o.server === undefined ? null : { server: o.server, v: o.v }
            if (kind === null && model.get(o.uid) !== null) expectedTold.push(o.uid)
            model.set(o.uid, kind)
            peers.heard(o.uid, kind ?? undefined)
          } else {
            model.delete(o.uid)
            peers.forget(o.uid)
          }
          const foreign = [...model].filter(([, k]) => k === null).map(([u]) => u)
          assert.strictEqual(peers.allOurs(), foreign.length === 0)
          for (const atLeast of [1, 2, 3]) {
            const ok = [...model.values()].every((k) => k !== null && k.v >= atLeast)
            assert.strictEqual(peers.allOurs(atLeast), ok, `allOurs(${atLeast})`)
          }
          assert.deepStrictEqual([...peers.foreign()].sort(), foreign.sort())
          for (const [u, k] of model) assert.strictEqual(peers.serverOf(u), k?.server)
        }
        assert.deepStrictEqual(told, expectedTold)
      }),
    )
  })
})

describe("Capability.Capabilities", () => {
  it("tells each node of another kind with its namespace, and is all ours again once it left", () => {
    const capabilities = new Capability.Capabilities()
    const seen: Array<Capability.ForeignSeen> = []
    const stop = capabilities.onForeign((event) => void seen.push(event))
    const a = capabilities.register("/a")
    const b = capabilities.register("/b")
    a.peers.heard("x", marker("S1"))
    assert.isTrue(capabilities.allOurs())
    b.peers.heard("old", undefined)
    assert.isFalse(capabilities.allOurs())
    assert.isTrue(a.peers.allOurs())
    assert.deepStrictEqual(seen, [{ nsp: "/b", uid: "old" }])
    b.peers.forget("old")
    assert.isTrue(capabilities.allOurs())
    b.peers.heard("old2", undefined)
    b.release()
    assert.isTrue(capabilities.allOurs(), "a released namespace no longer counts")
    stop()
    a.peers.heard("old3", undefined)
    assert.strictEqual(seen.length, 2, "a stopped listener is not told")
  })
})

describe("the marker on the wire", () => {
  it("is accepted in heartbeats and refused when malformed", () => {
    const ok = { uid: "u", nsp: "/", type: 2, ours: marker("S1") }
    assert.isTrue(Protocol.decodeMessage(ok)._tag === "Success")
    assert.isTrue(Protocol.decodeMessage({ ...ok, type: 1 })._tag === "Success")
    assert.isTrue(Protocol.decodeMessage({ uid: "u", type: 2 })._tag === "Success")
    assert.isTrue(Protocol.decodeMessage({ ...ok, ours: { v: 0, server: "S" } })._tag === "Failure")
    assert.isTrue(Protocol.decodeMessage({ ...ok, ours: "yes" })._tag === "Failure")
  })
})
