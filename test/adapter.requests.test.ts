/**
 * Cluster requests across three real Socket.IO servers on our adapter, through real PostgreSQL:
 * fetchSockets and RemoteSocket operations, socketsJoin/Leave, disconnectSockets, server-side
 * emits with and without acknowledgements, and membership (serverCount).
 */
import type { RemoteSocket, Server, Socket } from "socket.io"
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { startCluster, type Cluster } from "./utils/nodes.js"
import { eventually, expectNoEvent, waitFor } from "./utils/cluster.js"

interface SocketData {
  readonly user: string
  readonly nested: { readonly server: number; readonly list: ReadonlyArray<unknown> }
  readonly binary: Buffer
}

const dataOf = (server: number, user: string): SocketData => ({
  user,
  nested: { server, list: [1, { deep: "é名😀" }, null] },
  binary: Buffer.from([server, 0, 127, 128, 255]),
})

describe("adapter requests across 3 servers", () => {
  let cluster: Cluster
  let io: Array<Server>
  // clients[i] is connected to server i, fresh for every test.
  let clients: Array<ClientSocket>

  beforeAll(async () => {
    cluster = await startCluster("requests")
    io = cluster.nodes.map((server) => server.io)
    io.forEach((server, index) =>
      server.on("connection", (socket: Socket) => {
        socket.data = dataOf(index, String(socket.handshake.auth["user"]))
      }),
    )
    await cluster.waitForMembers()
  })

  afterAll(async () => {
    await cluster?.close()
  })

  beforeEach(async () => {
    clients = await Promise.all(
      [0, 1, 2].map((i) =>
        cluster.connect(i, { query: { name: `client${i}` }, auth: { user: `user${i}` } }),
      ),
    )
  })

  afterEach(async () => {
    await cluster.disconnectClients()
  })

  /** The server-side socket of `clients[i]`. */
  const local = (i: number) => io[i]!.of("/").sockets.get(clients[i]!.id!)!

  const byId = (sockets: ReadonlyArray<RemoteSocket<any, any>>) =>
    new Map(sockets.map((socket) => [socket.id, socket]))

  it("serverCount() is 3 on every server", async () => {
    const counts = await Promise.all(io.map((server) => server.of("/").adapter.serverCount()))
    expect(counts).toEqual([3, 3, 3])
  })

  it("fetchSockets() on every server returns every socket of the cluster with id, handshake, rooms and data", async () => {
    clients.forEach((_, i) => local(i).join([`own-${i}`, "everyone"]))
    for (const server of io) {
      const sockets = byId(await server.fetchSockets())
      expect(sockets.size).toBe(3)
      clients.forEach((client, i) => {
        const socket = sockets.get(client.id!)
        expect(socket, `socket of client ${i}`).toBeDefined()
        expect(socket!.id).toBe(client.id)
        expect(socket!.handshake.query["name"]).toBe(`client${i}`)
        expect(socket!.handshake.auth).toEqual({ user: `user${i}` })
        expect(typeof socket!.handshake.address).toBe("string")
        expect([...socket!.rooms].sort()).toEqual([client.id!, "everyone", `own-${i}`].sort())
        expect(socket!.data).toEqual(dataOf(i, `user${i}`))
        expect(Buffer.isBuffer(socket!.data.binary)).toBe(true)
        expect(socket!.data.binary.equals(dataOf(i, "").binary)).toBe(true)
      })
    }
  })

  it("io.in(room).fetchSockets() returns only the room's sockets, from every server", async () => {
    local(0).join("fetch-room")
    local(2).join("fetch-room")
    for (const server of io) {
      const sockets = await server.in("fetch-room").fetchSockets()
      expect(sockets.map((socket) => socket.id).sort()).toEqual(
        [clients[0]!.id!, clients[2]!.id!].sort(),
      )
    }
    const except = await io[1]!.except("fetch-room").fetchSockets()
    expect(except.map((socket) => socket.id)).toEqual([clients[1]!.id])
  })

  it("RemoteSocket.emit reaches the client on its own server, and only it", async () => {
    const sockets = byId(await io[0]!.fetchSockets())
    const got = Promise.all([waitFor(clients[1]!, "direct"), waitFor(clients[2]!, "direct")])
    const none = expectNoEvent(clients[0]!, "direct", () => waitFor(clients[0]!, "direct-marker"))
    sockets.get(clients[1]!.id!)!.emit("direct", "to 1", { n: 1 })
    sockets.get(clients[2]!.id!)!.emit("direct", "to 2", { n: 2 })
    io[0]!.emit("direct-marker")
    expect(await got).toEqual([
      ["to 1", { n: 1 }],
      ["to 2", { n: 2 }],
    ])
    await none
  })

  it("RemoteSocket.join and leave change the rooms of the socket on its own server", async () => {
    const remote = byId(await io[0]!.fetchSockets()).get(clients[2]!.id!)!
    remote.join(["joined-a", "joined-b"])
    await eventually(() => local(2).rooms.has("joined-a") && local(2).rooms.has("joined-b"))
    remote.leave("joined-a")
    await eventually(() => !local(2).rooms.has("joined-a"))
    expect(local(2).rooms.has("joined-b")).toBe(true)
    const again = byId(await io[1]!.fetchSockets()).get(clients[2]!.id!)!
    expect([...again.rooms].sort()).toEqual([clients[2]!.id!, "joined-b"].sort())
  })

  it("RemoteSocket.disconnect() disconnects the client on its own server", async () => {
    const remote = byId(await io[0]!.fetchSockets()).get(clients[1]!.id!)!
    const reason = waitFor(clients[1]!, "disconnect")
    remote.disconnect()
    expect(await reason).toEqual(["io server disconnect", undefined])
    await eventually(() => io[1]!.of("/").sockets.size === 0)
    expect(clients[0]!.connected && clients[2]!.connected).toBe(true)
  })

  it("io.socketsJoin(room) makes every socket of every server join", async () => {
    io[0]!.socketsJoin("all-join")
    await eventually(() => clients.every((_, i) => local(i).rooms.has("all-join")))
    const sockets = await io[2]!.in("all-join").fetchSockets()
    expect(sockets).toHaveLength(3)
  })

  it("io.in(a).socketsJoin(b) makes the members of a on every server join b", async () => {
    local(0).join("join-src")
    local(2).join("join-src")
    io[1]!.in("join-src").socketsJoin("join-dst")
    await eventually(() => local(0).rooms.has("join-dst") && local(2).rooms.has("join-dst"))
    expect(local(1).rooms.has("join-dst")).toBe(false)
    const members = await io[1]!.in("join-dst").fetchSockets()
    expect(members.map((socket) => socket.id).sort()).toEqual(
      [clients[0]!.id!, clients[2]!.id!].sort(),
    )
  })

  it("io.socketsLeave(room) makes every socket of every server leave", async () => {
    clients.forEach((_, i) => local(i).join(["to-leave", "to-keep"]))
    io[2]!.socketsLeave("to-leave")
    await eventually(() => clients.every((_, i) => !local(i).rooms.has("to-leave")))
    expect(clients.every((_, i) => local(i).rooms.has("to-keep"))).toBe(true)
  })

  it("io.disconnectSockets() disconnects every client of every server", async () => {
    const reasons = Promise.all(clients.map((client) => waitFor(client, "disconnect")))
    io[0]!.disconnectSockets()
    expect((await reasons).map(([reason]) => reason)).toEqual(
      clients.map(() => "io server disconnect"),
    )
    await eventually(() => io.every((server) => server.of("/").sockets.size === 0))
  })

  it("io.disconnectSockets(true) disconnects every client of every server and closes their connections", async () => {
    const reasons = Promise.all(clients.map((client) => waitFor(client, "disconnect")))
    io[1]!.disconnectSockets(true)
    await reasons
    await eventually(() =>
      io.every((server) => server.of("/").sockets.size === 0 && server.engine.clientsCount === 0),
    )
  })

  it("serverSideEmit reaches the io.on handlers of every other server, not the sender's", async () => {
    const received = Promise.all([waitFor(io[1]!, "sse"), waitFor(io[2]!, "sse")])
    // The sender's own notification comes back to it before a reply sent after it was received.
    const none = expectNoEvent(io[0]!, "sse", () => waitFor(io[0]!, "sse-marker"))
    io[0]!.serverSideEmit("sse", { a: 1 }, "two", [3])
    expect(await received).toEqual([
      [{ a: 1 }, "two", [3]],
      [{ a: 1 }, "two", [3]],
    ])
    io[1]!.serverSideEmit("sse-marker")
    await none
  })

  it("serverSideEmitWithAck returns one answer from every other server", async () => {
    const handlers = io.map((server, index) => {
      const handler = (question: string, ack: (answer: unknown) => void) =>
        ack({ server: index, echo: question, bin: Buffer.from([index]) })
      server.on("ssq", handler)
      return () => server.off("ssq", handler)
    })
    try {
      const answers = (await io[1]!.serverSideEmitWithAck("ssq", "ping")) as Array<{
        server: number
        echo: string
        bin: Buffer
      }>
      expect(answers.map((answer) => answer.server).sort()).toEqual([0, 2])
      for (const answer of answers) {
        expect(answer.echo).toBe("ping")
        expect(Buffer.from(answer.bin).equals(Buffer.from([answer.server]))).toBe(true)
      }
    } finally {
      for (const off of handlers) off()
    }
  })
})

