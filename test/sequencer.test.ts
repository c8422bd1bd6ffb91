/**
 * Sequencer: a namespace's packets reach local clients in offset order. Other nodes' packets arrive
 * in commit order (announced when their notification arrives, pushed once ready); own packets keep
 * their send order, and a stored one, whose offset is known when its statement returns, is merged
 * in by offset once the notifications committed before it have arrived; a hold (session restore,
 * lost LISTEN connection) keeps everything back until it is released, possibly with the packets
 * read back meanwhile; an offset already delivered is never delivered again.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as fc from "fast-check"
import { Sequencer } from "../src/recovery/Sequencer.js"

/** Lets every queued microtask run (the Sequencer delivers own packets one microtask later). */
const microtasks = () => new Promise<void>((resolve) => setImmediate(resolve))

/** A Sequencer of labels, recording what it delivered; listening started before anything. */
const recording = () => {
  const delivered: Array<string> = []
  const offsets: Array<bigint | undefined> = []
  const sequencer = new Sequencer<string>((item, offset) => {
    delivered.push(item)
    offsets.push(offset)
  })
  sequencer.seenUpTo(0n)
  /** Stores an own packet: `settle` is its statement returning, with an offset or failed. */
  const store = () => {
    const slot = sequencer.beginStore()
    return (item: string, offset?: number, after?: number) =>
      sequencer.endStore(
        slot,
        item,
        offset === undefined ? undefined : BigInt(offset),
        after === undefined ? undefined : BigInt(after),
      )
  }
  return { delivered, offsets, sequencer, store }
}

/** An async test body. */
const async = (body: () => Promise<void>) => () => Effect.promise(body)

describe("Sequencer with nothing in flight", () => {
  it("delivers other nodes' packets at once, synchronously, with their offset", () => {
    const { delivered, offsets, sequencer } = recording()
    sequencer.push(1n, "f1")
    assert.deepStrictEqual(delivered, ["f1"])
    sequencer.push(undefined, "x")
    sequencer.push(2n, "f2")
    assert.deepStrictEqual(delivered, ["f1", "x", "f2"])
    assert.deepStrictEqual(offsets, [1n, undefined, 2n])
    assert.strictEqual(sequencer.held, 0)
    assert.strictEqual(sequencer.lastDelivered, 2n)
  })

  it("drops a packet whose offset was already delivered, never one without an offset", () => {
    const { delivered, sequencer } = recording()
    sequencer.push(1n, "f1")
    sequencer.push(1n, "f1 again")
    sequencer.push(undefined, "x")
    sequencer.push(undefined, "x again")
    sequencer.push(2n, "f2")
    sequencer.push(1n, "f1 late")
    assert.deepStrictEqual(delivered, ["f1", "x", "x again", "f2"])
  })

  it("delivers an own packet without offset at once", () => {
    const { delivered, offsets, sequencer } = recording()
    sequencer.own("volatile")
    assert.deepStrictEqual(delivered, ["volatile"])
    assert.deepStrictEqual(offsets, [undefined])
  })
})

