/**
 * Issue 16: only the cluster speaks on its channels. An ordinary database login (a pool of its own,
 * raw `pg_notify`, a raw LISTEN, an INSERT into the attachments table) attacks two real servers
 * with real clients: each attack is first seen to work on an unsigned cluster, then to fail on a
 * cluster with a `secret`, where genuine traffic, requests, the emitter and recovery still work.
 * Signed, a statement's notifications on a channel share one MAC: a captured batch sent again in
 * whole or in part, or altered, or forged notifications around a genuine one, deliver nothing.
 */
import { encode as msgpackEncode } from "@msgpack/msgpack"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import pg from "pg"
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { Emitter } from "../src/index.js"
import * as Metrics from "../src/Metrics.js"
import { MessageType } from "../src/Protocol.js"
import { watchProcessFaults } from "./fixtures/faults.js"
import { collect, eventually, expectNoEvent, waitFor } from "./utils/cluster.js"
import { type Cluster, startCluster } from "./utils/nodes.js"
import { databaseUrl, makePool } from "./utils/postgres.js"
import {
  dropTransport,
  emitStored,
  offsetCounter,
  recorder,
  resume,
  withoutOffset,
} from "./utils/recovery.js"

const SECRET = "the-cluster-secret-of-this-suite"
const OTHER = "another-secret-nobody-here-uses!"
const opts = { rooms: [], except: [] }

const rejected = () => Effect.runSync(Metric.value(Metrics.rejectedNotifications)).count
const skipped = () => Effect.runSync(Metric.value(Metrics.malformedNotifications)).count

/** What an attacker with an ordinary login does to a cluster's `/` channel. */
const attacker = (cluster: Cluster) => {
  const channel = `${cluster.id}#/`
  const pool = makePool({ max: 2 })
  return {
    channel,
    pool,
    notify: (payload: string) =>
      pool.query("SELECT pg_notify($1, $2)", [channel, payload]).then(() => undefined),
    /** A raw LISTEN on the channel, recording every payload. */
    listen: async () => {
      const client = new pg.Client({ connectionString: databaseUrl() })
      await client.connect()
      const payloads: Array<string> = []
      client.on("notification", (n) => payloads.push(n.payload ?? ""))
      await client.query(`LISTEN "${channel}"`)
      return { payloads, close: () => client.end() }
    },
    /** Plants a row in the attachments table; resolves with its id. */
    plant: async (message: unknown) =>
      (
        await pool.query<{ id: string }>(
          `INSERT INTO "${cluster.id}" (payload) VALUES ($1) RETURNING id::text AS id`,
          [Buffer.from(msgpackEncode(message))],
        )
      ).rows[0]!.id,
    /** Sends payloads in one transaction of its own, in this order. */
    notifyAll: (payloads: ReadonlyArray<string>) =>
      pool
        .query(`SELECT ${payloads.map((_, i) => `pg_notify($1, $${i + 2})`).join(", ")}`, [
          channel,
          ...payloads,
        ])
        .then(() => undefined),
    close: () => pool.end(),
  }
}

const forgedBroadcast = (text: string) =>
  JSON.stringify({
    uid: "attacker",
    type: MessageType.BROADCAST,
    nsp: "/",
    data: { opts, packet: { type: 2, data: ["chat", text], nsp: "/" } },
  })

const forgedDisconnect = JSON.stringify({
  uid: "attacker",
  type: MessageType.DISCONNECT_SOCKETS,
  nsp: "/",
  data: { opts, close: true },
})

/** A broadcast from node 0 that `client` (on node 1) receives: what came before it was handled. */
const barrier = async (cluster: Cluster, client: ClientSocket) => {
  const marker = waitFor(client, "marker", 10_000)
  cluster.nodes[0]!.io.emit("marker")
  await marker
}