describe("adapter membership", () => {
  // A heartbeat timeout far above the waits below: only ADAPTER_CLOSE can explain a quick drop.
  const options = { heartbeatInterval: 300, heartbeatTimeout: 30_000 }

  it("serverCount() drops to 2 on the others as soon as a server closes, without a heartbeat timeout", async () => {
    const cluster = await startCluster("membership_close", { options })
    try {
      await cluster.waitForMembers("/", 3)
      await cluster.closeNode(cluster.nodes[2]!)
      await eventually(
        async () => {
          const counts = await Promise.all(
            cluster.nodes.slice(0, 2).map((s) => s.adapter().serverCount()),
          )
          return counts.every((count) => count === 2)
        },
        { timeout: 5000, message: "the others count 2 servers" },
      )
    } finally {
      await cluster.close()
    }
  })

  it("a server started later is counted by every server", async () => {
    const cluster = await startCluster("membership_join", { options })
    try {
      await cluster.waitForMembers("/", 3)
      const fourth = await cluster.addNode()
      await cluster.waitForMembers("/", 4)
      expect(cluster.nodes.indexOf(fourth)).toBe(3)
      // Every server, the newcomer included, is asked and answers.
      cluster.nodes.forEach((server, index) =>
        server.io.on("hello", (ack: (answer: number) => void) => ack(index)),
      )
      const answers = await cluster.nodes[0]!.io.serverSideEmitWithAck("hello")
      expect([...answers].sort()).toEqual([1, 2, 3])
    } finally {
      await cluster.close()
    }
  })
})