describe("Sequencer with own packets being stored", () => {
  it.effect(
    "holds other nodes' packets while an own packet is stored, then merges them by offset",
    async(async () => {
      const { delivered, offsets, sequencer, store } = recording()
      const o2 = store()
      sequencer.push(1n, "f1")
      sequencer.push(undefined, "x")
      sequencer.push(3n, "f3")
      assert.deepStrictEqual(delivered, [])
      o2("o2", 2, 1)
      await microtasks()
      assert.deepStrictEqual(delivered, ["f1", "x", "o2", "f3"])
      assert.deepStrictEqual(offsets, [1n, undefined, 2n, 3n])
      assert.strictEqual(sequencer.held, 0)
    }),
  )

  it.effect(
    "delivers an own packet a microtask after its statement returns, not synchronously",
    async(async () => {
      const { delivered, sequencer, store } = recording()
      store()("o1", 1, 0)
      assert.deepStrictEqual(delivered, [])
      assert.strictEqual(sequencer.held, 1)
      await Promise.resolve()
      assert.deepStrictEqual(delivered, ["o1"])
    }),
  )

  it.effect(
    "merges every packet of a returning statement with the waiting ones",
    async(async () => {
      const { delivered, sequencer, store } = recording()
      const o2 = store()
      const o3 = store()
      sequencer.push(1n, "f1")
      sequencer.push(4n, "f4")
      // One statement stored both: they settle in the same tick.
      o2("o2", 2, 1)
      o3("o3", 3, 1)
      await microtasks()
      assert.deepStrictEqual(delivered, ["f1", "o2", "o3", "f4"])
    }),
  )

  it.effect(
    "delivers a statement's packets while a later statement is in flight, which holds the rest",
    async(async () => {
      const { delivered, sequencer, store } = recording()
      const o2 = store()
      const o4 = store()
      sequencer.push(1n, "f1")
      o2("o2", 2, 1)
      await microtasks()
      assert.deepStrictEqual(delivered, ["f1", "o2"])
      // The second statement went out after f1 arrived; f3 arrives while it is in flight.
      sequencer.push(3n, "f3")
      assert.deepStrictEqual(delivered, ["f1", "o2"])
      o4("o4", 4, 3)
      await microtasks()
      assert.deepStrictEqual(delivered, ["f1", "o2", "f3", "o4"])
    }),
  )

  it.effect(
    "delivers a failed store in its place among own packets, without an offset",
    async(async () => {
      const { delivered, offsets, sequencer, store } = recording()
      const failed = store()
      const o1 = store()
      sequencer.push(undefined, "x")
      // The first statement failed: its packet goes, without an offset, and what waited for it.
      failed("failed")
      await microtasks()
      assert.deepStrictEqual(delivered, ["failed", "x"])
      o1("o1", 1, 0)
      await microtasks()
      assert.deepStrictEqual(delivered, ["failed", "x", "o1"])
      assert.deepStrictEqual(offsets, [undefined, undefined, 1n])
    }),
  )

  it.effect(
    "keeps own packets without offset in send order behind stored ones",
    async(async () => {
      const { delivered, sequencer, store } = recording()
      const o1 = store()
      sequencer.own("volatile a")
      const o2 = store()
      sequencer.own("volatile b")
      assert.deepStrictEqual(delivered, [])
      o2("o2", 2, 0)
      await microtasks()
      assert.deepStrictEqual(delivered, [])
      o1("o1", 1, 0)
      await microtasks()
      assert.deepStrictEqual(delivered, ["o1", "volatile a", "o2", "volatile b"])
      sequencer.own("volatile c")
      assert.deepStrictEqual(delivered, ["o1", "volatile a", "o2", "volatile b", "volatile c"])
    }),
  )

  it.effect(
    "ignores a second settlement of the same store",
    async(async () => {
      const { delivered, sequencer } = recording()
      const slot = sequencer.beginStore()
      sequencer.endStore(slot, "o1", 1n, 0n)
      sequencer.endStore(slot, "o1 again", 2n, 0n)
      await microtasks()
      assert.deepStrictEqual(delivered, ["o1"])
      sequencer.push(3n, "f3")
      assert.deepStrictEqual(delivered, ["o1", "f3"])
    }),
  )
})