/** The attacks, each with what a signed cluster must do instead of what an unsigned one does. */
const attacks = (name: string, options: { readonly secret?: string }) => {
  const signed = options.secret !== undefined
  let cluster: Cluster
  let attack: ReturnType<typeof attacker>
  let watcher: ReturnType<typeof watchProcessFaults>

  beforeAll(async () => {
    watcher = watchProcessFaults()
    cluster = await startCluster(name, { nodes: 2, options })
    attack = attacker(cluster)
  })
  afterEach(() => cluster.disconnectClients())
  afterAll(async () => {
    await attack?.close()
    await cluster?.close()
    watcher.stop()
    expect(watcher.faults).toEqual([])
  })

  // First: forged messages make an unsigned cluster count "attacker" as a node, which requests
  // would then wait for.
  it("genuine traffic flows: inline, binary (attachments), rooms, fetchSockets, serverSideEmitWithAck", async () => {
    const [a, b] = await cluster.connectEach()
    const io = (i: number) => cluster.nodes[i]!.io
    const got = collect(b!, "ev", 3)
    io(0).emit("ev", "inline")
    io(0).emit("ev", Buffer.from([1, 2, 3]))
    io(0).emit("ev", "x".repeat(20_000))
    const args = (await got).map((e) => e[0])
    expect(args[0]).toBe("inline")
    expect(Buffer.from(args[1] as ArrayBuffer)).toEqual(Buffer.from([1, 2, 3]))
    expect(args[2]).toBe("x".repeat(20_000))
    const sockets = await io(0).fetchSockets()
    expect(sockets.map((s) => s.id).sort()).toEqual([a!.id, b!.id].sort())
    io(1).on("ping?", (n: number, ack: (r: number) => void) => ack(n + 1))
    expect(await io(0).serverSideEmitWithAck("ping?", 1)).toEqual([2])
    expect(cluster.nodes.every((node) => node.errors.length === 0)).toBe(true)
  })

  it(`a forged DISCONNECT_SOCKETS ${signed ? "disconnects nobody" : "disconnects every client"}`, async () => {
    const clients = await cluster.connectEach()
    const before = rejected()
    const gone = clients.map((client) => waitFor(client, "disconnect", 5000))
    await attack.notify(forgedDisconnect)
    if (!signed) {
      await Promise.all(gone)
      return
    }
    gone.forEach((p) => p.catch(() => {}))
    await barrier(cluster, clients[1]!)
    await barrier(cluster, clients[0]!)
    expect(clients.every((client) => client.connected)).toBe(true)
    expect(rejected()).toBeGreaterThan(before)
  })

  it(`a forged BROADCAST ${signed ? "reaches nobody" : "reaches every client"}`, async () => {
    const clients = await cluster.connectEach()
    if (!signed) {
      const got = clients.map((client) => waitFor(client, "chat"))
      await attack.notify(forgedBroadcast("owned"))
      expect((await Promise.all(got)).map((args) => args[0])).toEqual(["owned", "owned"])
      return
    }
    await Promise.all(
      clients.map((client) =>
        expectNoEvent(client, "chat", async () => {
          await attack.notify(forgedBroadcast("owned"))
          await barrier(cluster, client)
        }),
      ),
    )
  })

  it(`a planted attachment row ${signed ? "is never delivered" : "is delivered"}`, async () => {
    const [, client] = await cluster.connectEach()
    const id = await attack.plant({
      uid: "attacker",
      type: MessageType.BROADCAST,
      nsp: "/",
      data: { opts, packet: { type: 2, data: ["chat", "planted"], nsp: "/" } },
    })
    const header = JSON.stringify({
      uid: "attacker",
      type: MessageType.BROADCAST,
      nsp: "/",
      attachmentId: id,
    })
    if (!signed) {
      const got = waitFor(client!, "chat")
      await attack.notify(header)
      expect((await got)[0]).toBe("planted")
      return
    }
    await expectNoEvent(client!, "chat", async () => {
      await attack.notify(header)
      await barrier(cluster, client!)
    })
  })

  it(`a captured genuine notification sent again is delivered ${signed ? "once" : "twice"}`, async () => {
    const [, client] = await cluster.connectEach()
    const tap = await attack.listen()
    try {
      const first = waitFor(client!, "chat")
      cluster.nodes[0]!.io.emit("chat", "genuine")
      await first
      await eventually(() => tap.payloads.some((p) => p.includes("genuine")))
      const captured = tap.payloads.find((p) => p.includes("genuine"))!
      expect(captured.startsWith("S1:")).toBe(signed)
      const seen: Array<unknown> = []
      client!.on("chat", (text) => seen.push(text))
      await attack.notify(captured)
      await barrier(cluster, client!)
      expect(seen).toEqual(signed ? [] : ["genuine"])
    } finally {
      await tap.close()
    }
  })

  it(`an altered genuine notification ${signed ? "is dropped" : "is delivered altered"}`, async () => {
    const [, client] = await cluster.connectEach()
    const tap = await attack.listen()
    try {
      const first = waitFor(client!, "chat")
      cluster.nodes[0]!.io.emit("chat", "hello-1")
      await first
      await eventually(() => tap.payloads.some((p) => p.includes("hello-1")))
      const captured = tap.payloads.find((p) => p.includes("hello-1"))!
      const seen: Array<unknown> = []
      client!.on("chat", (text) => seen.push(text))
      await attack.notify(captured.replace("hello-1", "hello-2"))
      await barrier(cluster, client!)
      expect(seen).toEqual(signed ? [] : ["hello-2"])
    } finally {
      await tap.close()
    }
  })

  /**
   * Node 0 broadcasts `n` chats in one tick (one statement, one batch when signed); resolves with
   * their notifications as a raw LISTEN captured them, once the client got them.
   */
  const captureStatement = async (
    tap: { readonly payloads: ReadonlyArray<string> },
    client: ClientSocket,
    tag: string,
    n: number,
  ) => {
    const got = collect(client, "chat", n)
    for (let i = 0; i < n; i++) cluster.nodes[0]!.io.emit("chat", `${tag}-${i}`)
    await got
    const mine = () => tap.payloads.filter((p) => p.includes(`"${tag}-`))
    await eventually(() => mine().length === n)
    return mine()
  }

  it(`a captured statement sent again in one transaction, whole, in part, with one left out, reordered or spliced with another, is ${signed ? "never delivered" : "delivered again"}`, async () => {
    const [, client] = await cluster.connectEach()
    const tap = await attack.listen()
    try {
      const a = await captureStatement(tap, client!, "a", 4)
      const b = await captureStatement(tap, client!, "b", 4)
      if (signed) {
        // One MAC for the statement: its first notification opens the batch, the others continue it.
        expect(a.map((p) => p.slice(0, 3))).toEqual(["S2:", "S+:", "S+:", "S+:"])
      }
      const variants: ReadonlyArray<ReadonlyArray<string>> = [
        a,
        a.slice(0, 2),
        a.slice(1),
        [a[0]!, a[1]!, a[3]!],
        [a[0]!, a[2]!, a[1]!, a[3]!],
        [a[0]!, b[1]!, a[2]!, a[3]!],
      ]
      const before = rejected()
      for (const variant of variants) {
        const seen: Array<unknown> = []
        const listener = (text: unknown) => seen.push(text)
        client!.on("chat", listener)
        await attack.notifyAll(variant)
        await barrier(cluster, client!)
        client!.off("chat", listener)
        const sent = variant.map((p) => /"([ab]-\d)"/.exec(p)![1])
        expect(seen).toEqual(signed ? [] : sent)
      }
      if (signed) expect(rejected()).toBeGreaterThan(before)
    } finally {
      await tap.close()
    }
  })

  it(`forged notifications in transactions of their own around a genuine statement: ${signed ? "the genuine one delivered whole, the forged ones dropped" : "all delivered"}`, async () => {
    const [, client] = await cluster.connectEach()
    // Unsigned, the forgeries are plain messages; signed, they claim to open or continue a batch.
    const opening = `S2:${"f".repeat(16)}:1:${Date.now().toString(36)}:5:${"A".repeat(22)}:`
    const forged = (text: string, prefix: string) => (signed ? prefix : "") + forgedBroadcast(text)
    const seen: Array<unknown> = []
    client!.on("chat", (text) => seen.push(text))
    await attack.notify(forged("forged-open", opening))
    await attack.notify(forged("forged-more", "S+:"))
    const genuine = collect(client!, "chat", 3)
    for (let i = 0; i < 3; i++) cluster.nodes[0]!.io.emit("chat", `genuine-${i}`)
    await attack.notify(forged("forged-after", "S+:"))
    await genuine
    await barrier(cluster, client!)
    const real = ["genuine-0", "genuine-1", "genuine-2"]
    if (signed) expect(seen).toEqual(real)
    else {
      expect(seen.filter((text) => real.includes(text as string))).toEqual(real)
      expect(seen.filter((text) => !real.includes(text as string)).sort()).toEqual([
        "forged-after",
        "forged-more",
        "forged-open",
      ])
    }
  })

  if (signed) {
    it("an emitter with the secret is heard and answered; one without is ignored", async () => {
      const [, client] = await cluster.connectEach()
      const pool = makePool({ max: 2 })
      const base = { channelPrefix: cluster.id, tableName: cluster.id }
      const good = new Emitter(pool, "/", { ...base, secret: SECRET })
      const bad = new Emitter(pool, "/", base)
      try {
        const got = waitFor(client!, "from-emitter")
        await good.emit("from-emitter", "signed", Buffer.from("bin"))
        expect((await got)[0]).toBe("signed")
        expect((await good.fetchSockets()).map((s) => s.id)).toContain(client!.id)
        await expectNoEvent(client!, "from-unsigned", async () => {
          await bad.emit("from-unsigned", 1)
          await barrier(cluster, client!)
        })
        // A second emitter with the secret is a sender of its own: the first one's window is not its.
        const again = new Emitter(pool, "/", { ...base, secret: SECRET })
        const twice = collect(client!, "from-emitter", 2)
        await again.emit("from-emitter", 2)
        await good.emit("from-emitter", 3)
        expect((await twice).map((e) => e[0]).sort()).toEqual([2, 3])
        await again.close()
      } finally {
        await good.close()
        await bad.close()
        await pool.end()
      }
    })
  }
}

