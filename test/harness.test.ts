/**
 * Self-test of the test harness, run against the upstream `@socket.io/postgres-adapter` 0.5.0 so that
 * it does not depend on our adapter. To be replaced once the real suites use the harness.
 */
import { createAdapter } from "@socket.io/postgres-adapter"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type pg from "pg"
import { EmbeddedPostgresError, startEmbeddedPostgres } from "./setup/embedded.js"
import {
  collect,
  eventually,
  expectNoEvent,
  startCluster,
  waitFor,
  type TestCluster,
} from "./utils/cluster.js"
import {
  createAttachmentTable,
  dropTable,
  makePool,
  startPrivatePostgres,
  suiteId,
} from "./utils/postgres.js"

describe("harness self-test (upstream @socket.io/postgres-adapter)", () => {
  const id = suiteId("harness")
  const pools: pg.Pool[] = []
  let cluster: TestCluster

  beforeAll(async () => {
    // 0.5.0 keeps one pool connection for LISTEN; one more serialises its publishes, so they commit
    // in send order (with more, concurrent publishes may commit out of order).
    for (let i = 0; i < 3; i++) pools.push(makePool({ max: 2 }))
    await createAttachmentTable(pools[0]!, id)
    cluster = await startCluster(3, (i) =>
      createAdapter(pools[i]!, { channelPrefix: id, tableName: id, heartbeatInterval: 200 }),
    )
    await eventually(
      async () => {
        const counts = await Promise.all(
          cluster.servers.map((server) => server.io.of("/").adapter.serverCount()),
        )
        return counts.every((count) => count === 3)
      },
      { message: "3 servers see each other" },
    )
  })

  afterAll(async () => {
    await cluster?.close()
    if (pools[0] !== undefined) await dropTable(pools[0], id)
    await Promise.all(pools.map((pool) => pool.end()))
  })

  it("delivers io.emit from server 0 to the clients of servers 1 and 2", async () => {
    const [c0, c1, c2] = cluster.clients
    const received = Promise.all([
      waitFor(c0!, "hello"),
      waitFor(c1!, "hello"),
      waitFor(c2!, "hello"),
    ])
    cluster.servers[0]!.io.emit("hello", 1)
    expect(await received).toEqual([[1], [1], [1]])
  })

  it("collects events in order and sees no event outside the targeted room", async () => {
    const [server0, server1] = cluster.servers
    const [, c1, c2] = cluster.clients
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