describe("Sequencer with notifications committed before an own packet arriving after it", () => {
  it.effect(
    "holds an own packet until the notification it comes after arrives",
    async(async () => {
      const { delivered, sequencer, store } = recording()
      // f1 committed, then o2's statement ran and returned before f1's notification arrived.
      store()("o2", 2, 1)
      await microtasks()
      assert.deepStrictEqual(delivered, [])
      sequencer.push(1n, "f1")
      assert.deepStrictEqual(delivered, ["f1", "o2"])
      assert.strictEqual(sequencer.held, 0)
    }),
  )

  it.effect(
    "waits for where listening started before delivering an own packet that comes after others",
    async(async () => {
      const delivered: Array<string> = []
      const sequencer = new Sequencer<string>((item) => delivered.push(item))
      const slot = sequencer.beginStore()
      sequencer.endStore(slot, "o6", 6n, 5n)
      await microtasks()
      assert.deepStrictEqual(delivered, [])
      // Notifications up to 5 were committed before we listened: none to wait for.
      sequencer.seenUpTo(5n)
      assert.deepStrictEqual(delivered, ["o6"])
    }),
  )

  it.effect(
    "stops waiting when what an own packet waits for is known to be lost (failed catch-up)",
    async(async () => {
      const { delivered, sequencer, store } = recording()
      store()("o9", 9, 8)
      await microtasks()
      assert.deepStrictEqual(delivered, [])
      sequencer.stopWaiting()
      assert.deepStrictEqual(delivered, ["o9"])
      // Later own packets wait as usual.
      store()("o11", 11, 10)
      await microtasks()
      assert.deepStrictEqual(delivered, ["o9"])
      sequencer.seenUpTo(10n)
      assert.deepStrictEqual(delivered, ["o9", "o11"])
    }),
  )

  it.effect(
    "holds an own packet until lower offsets announced before it are pushed",
    async(async () => {
      const { delivered, sequencer, store } = recording()
      const o3 = store()
      // f1 and f2 arrived, their attachments are being fetched.
      sequencer.announce(1n)
      sequencer.announce(2n)
      o3("o3", 3, 2)
      await microtasks()
      assert.deepStrictEqual(delivered, [])
      sequencer.push(1n, "f1")
      assert.deepStrictEqual(delivered, ["f1"])
      sequencer.push(2n, "f2")
      assert.deepStrictEqual(delivered, ["f1", "f2", "o3"])
    }),
  )

  it.effect(
    "lets an own packet below the first announced offset go, and holds the ones above it",
    async(async () => {
      const { delivered, sequencer, store } = recording()
      const o2 = store()
      const o4 = store()
      sequencer.announce(3n)
      o2("o2", 2, 0)
      o4("o4", 4, 3)
      await microtasks()
      assert.deepStrictEqual(delivered, ["o2"])
      sequencer.push(3n, "f3")
      assert.deepStrictEqual(delivered, ["o2", "f3", "o4"])
    }),
  )

  it.effect(
    "releases own packets held by an announced packet that is retracted",
    async(async () => {
      const { delivered, sequencer, store } = recording()
      const o2 = store()
      sequencer.announce(1n)
      sequencer.announce(3n)
      o2("o2", 2, 1)
      const o4 = store()
      o4("o4", 4, 3)
      await microtasks()
      assert.deepStrictEqual(delivered, [])
      // The attachment of 3 was missing: retracted first, while 1 is still being fetched.
      sequencer.retract(3n)
      assert.deepStrictEqual(delivered, [])
      sequencer.retract(1n)
      assert.deepStrictEqual(delivered, ["o2", "o4"])
      sequencer.retract(99n)
      assert.strictEqual(sequencer.held, 0)
    }),
  )

  it("forgets announced offsets skipped before a pushed one", () => {
    const { delivered, sequencer } = recording()
    sequencer.announce(1n)
    sequencer.announce(2n)
    sequencer.push(2n, "f2")
    assert.deepStrictEqual(delivered, ["f2"])
    assert.strictEqual(sequencer.held, 0)
  })
})