describe("without a secret, an ordinary login", () => attacks("unsigned_attacks", {}))

describe("with a secret, the same login", () => attacks("signed_attacks", { secret: SECRET }))

describe("nodes that do not hold the cluster's key", () => {
  let cluster: Cluster
  beforeAll(async () => {
    // Each node's secret is its own option: a stranger must not inherit the cluster's.
    cluster = await startCluster("signed_strangers", { nodes: [] })
    for (let i = 0; i < 2; i++) await cluster.addNode("ours", { options: { secret: SECRET } })
    await cluster.waitForMembers("/", 2, 10_000)
  })
  afterAll(() => cluster?.close())

  it.each([
    ["with another key", { secret: OTHER }],
    ["without a secret", {}],
  ])(
    "a node %s is ignored: its messages dropped and counted, never counted as a member",
    async (_, options) => {
      const stranger = await cluster.addNode("ours", { options })
      try {
        const client = await cluster.connect(1)
        const beforeRejected = rejected()
        await expectNoEvent(client, "from-stranger", async () => {
          stranger.io.emit("from-stranger")
          await eventually(() => rejected() > beforeRejected)
          await barrier(cluster, client)
        })
        // The stranger sees the cluster's signed traffic and cannot read it: counted and logged too
        // (node 1 takes node 0's broadcast: any count now is the stranger's).
        const midRejected = rejected()
        const midSkipped = skipped()
        cluster.nodes[0]!.io.emit("to-all")
        await eventually(() =>
          "secret" in options ? rejected() > midRejected : skipped() > midSkipped,
        )
        expect(await cluster.nodes[0]!.io.of("/").adapter.serverCount()).toBe(2)
        expect(await stranger.io.fetchSockets()).toHaveLength(0)
      } finally {
        await cluster.closeNode(stranger)
      }
    },
  )
})

