/**
 * Mixed clusters: servers on our adapter and on `@socket.io/postgres-adapter` 0.5.0 side by side,
 * in both directions ([ours, 0.5.0, ours] and [0.5.0, ours, 0.5.0]). Everything a cluster does
 * works across the two kinds: broadcasts of every size (the exact NOTIFY limit included), rooms,
 * requests, remote socket operations, acknowledgements, and membership when a node leaves or dies.
 */
import pg from "pg"
import type { RemoteSocket, Server, Socket } from "socket.io"
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { killFixture } from "./fixtures/faults.js"
import { collect, eventually, expectNoEvent, waitFor } from "./utils/cluster.js"
import {
  argumentForNotificationBytes,
  broadcastNotificationBytes,
  layoutName,
} from "./utils/interop.js"
import { type ChildNode, type Cluster, type Kind, startCluster } from "./utils/nodes.js"
import { databaseUrl } from "./utils/postgres.js"

const LAYOUTS: ReadonlyArray<ReadonlyArray<Kind>> = [
  ["ours", "0.5.0", "ours"],
  ["0.5.0", "ours", "0.5.0"],
]

/** Notification sizes around PostgreSQL's limit (a payload must be shorter than 8000 bytes). */
const LIMIT_SIZES = Array.from({ length: 21 }, (_, i) => 7990 + i)
/** What 0.5.0 can send: it sends 8000 bytes inline, and PostgreSQL rejects that. */
const UPSTREAM_SIZES = LIMIT_SIZES.filter((size) => size !== 8000)

const dataOf = (index: number, kind: Kind) => ({
  user: `user${index}`,
  server: { index, kind },
  list: [1, "é名😀", null, { deep: true }],
})

const LARGE = `${"é名😀".repeat(100)}${"x".repeat(20_000)}`
const BINARY = Buffer.from([0, 1, 2, 127, 128, 254, 255])

const sortByIndex = <A extends { index: number }>(list: ReadonlyArray<A>) =>
  [...list].sort((a, b) => a.index - b.index)