describe("Sequencer holds (session restore, lost LISTEN connection)", () => {
  it("holds everything until released, then delivers in arrival order", () => {
    const { delivered, sequencer } = recording()
    sequencer.hold()
    sequencer.push(1n, "f1")
    sequencer.push(undefined, "x")
    sequencer.own("volatile")
    sequencer.push(2n, "f2")
    assert.deepStrictEqual(delivered, [])
    sequencer.release()
    assert.sameMembers(delivered, ["f1", "x", "volatile", "f2"])
    assert.deepStrictEqual(
      delivered.filter((item) => item !== "volatile"),
      ["f1", "x", "f2"],
    )
    assert.strictEqual(sequencer.held, 0)
  })

  it.effect(
    "holds own packets that returned during the hold, then merges them",
    async(async () => {
      const { delivered, sequencer, store } = recording()
      sequencer.hold()
      const o2 = store()
      sequencer.push(1n, "f1")
      o2("o2", 2, 1)
      await microtasks()
      sequencer.push(3n, "f3")
      await microtasks()
      assert.deepStrictEqual(delivered, [])
      sequencer.release()
      assert.deepStrictEqual(delivered, ["f1", "o2", "f3"])
    }),
  )

  it("holds until the last of overlapping holds is released", () => {
    const { delivered, sequencer } = recording()
    sequencer.hold()
    sequencer.hold()
    sequencer.push(1n, "f1")
    sequencer.release()
    assert.deepStrictEqual(delivered, [])
    sequencer.push(2n, "f2")
    sequencer.release()
    assert.deepStrictEqual(delivered, ["f1", "f2"])
    sequencer.push(3n, "f3")
    assert.deepStrictEqual(delivered, ["f1", "f2", "f3"])
  })

  it.effect(
    "keeps holding, after a release, the packets that an own statement in flight must precede",
    async(async () => {
      const { delivered, sequencer, store } = recording()
      const o1 = store() // sent, takes offset 1
      sequencer.hold()
      sequencer.push(2n, "f2") // committed after o1, its notification came first
      sequencer.release()
      assert.deepStrictEqual(delivered, [])
      o1("o1", 1, 0)
      await microtasks()
      assert.deepStrictEqual(delivered, ["o1", "f2"])
    }),
  )

  it("puts the packets read back first and drops the waiting ones they cover", () => {
    const { delivered, offsets, sequencer } = recording()
    const read = (offset: number, item: string) => ({ offset: BigInt(offset), item })
    sequencer.push(1n, "f1")
    sequencer.hold()
    // Arrived around the reconnection: 3 was also read back, 5 and x were not.
    sequencer.push(3n, "f3 live")
    sequencer.push(5n, "f5")
    sequencer.release({
      upTo: 4n,
      items: [read(2, "f2 read"), read(3, "f3 read"), read(4, "f4 read")],
    })
    assert.deepStrictEqual(delivered, ["f1", "f2 read", "f3 read", "f4 read", "f5"])
    assert.deepStrictEqual(offsets, [1n, 2n, 3n, 4n, 5n])
    assert.strictEqual(sequencer.held, 0)
  })

  it.effect(
    "counts the packets read back as seen: own packets stop waiting for the missed notifications",
    async(async () => {
      const { delivered, sequencer, store } = recording()
      sequencer.hold()
      // Notifications of 2 and 3 were missed while the connection was down.
      store()("o4", 4, 3)
      await microtasks()
      sequencer.release({
        upTo: 3n,
        items: [
          { offset: 2n, item: "f2 read" },
          { offset: 3n, item: "f3 read" },
        ],
      })
      assert.deepStrictEqual(delivered, ["f2 read", "f3 read", "o4"])
      sequencer.push(5n, "f5")
      assert.deepStrictEqual(delivered, ["f2 read", "f3 read", "o4", "f5"])
    }),
  )

  it.effect(
    "forgets announced offsets that the packets read back cover",
    async(async () => {
      const { delivered, sequencer, store } = recording()
      sequencer.hold()
      sequencer.announce(2n)
      store()("o4", 4, 2)
      await microtasks()
      sequencer.release({ upTo: 3n, items: [{ offset: 2n, item: "f2 read" }] })
      // 2 was read back: o4 no longer waits for its attachment.
      assert.deepStrictEqual(delivered, ["f2 read", "o4"])
      // The attachment of 2 arrives late: already delivered, dropped.
      sequencer.push(2n, "f2 live")
      assert.deepStrictEqual(delivered, ["f2 read", "o4"])
    }),
  )

  it.effect(
    "delivers an own packet once when it is also read back",
    async(async () => {
      const { delivered, offsets, sequencer, store } = recording()
      const o1 = store()
      sequencer.hold()
      o1("o1", 1, 0)
      await microtasks()
      sequencer.release({
        upTo: 2n,
        items: [
          { offset: 1n, item: "o1 read" },
          { offset: 2n, item: "f2 read" },
        ],
      })
      // Either copy of 1, once.
      assert.deepStrictEqual(offsets, [1n, 2n])
      assert.match(delivered[0]!, /^o1/)
      assert.strictEqual(sequencer.held, 0)
    }),
  )
})

