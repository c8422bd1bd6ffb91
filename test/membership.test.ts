/**
 * One membership per server (issue 13, part 2), on real servers: where every node of a namespace
 * is ours, the namespace sends no heartbeat of its own and each server heartbeats once per
 * interval on the server channel, so an idle cluster's notifications do not grow with its
 * namespaces; requests still wait for exactly the servers that have the namespace, newcomers are
 * seen at once, a killed server is found down, and a 0.5.0 node brings the namespace's own
 * heartbeats back (it needs them to see us) until it leaves.
 *
 * Notifications are counted by a LISTEN of the test's own on every channel, over windows measured
 * in server heartbeats (no clock: K intervals are K heartbeats of each server).
 */
import pg from "pg"
import { afterAll, afterEach, describe, expect, it } from "vitest"
import { channelName, quoteIdentifier, serverChannelName } from "../src/Channel.js"
import { Emitter, type PostgresAdapter } from "../src/index.js"
import { MessageType } from "../src/Protocol.js"
import { killFixture, watchProcessFaults } from "./fixtures/faults.js"
import { eventually } from "./utils/cluster.js"
import { type ChildNode, type Cluster, type Node, startCluster } from "./utils/nodes.js"
import { databaseUrl, makePool } from "./utils/postgres.js"

/** One notification as the test's LISTEN saw it. */
interface Seen {
  readonly channel: string
  readonly uid: string
  readonly type: number
}

/** A LISTEN of the test's own on a cluster's server channel and namespace channels. */
const watchChannels = async (prefix: string) => {
  const client = new pg.Client({ connectionString: databaseUrl() })
  await client.connect()
  const seen: Array<Seen> = []
  const serverChannel = serverChannelName(prefix)
  client.on("notification", ({ channel, payload }) => {
    const message = JSON.parse(payload ?? "{}")
    seen.push({ channel, uid: message.uid, type: message.type })
  })
  const listen = (channel: string) => client.query(`LISTEN ${quoteIdentifier(channel)}`)
  await listen(serverChannel)
  return {
    seen,
    serverChannel,
    /** Listens on the channels of these namespaces too. */
    namespaces: async (nsps: ReadonlyArray<string>) => {
      for (const nsp of nsps) await listen(channelName(prefix, nsp))
    },
    /**
     * Waits until `servers` servers sent `intervals` heartbeats each (server heartbeats, or with
     * `on`, heartbeats on that channel), and returns what arrived meanwhile.
     */
    window: async (
      servers: number,
      intervals: number,
      on: string = serverChannel,
    ): Promise<ReadonlyArray<Seen>> => {
      const beatsSince = (from: number) =>
        seen.slice(from).filter((s) => s.channel === on && s.type === MessageType.HEARTBEAT).length
      // Starts at a heartbeat: what a join caused before is over.
      const before = seen.length
      await eventually(() => beatsSince(before) >= 1, { message: "a heartbeat" })
      const from = seen.length
      await eventually(() => beatsSince(from) >= servers * intervals, {
        timeout: 30_000,
        message: `${intervals} heartbeats of ${servers} servers`,
      })
      return seen.slice(from)
    },
    close: () => client.end(),
  }
}

type Watch = Awaited<ReturnType<typeof watchChannels>>

const heartbeatsOn = (window: ReadonlyArray<Seen>, channel: string, uids?: ReadonlyArray<string>) =>
  window.filter(
    (s) =>
      s.channel === channel &&
      s.type === MessageType.HEARTBEAT &&
      (uids === undefined || uids.includes(s.uid)),
  ).length

const adapterOf = (node: Node, nsp: string) => node.io.of(nsp).adapter as unknown as PostgresAdapter

