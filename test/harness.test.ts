/**
 * Self-test of the test harness (the cluster builder, clients and waits), run against the upstream
 * `@socket.io/postgres-adapter` 0.5.0 so that it does not depend on our adapter.
 */
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { EmbeddedPostgresError, startEmbeddedPostgres } from "./setup/embedded.js"
import { collect, expectNoEvent, waitFor } from "./utils/cluster.js"
import { type Cluster, startCluster } from "./utils/nodes.js"
import { makePool, startPrivatePostgres } from "./utils/postgres.js"

describe("harness self-test (upstream @socket.io/postgres-adapter)", () => {
  let cluster: Cluster
  let clients: Array<ClientSocket>

  beforeAll(async () => {
    // 0.5.0 keeps one pool connection for LISTEN; the builder gives it one more, which serialises
    // its publishes, so they commit in send order. It waits until the 3 servers see each other.
    cluster = await startCluster("harness", {
      nodes: ["0.5.0", "0.5.0", "0.5.0"],
      options: { heartbeatInterval: 200 },
    })
    clients = await cluster.connectEach()
  })

  afterAll(async () => {
    await cluster?.close()
  })

  it("delivers io.emit from server 0 to the clients of servers 1 and 2", async () => {
    const [c0, c1, c2] = clients
    const received = Promise.all([
      waitFor(c0!, "hello"),
      waitFor(c1!, "hello"),
      waitFor(c2!, "hello"),
    ])
    cluster.nodes[0]!.io.emit("hello", 1)
    expect(await received).toEqual([[1], [1], [1]])
  })

  it("collects events in order and sees no event outside the targeted room", async () => {
    const [server0, server1] = cluster.nodes
    const [, c1, c2] = clients
    server1!.io.of("/").sockets.get(c1!.id!)!.join("room")
    const got = collect(c1!, "n", 3)
    const nothing = expectNoEvent(c2!, "n", () => waitFor(c2!, "marker"))
    for (const n of [1, 2, 3]) server0!.io.to("room").emit("n", n)
    server0!.io.emit("marker")
    expect(await got).toEqual([[1], [2], [3]])
    await nothing
  })
})

describe("startPrivatePostgres", () => {
  it("starts, freezes, resumes, stops and restarts on the same port", async () => {
    const server = await startPrivatePostgres()
    try {
      const query = async () => {
        const pool = makePool({
          connectionString: server.url,
          max: 1,
          connectionTimeoutMillis: 1000,
        })
        try {
          return (await pool.query<{ one: number }>("select 1 as one")).rows[0]?.one
        } finally {
          await pool.end()
        }
      }
      expect(await query()).toBe(1)
      const firstPid = server.pid
      await server.pause()
      await expect(query()).rejects.toThrow(/timeout/i)
      await server.resume()
      expect(await query()).toBe(1)
      await server.stop()
      await expect(query()).rejects.toThrow()
      await server.start()
      expect(server.pid).not.toBe(firstPid)
      expect(await query()).toBe(1)
      await server.stop()
    } finally {
      await server.destroy()
    }
  })
})

describe("startEmbeddedPostgres", () => {
  it("rejects with what failed and PostgreSQL's own words when the server cannot start", async () => {
    const failure = await startEmbeddedPostgres({ settings: { max_connections: "many" } }).then(
      () => undefined,
      (error: unknown) => error,
    )
    expect(failure).toBeInstanceOf(EmbeddedPostgresError)
    expect((failure as Error).message).toMatch(
      /cannot start an embedded PostgreSQL: the server on port \d+ exited \(1\) before accepting connections[\s\S]*invalid value for parameter "max_connections": "many"/,
    )
  })
})