describe("adapter requests that a server leaves unanswered", () => {
  // A heartbeat timeout far above the request timeout: only the request's own timer can end it.
  const options = { requestsTimeout: 400, heartbeatTimeout: 60_000 }

  it("serverSideEmitWithAck rejects at requestsTimeout, naming how many servers did not answer", async () => {
    const cluster = await startCluster("requests_unanswered", { options })
    try {
      await cluster.waitForMembers("/", 3)
      const [first, second, third] = cluster.nodes.map((node) => node.io)
      second!.on("q", (ack: (answer: string) => void) => ack("second"))
      let asked = false
      // Hears the question but never answers.
      third!.on("q", () => void (asked = true))
      await expect(first!.serverSideEmitWithAck("q")).rejects.toThrow(
        "timeout reached: missing 1 responses",
      )
      expect(asked).toBe(true)
    } finally {
      await cluster.close()
    }
  })

  it("fetchSockets rejects at its own timeout when a server does not answer, and succeeds again after", async () => {
    const cluster = await startCluster("requests_fetch_unanswered", { options })
    try {
      await cluster.waitForMembers("/", 3)
      await cluster.connectEach()
      // The third server stops answering: its responses are not published.
      const third = cluster.nodes[2]!.adapter() as unknown as {
        doPublishResponse: (...args: Array<unknown>) => Promise<void>
      }
      const answering = third.doPublishResponse
      third.doPublishResponse = () => Promise.resolve()
      const io = cluster.nodes[0]!.io
      await expect(io.timeout(300).fetchSockets()).rejects.toThrow(
        "timeout reached: missing 1 responses",
      )
      third.doPublishResponse = answering
      expect(await io.fetchSockets()).toHaveLength(3)
    } finally {
      await cluster.close()
    }
  })
})