/** Opens `nsp` on `nodes` (each answers "who" with its index) and waits until each counts them all. */
const open = async (nodes: ReadonlyArray<Node>, nsp: string) => {
  for (const node of nodes) {
    node.io.of(nsp).on("who", (ack: (answer: unknown) => void) => ack(node.index))
  }
  await Promise.all(nodes.map((node) => adapterOf(node, nsp).ready))
  await eventually(
    async () => {
      const counts = await Promise.all(nodes.map((node) => adapterOf(node, nsp).serverCount()))
      return counts.every((n) => n === nodes.length)
    },
    { timeout: 10_000, message: `every node counts the ${nodes.length} servers of ${nsp}` },
  )
}

/** Which servers answered a server-side event of `nsp` sent by `from`. */
const whoAnswers = async (from: Node, nsp: string) =>
  ((await from.io.of(nsp).serverSideEmitWithAck("who")) as Array<number>).sort()

// Heartbeats often enough that windows of several heartbeatTimeouts stay short.
const timing = { heartbeatInterval: 200, heartbeatTimeout: 800, requestsTimeout: 10_000 }

describe("idle cost with one membership per server", () => {
  let cluster: Cluster | undefined
  let watch: Watch | undefined

  afterEach(async () => {
    await watch?.close()
    await cluster?.close()
    watch = cluster = undefined
  })

  /** Idle notifications over `intervals` heartbeats with "/" only, then with `more` namespaces. */
  const measure = async (name: string, membership: "auto" | "namespace", more: number) => {
    cluster = await startCluster(name, { options: { ...timing, membership } })
    watch = await watchChannels(cluster.id)
    await watch.namespaces(["/"])
    // Without server heartbeats, the intervals are those of "/".
    const tick = membership === "auto" ? watch.serverChannel : channelName(cluster.id, "/")
    const one = (await watch.window(3, 10, tick)).length
    const nsps = Array.from({ length: more }, (_, i) => `/ns${i}`)
    await watch.namespaces(nsps)
    for (const nsp of nsps) await open(cluster.nodes, nsp)
    const many = (await watch.window(3, 10, tick)).length
    return { one, many }
  }

  it("does not grow with namespaces: 51 namespaces cost no more than twice what one costs", async () => {
    const { one, many } = await measure("membership_idle", "auto", 50)
    expect(one).toBeGreaterThanOrEqual(30)
    expect(many).toBeLessThanOrEqual(2 * one)
  })

  it("grows with namespaces with membership: 'namespace' (the count sees every heartbeat)", async () => {
    const { one, many } = await measure("membership_idle_ns", "namespace", 20)
    expect(many).toBeGreaterThanOrEqual(5 * one)
  })
})