/**
 * A run of the real world, one step at a time. Offsets come from one counter, taken at commit.
 * Other nodes commit packets (`foreignTake`), notified or stored only (for a socket of theirs);
 * notifications arrive later in commit order (`arrive`), inline or with an attachment to fetch,
 * and are announced; the inbox pushes them in arrival order once fetched (`fetch`), or gives one
 * up (`giveUp`: retracted, never pushed). Some messages carry no offset (`plain`). Own packets are
 * queued (`ownBegin`, notified or not) or sent without being stored (`ownPlain`); one statement
 * at a time stores a prefix of the queue (`send`: consecutive offsets, or none when it fails) and
 * returns whenever (`return`: its packets settle in one tick with the last offset notified before
 * the statement, optionally the next statement goes out in that tick). Listening starts
 * (`listen`: where it started is known). Restores hold and release (`restore`, `restored`). The
 * LISTEN connection may drop (`lose`: notifications are missed until `reconnect`, which reads
 * back the packets after the last delivered offset).
 */
type Step =
  | { readonly kind: "foreignTake"; readonly attachment: boolean; readonly silent: boolean }
  | { readonly kind: "arrive" }
  | { readonly kind: "fetch" }
  | { readonly kind: "giveUp"; readonly index: number }
  | { readonly kind: "plain" }
  | { readonly kind: "ownBegin"; readonly notified: boolean }
  | { readonly kind: "ownPlain" }
  | { readonly kind: "send"; readonly size: number; readonly fails: boolean }
  | { readonly kind: "return"; readonly chain: boolean }
  | { readonly kind: "listen" }
  | { readonly kind: "restore" }
  | { readonly kind: "restored" }
  | { readonly kind: "lose" }
  | { readonly kind: "reconnect" }

/**
 * Steps drawn with weights of their own per run, so that some runs are mostly restores, some
 * mostly own packets, some long statements with many notifications crossing them.
 */
const steps: fc.Arbitrary<ReadonlyArray<Step>> = fc
  .tuple(...Array.from({ length: 9 }, () => fc.integer({ min: 0, max: 4 })))
  .chain(([take, arrive, fetch, plain, begin, send, ret, restore, lose]) =>
    fc.array(
      fc.oneof(
        {
          weight: take + 1,
          arbitrary: fc.record({
            kind: fc.constant("foreignTake" as const),
            attachment: fc.boolean(),
            silent: fc.integer({ min: 0, max: 5 }).map((n) => n === 0),
          }),
        },
        { weight: arrive + 1, arbitrary: fc.constant({ kind: "arrive" } as const) },
        { weight: fetch + 1, arbitrary: fc.constant({ kind: "fetch" } as const) },
        {
          weight: 1,
          arbitrary: fc.record({ kind: fc.constant("giveUp" as const), index: fc.nat(4) }),
        },
        { weight: plain, arbitrary: fc.constant({ kind: "plain" } as const) },
        {
          weight: begin + 1,
          arbitrary: fc.record({ kind: fc.constant("ownBegin" as const), notified: fc.boolean() }),
        },
        { weight: plain, arbitrary: fc.constant({ kind: "ownPlain" } as const) },
        {
          weight: send + 1,
          arbitrary: fc.record({
            kind: fc.constant("send" as const),
            size: fc.integer({ min: 1, max: 4 }),
            fails: fc.integer({ min: 0, max: 5 }).map((n) => n === 0),
          }),
        },
        {
          weight: ret + 1,
          arbitrary: fc.record({ kind: fc.constant("return" as const), chain: fc.boolean() }),
        },
        { weight: 1, arbitrary: fc.constant({ kind: "listen" } as const) },
        { weight: restore, arbitrary: fc.constant({ kind: "restore" } as const) },
        { weight: restore, arbitrary: fc.constant({ kind: "restored" } as const) },
        { weight: lose === 0 ? 0 : 1, arbitrary: fc.constant({ kind: "lose" } as const) },
        { weight: lose, arbitrary: fc.constant({ kind: "reconnect" } as const) },
      ),
      { maxLength: 120, size: "max" },
    ),
  )

interface Packet {
  readonly label: string
  readonly offset: bigint | undefined
  /** Sent to the LISTEN connection (others' packets), as opposed to stored only. */
  readonly notified: boolean
  readonly attachment: boolean
}

const compare = (a: bigint, b: bigint) => (a < b ? -1 : a > b ? 1 : 0)

