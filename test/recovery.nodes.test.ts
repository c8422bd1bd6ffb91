/**
 * Connection state recovery when the server that held the socket goes away: killed (its session
 * was written while the socket was connected, tied to its LISTEN backend) or shut down
 * (`io.close()` writes the sessions of its sockets).
 */
import type pg from "pg"
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { killFixture } from "./fixtures/faults.js"
import { connectClient, eventually } from "./utils/cluster.js"
import { type ChildNode, type Cluster, type Node, startCluster } from "./utils/nodes.js"
import { pidOf, resume, sessionRow } from "./utils/recovery.js"

const MAX_DISCONNECTION = 60_000

describe("recovery when the server that held the socket goes away", () => {
  let cluster: Cluster
  let pool: pg.Pool
  let id: string
  let survivor: Node
  let node: ChildNode | undefined
  const clients: Array<ClientSocket> = []

  beforeAll(async () => {
    cluster = await startCluster("recovery_nodes", {
      nodes: 1,
      serverOptions: { connectionStateRecovery: { maxDisconnectionDuration: MAX_DISCONNECTION } },
    })
    ;({ admin: pool, id } = cluster)
    survivor = cluster.nodes[0]!
  })

  afterEach(async () => {
    for (const client of clients.splice(0)) client.disconnect()
    await killFixture(node)
    node = undefined
  })

  afterAll(async () => {
    await cluster?.close()
  })

  const startNode = async () => {
    node = await cluster.spawnNode("ours", { recovery: MAX_DISCONNECTION })
    return node.url
  }

  // In the dynamic subscription modes, the node listens on its client's room a moment after the
  // join: until a probe sent to the room reaches the client, the survivor's emits could miss it.
  const listening = async (client: ClientSocket, room: string) => {
    let probed = false
    client.once("probe", () => (probed = true))
    await eventually(
      () => {
        if (!probed) survivor.io.to(room).emit("probe")
        return probed
      },
      { message: `the client's server listens on ${room}` },
    )
  }

  // Whether the session row of `pid` is live (its socket connected), if there is one.
  const live = async (pid: string) => {
    const row = await sessionRow(pool, id, pid)
    return row === undefined ? undefined : !row.disconnected
  }

  // A new client presenting the old one's private id and offset, recording "news".
  const resumeOn = (old: ClientSocket, url: string, received: Array<unknown>) =>
    resume(old, url, {
      track: clients,
      attach: (client) => client.on("news", (n: unknown) => received.push(n)),
    })

  it("restores on a survivor the session of a socket whose server was killed", async () => {
    const url = await startNode()
    const client = await connectClient(url, { query: { room: "blue", tag: "k1" } })
    clients.push(client)
    await listening(client, "blue")
    const received: Array<unknown> = []
    client.on("news", (n: unknown) => received.push(n))
    survivor.io.to("blue").emit("news", 1)
    await eventually(() => received.length === 1, { message: "first packet" })
    const pid = pidOf(client)
    const sid = client.id
    await eventually(async () => (await live(pid)) === true, {
      message: "the live session row is written",
    })

    const { rows } = await pool.query(`SELECT owner_pid FROM ${id}_sessions WHERE pid = $1`, [pid])
    node!.child.kill("SIGKILL")
    await node!.exited
    // PostgreSQL ends the killed server's backends as soon as it sees their sockets close.
    await eventually(
      async () =>
        (await pool.query(`SELECT 1 FROM pg_stat_activity WHERE pid = $1`, [rows[0].owner_pid]))
          .rowCount === 0,
      { message: "the killed server's LISTEN backend is gone" },
    )
    survivor.io.to("blue").emit("news", 2)
    survivor.io.to("red").emit("news", -1)
    survivor.io.emit("news", 3)

    const next = await resumeOn(client, survivor.url, received)
    expect(next.recovered).toBe(true)
    expect(next.id).toBe(sid)
    await eventually(() => received.length === 3, { message: "missed packets replayed" })
    expect(received).toEqual([1, 2, 3])
    const socket = survivor.io.sockets.sockets.get(next.id!)!
    expect(socket.rooms.has("blue")).toBe(true)
    expect(socket.data).toEqual({ from: "child", at: "k1" })
    // The restore took the session: it is live again, now on the survivor.
    await eventually(async () => (await live(pid)) === true)
  })

  it("does not restore the session of a socket whose server is alive", async () => {
    const url = await startNode()
    const client = await connectClient(url, { query: { room: "green" } })
    clients.push(client)
    await listening(client, "green")
    const received: Array<unknown> = []
    client.on("news", (n: unknown) => received.push(n))
    survivor.io.to("green").emit("news", 1)
    await eventually(() => received.length === 1)
    const pid = pidOf(client)
    await eventually(async () => (await live(pid)) === true)
    // Someone presents the pid of a socket that is still connected elsewhere: a new socket.
    const other = await resumeOn(client, survivor.url, [])
    expect(other.recovered).toBe(false)
    expect(other.id).not.toBe(client.id)
    expect(client.connected).toBe(true)
  })

  it("restores after io.close() on the server that held the socket", async () => {
    const url = await startNode()
    const client = await connectClient(url, { query: { room: "blue", tag: "c1" } })
    clients.push(client)
    await listening(client, "blue")
    const received: Array<unknown> = []
    client.on("news", (n: unknown) => received.push(n))
    survivor.io.to("blue").emit("news", 1)
    await eventually(() => received.length === 1)
    const pid = pidOf(client)
    const sid = client.id

    node!.send("close")
    await node!.waitForMessage("closed")
    await eventually(async () => (await live(pid)) === false, {
      message: "the closing server wrote the session as disconnected",
    })
    survivor.io.to("blue").emit("news", 2)

    const next = await resumeOn(client, survivor.url, received)
    expect(next.recovered).toBe(true)
    expect(next.id).toBe(sid)
    await eventually(() => received.length === 2)
    expect(received).toEqual([1, 2])
  })

  it("a socket that disconnects on purpose leaves no session behind", async () => {
    const url = await startNode()
    const client = await connectClient(url, { query: { room: "blue" } })
    const pid = pidOf(client)
    await eventually(async () => (await live(pid)) !== undefined)
    client.disconnect()
    await eventually(async () => (await live(pid)) === undefined, {
      message: "the live row is deleted",
    })
  })
})
