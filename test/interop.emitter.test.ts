/**
 * Emitters across kinds: `@socket.io/postgres-emitter` 0.1.1 reaching a cluster of our adapters
 * (its messages carry no `nsp`: ours take the namespace from the channel), and our `Emitter`
 * reaching a cluster where 0.5.0 servers sit beside ours, including the requests only our emitter
 * makes (`fetchSockets`, `serverSideEmitWithAck`), which 0.5.0 servers answer on the channel.
 */
import { Emitter as UpstreamEmitter } from "@socket.io/postgres-emitter"
import type pg from "pg"
import type { Server, Socket } from "socket.io"
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { Emitter } from "../src/index.js"
import { eventually, expectNoEvent, waitFor } from "./utils/cluster.js"
import { layoutName } from "./utils/interop.js"
import { type Cluster, type Kind, startCluster } from "./utils/nodes.js"
import { makePool } from "./utils/postgres.js"

const LARGE = `${"é名😀".repeat(100)}${"x".repeat(20_000)}`
const BINARY = Buffer.from([0, 1, 2, 127, 128, 254, 255])

const dataOf = (index: number, kind: Kind) => ({ user: `user${index}`, index, kind })

/** Registers what every server of these suites does: socket data and a server-side question. */
const setUp = (cluster: Cluster) =>
  cluster.nodes.forEach((node, index) => {
    node.io.on("connection", (socket: Socket) => void (socket.data = dataOf(index, node.kind)))
    node.io.of("/admin").on("connection", () => {})
    node.io.on("whoami", (ack: (answer: unknown) => void) => ack({ index, kind: node.kind }))
  })

describe("the @socket.io/postgres-emitter 0.1.1 emitter reaching a cluster of our adapters", () => {
  const kinds: ReadonlyArray<Kind> = ["ours", "ours"]
  let cluster: Cluster
  let io: Array<Server>
  let clients: Array<ClientSocket>
  // One connection: its fire-and-forget emits reach PostgreSQL in call order.
  let emitterPool: pg.Pool
  let emitter: UpstreamEmitter

  beforeAll(async () => {
    cluster = await startCluster("interop_emitter011", { nodes: kinds })
    io = cluster.nodes.map((node) => node.io)
    setUp(cluster)
    emitterPool = makePool({ max: 1 })
    emitter = new UpstreamEmitter(emitterPool, "/", {
      channelPrefix: cluster.id,
      tableName: cluster.id,
    })
  })

  afterAll(async () => {
    await cluster?.close()
    await emitterPool?.end()
  })

  beforeEach(async () => {
    clients = await Promise.all(kinds.map((_, i) => cluster.connect(i)))
  })

  afterEach(async () => {
    await cluster.disconnectClients(["/", "/admin"])
  })

  const local = (i: number) => io[i]!.of("/").sockets.get(clients[i]!.id!)!

  it("emit reaches the clients of every server", async () => {
    const arrivals = clients.map((client) => waitFor(client, "hello"))
    emitter.emit("hello", "world", { n: 1 })
    for (const arrival of arrivals) expect(await arrival).toEqual(["world", { n: 1 }])
  })

  it("to(room) and except(room) reach exactly the room's clients", async () => {
    local(0).join("red")
    local(1).join(["red", "blue"])
    const red = waitFor(clients[0]!, "red-not-blue")
    const quiet = expectNoEvent(clients[1]!, "red-not-blue", () => waitFor(clients[1]!, "marker"))
    emitter.to("red").except("blue").emit("red-not-blue", 1)
    emitter.emit("marker")
    expect(await red).toEqual([1])
    await quiet
  })

  it("a 20 KB message (an attachment whose notification has no nsp) reaches every client", async () => {
    const arrivals = clients.map((client) => waitFor(client, "large"))
    emitter.emit("large", LARGE)
    for (const arrival of arrivals) expect((await arrival)[0] === LARGE).toBe(true)
  })

  it("binary arguments reach every client as Buffers", async () => {
    const arrivals = clients.map((client) => waitFor(client, "binary"))
    emitter.emit("binary", BINARY, { nested: BINARY })
    for (const arrival of arrivals) {
      const [buffer, nested] = (await arrival) as [Buffer, { nested: Buffer }]
      expect(Buffer.isBuffer(buffer) && buffer.equals(BINARY)).toBe(true)
      expect(Buffer.from(nested.nested).equals(BINARY)).toBe(true)
    }
  })

  it("socketsJoin makes the sockets of every server join", async () => {
    emitter.socketsJoin("joined-by-emitter")
    await eventually(() => clients.every((_, i) => local(i).rooms.has("joined-by-emitter")), {
      message: "every socket joined",
    })
  })

  it("serverSideEmit reaches every server", async () => {
    const arrivals = io.map((server) => waitFor(server, "from-emitter"))
    emitter.serverSideEmit("from-emitter", 42)
    for (const arrival of arrivals) expect(await arrival).toEqual([42])
  })

  it("an emitter of another namespace reaches that namespace only (namespace taken from the channel)", async () => {
    const admins = await Promise.all(kinds.map((_, i) => cluster.connect(i, { nsp: "/admin" })))
    await cluster.waitForMembers("/admin")
    // 0.1.1's of() forgets the options: build it with them.
    const adminEmitter = new UpstreamEmitter(emitterPool, "/admin", {
      channelPrefix: cluster.id,
      tableName: cluster.id,
    })
    const arrivals = admins.map((client) => waitFor(client, "admin-only"))
    const quiet = clients.map((client) =>
      expectNoEvent(client, "admin-only", () => waitFor(client, "marker")),
    )
    adminEmitter.emit("admin-only", LARGE.length)
    await Promise.all(arrivals)
    emitter.emit("marker")
    await Promise.all(quiet)
  })
})