describe("Sequencer against a model of the cluster", () => {
  it("delivers each offset once in increasing order, nothing lost, others' and own packets each in their order", () =>
    fc.assert(
      fc.asyncProperty(steps, async (run) => {
        const delivered: Array<{ readonly packet: Packet; readonly offset: bigint | undefined }> =
          []
        const sequencer = new Sequencer<Packet>((packet, offset) =>
          delivered.push({ packet, offset }),
        )
        let counter = 0n
        /** The highest notified offset committed so far: what a statement returns as `after`. */
        let lastNotified = 0n
        let next = 0
        // Every packet committed to the packets table, by offset.
        const table = new Map<bigint, Packet>()
        // Committed by other nodes and notified, notification not arrived yet.
        const committed: Array<Packet> = []
        // Arrived (announced if they carry an offset), waiting for the inbox to push them.
        const inbox: Array<{ packet: Packet; gaveUp: boolean }> = []
        // Others' packets pushed, in order; own packets, in send order.
        const pushed: Array<Packet> = []
        const sent: Array<Packet> = []
        // Offsets that must be delivered (pushed, own settled, read back); packets without one.
        const mustDeliver = new Set<bigint>()
        const withoutOffset: Array<Packet> = []
        const queued: Array<{ label: string; notified: boolean }> = []
        let inFlight: Array<Packet> = []
        let inFlightAfter = 0n
        let restoring = 0
        let lost = false
        let listened = false

        /** Delivered offsets only grow, whatever happened so far. */
        const check = () => {
          const offsets = delivered.flatMap(({ offset }) => (offset === undefined ? [] : [offset]))
          for (let i = 1; i < offsets.length; i++) {
            assert.isTrue(offsets[i - 1]! < offsets[i]!, `offsets ${offsets.join(",")}`)
          }
        }

        const push = (packet: Packet) => {
          pushed.push(packet)
          if (packet.offset === undefined) withoutOffset.push(packet)
          else mustDeliver.add(packet.offset)
          sequencer.push(packet.offset, packet)
        }

        /** The inbox delivers in arrival order: the head once it is fetched, or given up. */
        const fetchHead = () => {
          const head = inbox.shift()
          if (head !== undefined && !head.gaveUp) push(head.packet)
        }

        const arrive = () => {
          const packet = committed.shift()
          if (packet === undefined) return
          // Missed while the LISTEN connection is down; the reconnection reads it back.
          if (lost) return
          if (packet.offset !== undefined) sequencer.announce(packet.offset)
          if (!packet.attachment && inbox.length === 0) push(packet)
          else inbox.push({ packet, gaveUp: false })
        }

        const send = (size: number, fails: boolean) => {
          const batch = queued.splice(0, size)
          inFlightAfter = lastNotified
          inFlight = batch.map(({ label, notified }) => {
            const packet = {
              label,
              offset: fails ? undefined : ++counter,
              notified,
              attachment: false,
            }
            if (packet.offset !== undefined) {
              table.set(packet.offset, packet)
              if (notified) lastNotified = packet.offset
            }
            return packet
          })
        }

        const slots: Array<ReturnType<Sequencer<Packet>["beginStore"]>> = []
        const returnStatement = (chain: boolean) => {
          const before = delivered.length
          for (const packet of inFlight) {
            const slot = slots.shift()!
            if (packet.offset === undefined) withoutOffset.push(packet)
            else mustDeliver.add(packet.offset)
            sequencer.endStore(slot, packet, packet.offset, inFlightAfter)
          }
          inFlight = []
          if (chain && queued.length > 0) send(queued.length, false)
          assert.strictEqual(delivered.length, before, "delivered a microtask later")
        }

        const reconnect = () => {
          lost = false
          // Read back: every stored packet after the last delivered offset, up to the last one.
          const from = sequencer.lastDelivered ?? 0n
          const rows = [...table.entries()]
            .filter(([offset]) => offset > from)
            .sort(([a], [b]) => compare(a, b))
          for (const [offset] of rows) mustDeliver.add(offset)
          sequencer.release({
            upTo: rows.length > 0 ? rows[rows.length - 1]![0] : from,
            // Copies: what is read back is not the live notification's packet.
            items: rows.map(([offset, packet]) => ({
              offset,
              item: { ...packet, label: `${packet.label} read` },
            })),
          })
        }

        for (const s of run) {
          switch (s.kind) {
            case "foreignTake": {
              const packet = {
                label: `f${++next}`,
                offset: ++counter,
                notified: !s.silent,
                attachment: s.attachment,
              }
              table.set(packet.offset, packet)
              if (packet.notified) {
                lastNotified = packet.offset
                committed.push(packet)
              }
              break
            }
            case "arrive":
              arrive()
              break
            case "fetch":
              fetchHead()
              break
            case "giveUp": {
              const entry = inbox[s.index % Math.max(1, inbox.length)]
              if (entry !== undefined && !entry.gaveUp && entry.packet.offset !== undefined) {
                entry.gaveUp = true
                sequencer.retract(entry.packet.offset)
              }
              break
            }
            case "plain": {
              // Through the inbox too: behind the attachments being fetched.
              if (lost) break
              const packet = {
                label: `p${++next}`,
                offset: undefined,
                notified: true,
                attachment: false,
              }
              if (inbox.length === 0) push(packet)
              else inbox.push({ packet, gaveUp: false })
              break
            }
            case "ownBegin":
              queued.push({ label: `o${++next}`, notified: s.notified })
              sent.push({
                label: `o${next}`,
                offset: undefined,
                notified: s.notified,
                attachment: false,
              })
              slots.push(sequencer.beginStore())
              break
            case "ownPlain": {
              const packet = {
                label: `v${++next}`,
                offset: undefined,
                notified: true,
                attachment: false,
              }
              sent.push(packet)
              withoutOffset.push(packet)
              sequencer.own(packet)
              break
            }
            case "send":
              if (inFlight.length === 0 && queued.length > 0) send(s.size, s.fails)
              break
            case "return":
              if (inFlight.length > 0) returnStatement(s.chain)
              break
            case "listen":
              if (!listened) {
                listened = true
                sequencer.seenUpTo(0n)
              }
              break
            case "restore":
              restoring++
              sequencer.hold()
              break
            case "restored":
              if (restoring > 0) {
                restoring--
                sequencer.release()
              }
              break
            case "lose":
              if (!lost) {
                lost = true
                sequencer.hold()
              }
              break
            case "reconnect":
              if (lost) reconnect()
              break
          }
          await Promise.resolve()
          check()
        }

        // Everything settles: statements return, listening started, holds end, notifications
        // arrive.
        while (inFlight.length > 0 || queued.length > 0) {
          if (inFlight.length === 0) send(queued.length, false)
          returnStatement(false)
          await microtasks()
        }
        if (!listened) sequencer.seenUpTo(0n)
        if (lost) reconnect()
        while (restoring > 0) {
          restoring--
          sequencer.release()
        }
        while (committed.length > 0) arrive()
        while (inbox.length > 0) fetchHead()
        await microtasks()
        check()

        assert.strictEqual(sequencer.held, 0)
        // Every offset pushed, stored or read back: delivered exactly once.
        const deliveredOffsets = delivered.flatMap(({ offset }) =>
          offset === undefined ? [] : [offset],
        )
        assert.deepStrictEqual(deliveredOffsets, [...mustDeliver].sort(compare))
        for (const { packet, offset } of delivered) assert.strictEqual(packet.offset, offset)
        // Packets without an offset: every one, once.
        assert.sameMembers(
          delivered.filter(({ offset }) => offset === undefined).map(({ packet }) => packet.label),
          withoutOffset.map((packet) => packet.label),
        )
        // Others' packets delivered live in the order they were pushed; own ones in send order
        // (a copy read back may take the place of either).
        const inOrder = (order: Map<string, number>, live: (packet: Packet) => boolean) => {
          const seen = delivered
            .filter(({ packet }) => live(packet))
            .map(({ packet }) => order.get(packet.label))
            .filter((i): i is number => i !== undefined)
          assert.deepStrictEqual(
            seen,
            [...seen].sort((a, b) => a - b),
          )
        }
        const pushedSet = new Set(pushed)
        inOrder(new Map(pushed.map((packet, i) => [packet.label, i])), (p) => pushedSet.has(p))
        inOrder(new Map(sent.map((packet, i) => [packet.label, i])), (p) => !pushedSet.has(p))
      }),
      { numRuns: 300 },
    ))
})