describe("key rotation without downtime", () => {
  let cluster: Cluster
  beforeAll(async () => {
    cluster = await startCluster("signed_rotation", { nodes: [] })
  })
  afterAll(() => cluster?.close())

  it("old, then old+new, then new+old, then new: every running pair hears each other at each step", async () => {
    const OLD = SECRET
    const NEW = OTHER
    // Start: both nodes on the old key.
    await cluster.addNode("ours", { options: { secret: OLD } })
    await cluster.addNode("ours", { options: { secret: OLD } })
    await cluster.waitForMembers("/", 2, 10_000)
    const steps: ReadonlyArray<ReadonlyArray<string>> = [[OLD, NEW], [NEW, OLD], [NEW]]
    let sent = 0
    const exchange = async () => {
      const running = cluster.running()
      const clients = await Promise.all(running.map((node) => cluster.connect(node)))
      for (const [i, node] of running.entries()) {
        const value = ++sent
        const others = clients.filter((_, j) => j !== i)
        const got = others.map((client) => waitFor(client, "rot", 10_000))
        node.io.emit("rot", value)
        expect((await Promise.all(got)).map((args) => args[0])).toEqual(others.map(() => value))
      }
      await cluster.disconnectClients()
    }
    await exchange()
    for (const secrets of steps) {
      // One node at a time: the cluster runs mixed in between.
      for (let k = 0; k < 2; k++) {
        await cluster.closeNode(cluster.running()[0]!)
        await cluster.addNode("ours", { options: { secrets: [...secrets] } })
        await cluster.waitForMembers("/", 2, 10_000)
        await exchange()
      }
    }
    expect(cluster.nodes.every((node) => node.errors.length === 0)).toBe(true)
  })
})