const MIXED: ReadonlyArray<Kind> = ["0.5.0", "ours", "0.5.0"]

describe(`our Emitter reaching the mixed cluster ${layoutName(MIXED)}`, () => {
  const kinds = MIXED
  let cluster: Cluster
  let io: Array<Server>
  let clients: Array<ClientSocket>
  let emitterPool: pg.Pool
  let emitter: Emitter

  beforeAll(async () => {
    cluster = await startCluster("interop_emitter_ours", { nodes: kinds })
    io = cluster.nodes.map((node) => node.io)
    setUp(cluster)
    emitterPool = makePool({ max: 2 })
    emitter = new Emitter(emitterPool, "/", {
      channelPrefix: cluster.id,
      tableName: cluster.id,
      requestsTimeout: 3000,
    })
  })

  afterAll(async () => {
    await emitter?.close()
    await cluster?.close()
    await emitterPool?.end()
  })

  beforeEach(async () => {
    clients = await Promise.all(
      kinds.map((_, i) => cluster.connect(i, { auth: { user: `user${i}` } })),
    )
  })

  afterEach(async () => {
    await cluster.disconnectClients(["/", "/admin"])
  })

  const local = (i: number) => io[i]!.of("/").sockets.get(clients[i]!.id!)!

  it("emit reaches the clients of every server", async () => {
    const arrivals = clients.map((client) => waitFor(client, "hello"))
    await emitter.emit("hello", "world", { n: 1 })
    for (const arrival of arrivals) expect(await arrival).toEqual(["world", { n: 1 }])
  })

  it("to(room) and except(room) reach exactly the room's clients on every server", async () => {
    local(0).join("red")
    local(1).join("red")
    local(2).join(["red", "blue"])
    const reds = [0, 1].map((i) => waitFor(clients[i]!, "red-not-blue"))
    const quiet = expectNoEvent(clients[2]!, "red-not-blue", () => waitFor(clients[2]!, "marker"))
    await emitter.to("red").except("blue").emit("red-not-blue", 1)
    await emitter.emit("marker")
    for (const red of reds) expect(await red).toEqual([1])
    await quiet
  })

  it("20 KB and binary messages reach the clients of every server", async () => {
    const arrivals = clients.map((client) =>
      Promise.all([waitFor(client, "large"), waitFor(client, "binary")]),
    )
    await emitter.emit("large", LARGE)
    await emitter.emit("binary", BINARY)
    for (const arrival of arrivals) {
      const [large, binary] = await arrival
      expect(large[0] === LARGE).toBe(true)
      expect(Buffer.isBuffer(binary[0]) && (binary[0] as Buffer).equals(BINARY)).toBe(true)
    }
  })

  it("socketsJoin makes the sockets of every server join, and the room then receives", async () => {
    await emitter.socketsJoin("joined-by-emitter")
    await eventually(() => clients.every((_, i) => local(i).rooms.has("joined-by-emitter")), {
      message: "every socket joined",
    })
    const arrivals = clients.map((client) => waitFor(client, "to-joined"))
    await emitter.to("joined-by-emitter").emit("to-joined")
    await Promise.all(arrivals)
  })

  it("serverSideEmit reaches every server", async () => {
    const arrivals = io.map((server) => waitFor(server, "from-emitter"))
    await emitter.serverSideEmit("from-emitter", 42)
    for (const arrival of arrivals) expect(await arrival).toEqual([42])
  })

  it("fetchSockets is answered by every server, 0.5.0 ones included, with each socket's data", async () => {
    local(1).join("some")
    local(2).join("some")
    const all = await emitter.fetchSockets()
    expect(all.map((socket) => socket.id).sort()).toEqual(clients.map((c) => c.id!).sort())
    for (const socket of all) {
      const i = clients.findIndex((client) => client.id === socket.id)
      expect(socket.data).toEqual(dataOf(i, kinds[i]!))
      expect(socket.handshake["auth"]).toEqual({ user: `user${i}` })
    }
    const some = await emitter.in("some").fetchSockets()
    expect(some.map((socket) => socket.id).sort()).toEqual(
      [clients[1]!.id!, clients[2]!.id!].sort(),
    )
  })

  it("serverSideEmitWithAck gets one answer from every server, 0.5.0 ones included", async () => {
    const answers = (await emitter.serverSideEmitWithAck("whoami")) as Array<{ index: number }>
    expect([...answers].sort((a, b) => a.index - b.index)).toEqual(
      kinds.map((kind, index) => ({ index, kind })),
    )
  })

  it("of(nsp) reaches that namespace's clients on every server", async () => {
    const admins = await Promise.all(kinds.map((_, i) => cluster.connect(i, { nsp: "/admin" })))
    // Every server listens on /admin once it hears the others there.
    await cluster.waitForMembers("/admin")
    const arrivals = admins.map((client) => waitFor(client, "admin-only"))
    await emitter.of("/admin").emit("admin-only", 1)
    for (const arrival of arrivals) expect(await arrival).toEqual([1])
  })
})