describe.each(LAYOUTS.map((kinds) => ({ kinds, name: layoutName(kinds) })))(
  "mixed cluster $name",
  ({ kinds }) => {
    let cluster: Cluster
    let io: Array<Server>
    // clients[i] is connected to server i, fresh for every test.
    let clients: Array<ClientSocket>
    // Byte lengths of every notification on the default namespace's channel.
    const notified: Array<number> = []
    let observer: pg.Client | undefined

    beforeAll(async () => {
      cluster = await startCluster(`interop_${kinds.join("_").replace(/\W/g, "")}`, {
        nodes: kinds,
      })
      io = cluster.nodes.map((node) => node.io)
      io.forEach((server, index) => {
        server.on("connection", (socket: Socket) => {
          socket.data = dataOf(index, kinds[index]!)
        })
        server.on("whoami", (ack: (answer: unknown) => void) => ack({ index, kind: kinds[index] }))
      })
      observer = new pg.Client({ connectionString: databaseUrl() })
      observer.on("error", () => {})
      await observer.connect()
      observer.on("notification", (message) =>
        notified.push(Buffer.byteLength(message.payload ?? "")),
      )
      await observer.query(`LISTEN "${cluster.id}#/"`)
    })

    afterAll(async () => {
      await observer?.end().catch(() => {})
      await cluster?.close()
    })

    beforeEach(async () => {
      clients = await Promise.all(
        kinds.map((_, i) => cluster.connect(i, { auth: { user: `user${i}` } })),
      )
    })

    afterEach(async () => {
      await cluster.disconnectClients()
    })

    /** The server-side socket of `clients[i]`. */
    const local = (i: number) => io[i]!.of("/").sockets.get(clients[i]!.id!)!
    const senders = (kind: Kind) => kinds.flatMap((k, i) => (k === kind ? [i] : []))
    /** Pairs (from, to) of servers of different kinds, each kind asking the other. */
    const crossPairs = (): Array<[number, number]> =>
      kinds.map((kind, from) => [from, kinds.findIndex((other) => other !== kind)])

    it("every server counts every server of both kinds (serverCount)", async () => {
      const counts = await Promise.all(io.map((server) => server.of("/").adapter.serverCount()))
      expect(counts).toEqual([3, 3, 3])
    })

    it("small, 20 KB and binary broadcasts from every server reach the clients of every server", async () => {
      for (let from = 0; from < io.length; from++) {
        const received = clients.map((client) =>
          Promise.all([
            waitFor(client, "small"),
            waitFor(client, "large"),
            waitFor(client, "binary"),
          ]),
        )
        io[from]!.emit("small", { from, kind: kinds[from] })
        io[from]!.emit("large", LARGE)
        io[from]!.emit("binary", BINARY, { nested: [BINARY] })
        for (const [j, arrival] of received.entries()) {
          const [small, large, binary] = await arrival
          expect(small, `small from ${from} to ${j}`).toEqual([{ from, kind: kinds[from] }])
          expect(large![0] === LARGE, `20 KB from ${from} to ${j} intact`).toBe(true)
          const [buffer, nested] = binary as [Buffer, { nested: Array<Buffer> }]
          expect(Buffer.isBuffer(buffer) && buffer.equals(BINARY), `binary ${from}→${j}`).toBe(true)
          expect(Buffer.from(nested.nested[0]!).equals(BINARY)).toBe(true)
        }
      }
    })

    /** Sends one broadcast per size from `from` and checks every client got each one intact. */
    const broadcastsOfSizes = async (from: number, sizes: ReadonlyArray<number>) => {
      const uid = cluster.nodes[from]!.uid()
      const args = new Map(
        sizes.map((size) => [size, argumentForNotificationBytes(size, uid, "sized")]),
      )
      const received = clients.map((client) => collect(client, "sized", sizes.length, 10_000))
      notified.length = 0
      for (const arg of args.values()) io[from]!.emit("sized", arg)
      for (const [j, arrival] of received.entries()) {
        // 0.5.0 receivers deliver attachments late (out of order): compare as sets of sizes.
        const got = (await arrival).map(([arg]) =>
          broadcastNotificationBytes(uid, "sized", arg as string),
        )
        expect(
          [...got].sort((a, b) => a - b),
          `sizes from ${from} to client ${j}`,
        ).toEqual(sizes)
        for (const [arg] of await arrival) {
          const size = broadcastNotificationBytes(uid, "sized", arg as string)
          expect(arg === args.get(size), `${size}-byte message from ${from} intact`).toBe(true)
        }
      }
      // The size arithmetic is right: the inline ones were exactly that long on the wire.
      const inline = sizes.filter((size) => size < 8000)
      await eventually(() => inline.every((size) => notified.includes(size)), {
        message: `notifications of exactly ${inline.join(", ")} bytes seen on the channel`,
      })
    }

    it("broadcasts of 7990..8010 bytes of notification JSON sent by ours reach every client, on 0.5.0 servers too", async () => {
      for (const from of senders("ours")) await broadcastsOfSizes(from, LIMIT_SIZES)
    })

    it("broadcasts of 7990..8010 bytes (but 8000, which 0.5.0 cannot send) sent by 0.5.0 reach every client", async () => {
      for (const from of senders("0.5.0")) await broadcastsOfSizes(from, UPSTREAM_SIZES)
    })

    it("to(room).except(room) broadcasts from every server reach exactly the room's clients everywhere", async () => {
      local(0).join("red")
      local(1).join(["red", "blue"])
      local(2).join("green")
      for (let from = 0; from < io.length; from++) {
        const red = waitFor(clients[0]!, "red-not-blue")
        const green = waitFor(clients[2]!, "green")
        const quiet = [
          expectNoEvent(clients[0]!, "green", () => waitFor(clients[0]!, "marker")),
          expectNoEvent(clients[1]!, "red-not-blue", () => waitFor(clients[1]!, "marker")),
          expectNoEvent(clients[1]!, "green", () => waitFor(clients[1]!, "marker")),
          expectNoEvent(clients[2]!, "red-not-blue", () => waitFor(clients[2]!, "marker")),
        ]
        io[from]!.to("red").except("blue").emit("red-not-blue", from)
        io[from]!.to("green").emit("green", from)
        // Sent after, by the same server: once it is in, the others would have been too.
        io[from]!.emit("marker")
        expect(await red).toEqual([from])
        expect(await green).toEqual([from])
        await Promise.all(quiet)
      }
    })

    it("fetchSockets() on every server returns every socket of both kinds with its data", async () => {
      clients.forEach((_, i) => local(i).join(`own-${i}`))
      for (const server of io) {
        const sockets = new Map((await server.fetchSockets()).map((socket) => [socket.id, socket]))
        expect(sockets.size).toBe(3)
        clients.forEach((client, i) => {
          const socket = sockets.get(client.id!)
          expect(socket, `socket of client ${i}`).toBeDefined()
          expect(socket!.data).toEqual(dataOf(i, kinds[i]!))
          expect(socket!.handshake.auth).toEqual({ user: `user${i}` })
          expect([...socket!.rooms].sort()).toEqual([client.id!, `own-${i}`].sort())
        })
      }
    })

    it("remote socket emit, join and leave work on sockets of the other kind", async () => {
      for (const [from, to] of crossPairs()) {
        const remote = (await io[from]!.fetchSockets()).find(
          (socket) => socket.id === clients[to]!.id,
        ) as RemoteSocket<any, any>
        expect(remote, `server ${from} sees client ${to}`).toBeDefined()

        const direct = waitFor(clients[to]!, "direct")
        remote.emit("direct", `from-${from}`)
        expect(await direct).toEqual([`from-${from}`])

        remote.join(`joined-by-${from}`)
        await eventually(() => local(to).rooms.has(`joined-by-${from}`), {
          message: `server ${from} made client ${to} join`,
        })
        remote.leave(`joined-by-${from}`)
        await eventually(() => !local(to).rooms.has(`joined-by-${from}`), {
          message: `server ${from} made client ${to} leave`,
        })
      }
    })

    it("remote socket disconnect() works on sockets of the other kind", async () => {
      // 0→1 and 1→2 cross kinds in both layouts.
      for (const [from, to] of [
        [0, 1],
        [1, 2],
      ] as const) {
        const remote = (await io[from]!.fetchSockets()).find(
          (socket) => socket.id === clients[to]!.id,
        )
        const gone = waitFor(clients[to]!, "disconnect")
        remote!.disconnect()
        expect((await gone)[0]).toBe("io server disconnect")
      }
      expect(clients[0]!.connected).toBe(true)
    })

    it("socketsJoin and socketsLeave from every server act on the sockets of every server", async () => {
      for (let from = 0; from < io.length; from++) {
        const room = `all-of-${from}`
        io[from]!.socketsJoin(room)
        await eventually(() => clients.every((_, i) => local(i).rooms.has(room)), {
          message: `every socket joined ${room}`,
        })
        io[from]!.in(room).socketsLeave(room)
        await eventually(() => clients.every((_, i) => !local(i).rooms.has(room)), {
          message: `every socket left ${room}`,
        })
      }
    })

    it("disconnectSockets from a server of each kind disconnects the matching sockets everywhere", async () => {
      local(1).join("bye")
      local(2).join("bye")
      const gone = [waitFor(clients[1]!, "disconnect"), waitFor(clients[2]!, "disconnect")]
      io[0]!.in("bye").disconnectSockets()
      await Promise.all(gone)
      await expectNoEvent(clients[0]!, "disconnect", async () => {
        const marker = waitFor(clients[0]!, "still-here")
        io[0]!.emit("still-here")
        await marker
      })

      // And the other way: server 1 (the other kind) disconnects client 0.
      const last = waitFor(clients[0]!, "disconnect")
      io[1]!.disconnectSockets(true)
      expect((await last)[0]).toBe("io server disconnect")
    })

    it("serverSideEmit from every server reaches every other server", async () => {
      for (let from = 0; from < io.length; from++) {
        const others = io.filter((_, j) => j !== from)
        const arrivals = others.map((server) => waitFor(server, "server-event"))
        io[from]!.serverSideEmit("server-event", from, { kind: kinds[from] })
        for (const arrival of arrivals) {
          expect(await arrival).toEqual([from, { kind: kinds[from] }])
        }
      }
    })

    it("serverSideEmitWithAck from every server gets one answer from each other server", async () => {
      for (let from = 0; from < io.length; from++) {
        const answers = (await io[from]!.serverSideEmitWithAck("whoami")) as Array<{
          index: number
          kind: Kind
        }>
        const expected = kinds
          .map((kind, index) => ({ index, kind }))
          .filter(({ index }) => index !== from)
        expect(sortByIndex(answers)).toEqual(expected)
      }
    })

    it("broadcasts with acknowledgements (timeout(2000).emitWithAck) from every server collect every client's ack", async () => {
      clients.forEach((client, j) =>
        client.on("ask", (from: number, ack: (answer: unknown) => void) => ack({ index: j, from })),
      )
      for (let from = 0; from < io.length; from++) {
        const answers = (await io[from]!.timeout(2000).emitWithAck("ask", from)) as Array<{
          index: number
        }>
        expect(sortByIndex(answers)).toEqual(kinds.map((_, index) => ({ index, from })))
      }
    })
  },
)

