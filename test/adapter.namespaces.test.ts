/**
 * Namespaces across three real Socket.IO servers on our adapter, through real PostgreSQL: custom
 * and dynamic namespaces, and names that are long, hostile to SQL, or not ASCII.
 */
import type { Server } from "socket.io"
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { channelName } from "../src/Channel.js"
import { startCluster, type Cluster } from "./utils/nodes.js"
import { expectNoEvent, waitFor } from "./utils/cluster.js"

describe("adapter namespaces across 3 servers", () => {
  let cluster: Cluster
  let io: Array<Server>
  let dynamic: Array<ReturnType<Server["of"]>>
  let pwned: string
  let hostile: string
  const long = "/" + "a-very-long-namespace-name-".repeat(5)
  const unicode = "/ünïcødé-名前-😀"

  beforeAll(async () => {
    cluster = await startCluster("namespaces")
    io = cluster.nodes.map((server) => server.io)
    // Short enough for the channel to stay unhashed, unique so parallel suites cannot interfere.
    pwned = `pw${cluster.id.slice(-6)}`
    hostile = `/a"; CREATE TABLE ${pwned}(); --`
    for (const server of io) {
      server.of("/admin")
      server.of(long)
      server.of(unicode)
    }
    dynamic = io.map((server) => server.of(/^\/dyn-\w+$/))
    // Names a client chooses, as in 0.5.0's injection.
    for (const server of io) server.of(/^\/a"/)
    await Promise.all(["/", "/admin", long, unicode].map((nsp) => cluster.waitForMembers(nsp)))
  })

  afterAll(async () => {
    await cluster?.close()
  })

  /** Connects one client to `nsp` on every server and waits until every server counts 3 on it. */
  const connectEverywhere = async (nsp: string) => {
    const clients = await cluster.connectEach({ nsp })
    await cluster.waitForMembers(nsp)
    return clients
  }

  /** Emits from server 1 on `nsp`; every client must get it. Then fetches sockets from server 0. */
  const expectWorksAcrossServers = async (nsp: string, clients: ReadonlyArray<ClientSocket>) => {
    const received = Promise.all(clients.map((client) => waitFor(client, "hi")))
    io[1]!.of(nsp).emit("hi", nsp)
    expect(await received).toEqual(clients.map(() => [nsp]))
    const sockets = await io[0]!.of(nsp).fetchSockets()
    expect(sockets.map((socket) => socket.id).sort()).toEqual(
      clients.map((client) => client.id!).sort(),
    )
    const reply = Promise.all([waitFor(io[0]!.of(nsp), "ping"), waitFor(io[1]!.of(nsp), "ping")])
    io[2]!.of(nsp).serverSideEmit("ping", nsp)
    expect(await reply).toEqual([[nsp], [nsp]])
  }

  it("/admin is isolated from /: an emit in one namespace never reaches clients of the other", async () => {
    const root = await connectEverywhere("/")
    const admin = await connectEverywhere("/admin")
    expect(cluster.nodes[0]!.adapter("/admin").channel).toBe(`${cluster.id}#/admin`)

    const adminGot = Promise.all(admin.map((client) => waitFor(client, "iso")))
    const rootNone = Promise.all(
      root.map((client) => expectNoEvent(client, "iso", () => waitFor(client, "iso-marker"))),
    )
    io[0]!.of("/admin").emit("iso", "admin")
    io[0]!.emit("iso-marker")
    expect(await adminGot).toEqual(admin.map(() => ["admin"]))
    await rootNone

    const rootGot = Promise.all(root.map((client) => waitFor(client, "iso")))
    const adminNone = Promise.all(
      admin.map((client) => expectNoEvent(client, "iso", () => waitFor(client, "iso-marker"))),
    )
    io[1]!.emit("iso", "root")
    io[1]!.of("/admin").emit("iso-marker")
    expect(await rootGot).toEqual(root.map(() => ["root"]))
    await adminNone
  })

  it("a broadcast from one server's dynamic child namespace reaches its clients on every server", async () => {
    const dynA = await connectEverywhere("/dyn-a")
    const dynB = await connectEverywhere("/dyn-b")

    const got = Promise.all(dynA.map((client) => waitFor(client, "dyn")))
    const none = Promise.all(
      dynB.map((client) => expectNoEvent(client, "dyn", () => waitFor(client, "dyn-marker"))),
    )
    io[2]!.of("/dyn-a").emit("dyn", "a only")
    io[2]!.of("/dyn-b").emit("dyn-marker")
    expect(await got).toEqual(dynA.map(() => ["a only"]))
    await none

    // The parent namespace broadcasts through every child it has on that server.
    const all = Promise.all([...dynA, ...dynB].map((client) => waitFor(client, "dyn-all")))
    dynamic[0]!.emit("dyn-all", 1)
    expect(await all).toEqual([...dynA, ...dynB].map(() => [1]))
    await expectWorksAcrossServers("/dyn-a", dynA)
  })

  it("a namespace name of 100+ characters (hashed channel) works across servers", async () => {
    expect(long.length).toBeGreaterThan(100)
    const channel = cluster.nodes[0]!.adapter(long).channel
    expect(Buffer.byteLength(channel)).toBeLessThanOrEqual(63)
    expect(channel).not.toBe(`${cluster.id}#${long}`)
    expect(channel).toBe(channelName(cluster.id, long))
    for (const server of cluster.nodes) expect(server.adapter(long).channel).toBe(channel)
    await expectWorksAcrossServers(long, await connectEverywhere(long))
  })

  it("a client-chosen namespace with double quotes and SQL works across servers and runs no SQL", async () => {
    const clients = await connectEverywhere(hostile)
    expect(cluster.nodes[1]!.adapter(hostile).channel).toBe(`${cluster.id}#${hostile}`)
    await expectWorksAcrossServers(hostile, clients)
    const { rows } = await cluster.admin.query<{ table: string | null }>(
      "SELECT to_regclass($1)::text AS table",
      [pwned],
    )
    expect(rows).toEqual([{ table: null }])
  })

  it("a non-ASCII namespace name works across servers", async () => {
    await expectWorksAcrossServers(unicode, await connectEverywhere(unicode))
  })
})