describe("requests and membership with one membership per server", () => {
  const watcher = watchProcessFaults()
  let cluster: Cluster | undefined
  let watch: Watch | undefined
  let child: ChildNode | undefined

  afterEach(async () => {
    await killFixture(child)
    await watch?.close()
    await cluster?.close()
    watch = cluster = child = undefined
    expect(watcher.faults).toEqual([])
  })

  afterAll(() => watcher.stop())

  it("wait for exactly the servers that have the namespace, after idle periods longer than heartbeatTimeout", async () => {
    cluster = await startCluster("membership_requests", { options: timing })
    const [a, b, c] = cluster.nodes as [Node, Node, Node]
    watch = await watchChannels(cluster.id)
    const only = Array.from({ length: 20 }, (_, i) => `/only-c-${i}`)
    await watch.namespaces(["/all", "/pair", "/solo", ...only])
    await open([a, b, c], "/all")
    await open([a, b], "/pair")
    await open([a], "/solo")
    for (const nsp of only) await open([c], nsp)
    const client = await cluster.connect(1, { nsp: "/pair" })

    // Five heartbeatTimeouts without a namespace heartbeat: the servers' heartbeats keep them.
    const idle = await watch.window(3, 20)
    for (const nsp of ["/all", "/pair", "/solo", ...only]) {
      expect(heartbeatsOn(idle, channelName(cluster.id, nsp)), nsp).toBe(0)
    }
    expect(await whoAnswers(a, "/all")).toEqual([1, 2])
    expect(await whoAnswers(c, "/all")).toEqual([0, 1])
    expect(await whoAnswers(a, "/pair")).toEqual([1])
    expect(await whoAnswers(a, "/solo")).toEqual([])
    expect(await whoAnswers(c, only[7]!)).toEqual([])
    const sockets = await a.io.of("/pair").fetchSockets()
    expect(sockets.map((socket) => socket.id)).toEqual([client.id])
    expect(await adapterOf(b, "/pair").serverCount()).toBe(2)
    expect(adapterOf(a, "/all").membershipStatus()).toEqual({
      serverLevel: true,
      foreignNodes: [],
      wire: 2,
    })
  })

  it("an emitter's questions reach every server of the namespace after idle periods", async () => {
    cluster = await startCluster("membership_emitter", { options: timing })
    for (const node of cluster.nodes) node.io.on("who", (ack: any) => ack(node.index))
    const pool = makePool({ max: 2 })
    const emitter = new Emitter(pool, "/", {
      channelPrefix: cluster.id,
      tableName: cluster.id,
      ...timing,
    })
    try {
      expect(((await emitter.serverSideEmitWithAck("who")) as Array<number>).sort()).toEqual([
        0, 1, 2,
      ])
      watch = await watchChannels(cluster.id)
      await watch.namespaces(["/"])
      const idle = await watch.window(3, 20)
      expect(heartbeatsOn(idle, channelName(cluster.id, "/"))).toBe(0)
      expect(((await emitter.serverSideEmitWithAck("who")) as Array<number>).sort()).toEqual([
        0, 1, 2,
      ])
      expect(await emitter.fetchSockets()).toEqual([])
    } finally {
      await emitter.close()
      await pool.end()
    }
  })

  it("know every server again in idle namespaces after this process stalled past heartbeatTimeout", async () => {
    // No liveness ping in the way: the LISTEN connection is not replaced (which would resync).
    const quiet = { ...timing, livenessInterval: 60_000, livenessTimeout: 60_000 }
    cluster = await startCluster("membership_stall", { options: quiet })
    const [a, b, c] = cluster.nodes as [Node, Node, Node]
    await open([a, b, c], "/idle")
    watch = await watchChannels(cluster.id)
    // The fault: the event loop is blocked; timers then run before the notifications that waited,
    // and every server drops the others.
    const until = Date.now() + 4 * timing.heartbeatTimeout
    while (Date.now() < until) {
      /* stalled */
    }
    // Five intervals later, nothing was sent on /idle: only the servers' heartbeats bring them back.
    await watch.window(3, 5)
    await eventually(
      async () => {
        const counts = await Promise.all([a, b, c].map((n) => adapterOf(n, "/idle").serverCount()))
        return counts.every((n) => n === 3)
      },
      { timeout: 5000, message: "every server counted again in /idle" },
    )
    expect(await whoAnswers(a, "/idle")).toEqual([1, 2])
  })

  it("see a new server and a new namespace at once, long before a heartbeat interval", async () => {
    // Only the answers to INITIAL_HEARTBEAT can make them known within 2 s.
    const slow = { heartbeatInterval: 5000, heartbeatTimeout: 10_000 }
    cluster = await startCluster("membership_join", { nodes: 2, options: slow })
    const [a, b] = cluster.nodes as [Node, Node]
    const c = await cluster.addNode()
    await adapterOf(c, "/").ready
    const soon = { timeout: 2000, message: "the new server counted by every server" }
    await eventually(async () => {
      const counts = await Promise.all([a, b, c].map((n) => adapterOf(n, "/").serverCount()))
      return counts.every((n) => n === 3)
    }, soon)
    for (const node of [a, b, c]) node.io.of("/late").on("who", (ack: any) => ack(node.index))
    await Promise.all([a, c].map((node) => adapterOf(node, "/late").ready))
    await eventually(async () => (await adapterOf(a, "/late").serverCount()) === 3, soon)
    expect(await whoAnswers(a, "/late")).toEqual([1, 2])
  })

  it("finds a killed server down after heartbeatTimeout, having kept it while idle", async () => {
    cluster = await startCluster("membership_down", { nodes: 2, options: timing })
    const [a, b] = cluster.nodes as [Node, Node]
    child = await cluster.spawnNode()
    for (const node of [a, b]) node.io.on("who", (ack: any) => ack(node.index))
    await cluster.waitForMembers("/", 3)
    watch = await watchChannels(cluster.id)
    await watch.namespaces(["/"])
    const idle = await watch.window(3, 10)
    expect(heartbeatsOn(idle, channelName(cluster.id, "/"), [child.uid])).toBe(0)
    expect(await adapterOf(a, "/").serverCount()).toBe(3)

    child.child.kill("SIGKILL")
    await child.exited
    await cluster.waitForMembers("/", 2, 5000)
    expect(await whoAnswers(b, "/")).toEqual([0])
  })

  it("switch to namespace heartbeats when a 0.5.0 node joins a namespace that relied on servers", async () => {
    cluster = await startCluster("membership_late_old", { nodes: 2, options: timing })
    const [a, b] = cluster.nodes as [Node, Node]
    for (const node of [a, b]) node.io.on("who", (ack: any) => ack(node.index))
    watch = await watchChannels(cluster.id)
    await watch.namespaces(["/"])
    const root = channelName(cluster.id, "/")
    expect(heartbeatsOn(await watch.window(2, 5), root)).toBe(0)

    const old = await cluster.addNode("0.5.0")
    old.io.on("who", (ack: any) => ack(old.index))
    await cluster.waitForMembers("/", 3)
    expect(adapterOf(a, "/").membershipStatus().foreignNodes).toEqual([old.uid("/")])
    // Two heartbeatTimeouts later, the 0.5.0 node still counts both: they heartbeat on "/".
    const mixed = await watch.window(2, 10)
    expect(heartbeatsOn(mixed, root, [a.uid("/"), b.uid("/")])).toBeGreaterThanOrEqual(10)
    expect(await old.io.of("/").adapter.serverCount()).toBe(3)
    expect(await whoAnswers(a, "/")).toEqual([1, 2])
  })

  it("fall back to namespace heartbeats where a 0.5.0 node is, and back once it left", async () => {
    cluster = await startCluster("membership_mixed", {
      nodes: ["ours", "ours", "0.5.0"],
      options: timing,
    })
    const [a, b, old] = cluster.nodes as [Node, Node, Node]
    for (const node of [a, b]) node.io.on("who", (ack: any) => ack(node.index))
    watch = await watchChannels(cluster.id)
    await watch.namespaces(["/", "/ours"])
    await open([a, b], "/ours")
    const root = channelName(cluster.id, "/")
    const oursUids = [a.uid("/"), b.uid("/")]

    // Two heartbeatTimeouts: the 0.5.0 node still counts us, as our nodes heartbeat on "/".
    const mixed = await watch.window(2, 10)
    expect(heartbeatsOn(mixed, root, oursUids)).toBeGreaterThanOrEqual(2 * 5)
    expect(heartbeatsOn(mixed, channelName(cluster.id, "/ours"))).toBe(0)
    expect(await old.io.of("/").adapter.serverCount()).toBe(3)
    expect(adapterOf(a, "/").membershipStatus()).toEqual({
      serverLevel: false,
      foreignNodes: [old.uid("/")],
      wire: 0,
    })
    expect(adapterOf(a, "/ours").membershipStatus().serverLevel).toBe(true)

    await cluster.closeNode(old)
    await eventually(() => adapterOf(a, "/").membershipStatus().serverLevel)
    await eventually(() => adapterOf(b, "/").membershipStatus().serverLevel)
    const after = await watch.window(2, 10)
    expect(heartbeatsOn(after, root)).toBe(0)
    expect(await whoAnswers(a, "/")).toEqual([1])
  })
})