describe("mixed cluster membership when a node leaves", () => {
  let cluster: Cluster

  beforeAll(async () => {
    // Heartbeats time out only after a minute: a node gone sooner was dropped by its ADAPTER_CLOSE.
    cluster = await startCluster("interop_leave", {
      nodes: ["ours", "0.5.0", "ours", "0.5.0"],
      options: { heartbeatTimeout: 60_000 },
    })
    cluster.nodes.forEach((node, index) =>
      node.io.on("whoami", (ack: (answer: unknown) => void) => ack({ index, kind: node.kind })),
    )
  })

  afterAll(async () => {
    await cluster?.close()
  })

  const answersOf = async (index: number) =>
    sortByIndex(
      (await cluster.nodes[index]!.io.serverSideEmitWithAck("whoami")) as Array<{ index: number }>,
    ).map(({ index }) => index)

  it("a 0.5.0 server that closes (io.close()) is dropped at once by ours and 0.5.0 servers", async () => {
    await cluster.closeNode(cluster.nodes[1]!)
    await cluster.waitForMembers("/", 3, 5000)
    expect(await answersOf(0)).toEqual([2, 3])
    expect(await answersOf(3)).toEqual([0, 2])
  })

  it("an ours server that closes (io.close()) is dropped at once by ours and 0.5.0 servers", async () => {
    await cluster.closeNode(cluster.nodes[2]!)
    await cluster.waitForMembers("/", 2, 5000)
    expect(await answersOf(0)).toEqual([3])
    expect(await answersOf(3)).toEqual([0])
  })
})