/** A stored packet's args as an attacker writes them: in the signed layout (a made-up MAC) when signed. */
const forgedPacket = (signed: boolean) => {
  const bytes = Buffer.from(msgpackEncode(["ev", "forged"]))
  return signed ? Buffer.concat([Buffer.from("R1"), Buffer.alloc(16), bytes]) : bytes
}

describe.each([
  ["without a secret", undefined],
  ["with a secret", SECRET],
])("connection state recovery %s", (_, secret) => {
  let cluster: Cluster
  beforeAll(async () => {
    cluster = await startCluster(secret === undefined ? "unsigned_recovery" : "signed_recovery", {
      nodes: 2,
      options: secret === undefined ? {} : { secret },
      serverOptions: { connectionStateRecovery: { maxDisconnectionDuration: 60_000 } },
    })
  })
  afterAll(() => cluster?.close())

  it("stored broadcasts sent in one statement (one batch when signed) reach every client in order, and what follows them too", async () => {
    const clients = [await cluster.connect(0), await cluster.connect(1)]
    const got = clients.map((client) => collect(client, "batch", 6, 10_000))
    // Node 0's own batch moves its recovery's arrivals on: node 1's packet after it is not held.
    for (let i = 0; i < 5; i++) cluster.nodes[0]!.io.emit("batch", i)
    await eventually(async () => (await offsetCounter(cluster.admin, cluster.id)).last >= 5n)
    cluster.nodes[1]!.io.emit("batch", 5)
    for (const events of await Promise.all(got)) {
      expect(events.map((args) => args[0])).toEqual([0, 1, 2, 3, 4, 5])
    }
    await cluster.disconnectClients()
  })

  it(`a client back on another server gets what it missed, once, in order; a stored packet altered in the table ${secret === undefined ? "is replayed altered" : "is not replayed"}`, async () => {
    const client = await cluster.connect(0)
    const log = recorder()
    const zero = waitFor(client, "ev")
    await emitStored(cluster.admin, cluster.id, () => cluster.nodes[1]!.io.emit("ev", 0))
    await zero
    await dropTransport(client, cluster.admin, cluster.id)
    const offsets: Array<bigint> = []
    for (const value of [1, 2, 3]) {
      offsets.push(
        await emitStored(cluster.admin, cluster.id, () =>
          cluster.nodes[value % 2]!.io.emit("ev", value),
        ),
      )
    }
    // An ordinary login with UPDATE on the packets table rewrites the second missed packet.
    await cluster.admin.query(`UPDATE "${cluster.id}_packets" SET data = $1 WHERE "offset" = $2`, [
      forgedPacket(secret !== undefined),
      String(offsets[1]),
    ])
    const back = await resume(client, cluster.nodes[1]!.url, { attach: log.attach })
    try {
      expect(back.recovered).toBe(true)
      await eventually(() => log.received.length >= 2)
      // The live barrier: whatever the restore replays comes before it.
      const marker = waitFor(back, "marker")
      cluster.nodes[1]!.io.emit("marker")
      await marker
      const replayed = log.received
        .filter((r) => r.event === "ev")
        .map((r) => withoutOffset(r.args))
      expect(replayed).toEqual(secret === undefined ? [[1], ["forged"], [3]] : [[1], [3]])
    } finally {
      back.disconnect()
    }
  })
})