describe("mixed cluster membership when a node process is killed", () => {
  const HEARTBEAT_TIMEOUT = 1500
  let cluster: Cluster
  const children = new Map<Kind, ChildNode>()

  const startChild = async (kind: Kind) => {
    children.set(kind, await cluster.spawnNode(kind))
  }

  beforeAll(async () => {
    cluster = await startCluster("interop_kill", {
      nodes: ["ours", "0.5.0"],
      options: { heartbeatTimeout: HEARTBEAT_TIMEOUT },
    })
    cluster.nodes.forEach((node, index) =>
      node.io.on("whoami", (ack: (answer: unknown) => void) => ack({ index, kind: node.kind })),
    )
    await Promise.all([startChild("ours"), startChild("0.5.0")])
    await cluster.waitForMembers("/", 4)
  })

  afterAll(async () => {
    await Promise.all([...children.values()].map((child) => killFixture(child)))
    await cluster?.close()
  })

  it("a killed ours node (SIGKILL) is dropped by ours and 0.5.0 servers after heartbeatTimeout", async () => {
    children.get("ours")!.child.kill("SIGKILL")
    await children.get("ours")!.exited
    await cluster.waitForMembers("/", 3)
  })

  it("a killed 0.5.0 node (SIGKILL) is dropped by ours and 0.5.0 servers after heartbeatTimeout", async () => {
    children.get("0.5.0")!.child.kill("SIGKILL")
    await children.get("0.5.0")!.exited
    await cluster.waitForMembers("/", 2)
    // Requests no longer wait for it.
    const answers = await cluster.nodes[0]!.io.serverSideEmitWithAck("whoami")
    expect(answers).toEqual([{ index: 1, kind: "0.5.0" }])
  })
})
