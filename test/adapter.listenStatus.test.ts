/**
 * `PostgresAdapter#listenStatus()`: what a dashboard (the browser demo's panels) reads of a
 * namespace's LISTEN — whether its channel is listened on, and the backend of the LISTEN connection
 * (what `pg_terminate_backend` takes). The server's pool and Listener go through the repo's TCP
 * proxy, so the connection can be cut and kept from coming back.
 */
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { fastOptions } from "./utils/adapters.js"
import { eventually } from "./utils/cluster.js"
import { type Cluster, startCluster } from "./utils/nodes.js"
import { databaseUrl, makePool } from "./utils/postgres.js"
import { startProxy, type TcpProxy } from "./utils/proxy.js"

describe("PostgresAdapter#listenStatus", () => {
  let proxy: TcpProxy
  let cluster: Cluster
  // Straight to PostgreSQL, not through the proxy: it keeps working while the proxy holds.
  let admin: pg.Pool

  const status = () => cluster.nodes[0]!.adapter("/").listenStatus()

  /** The backend `pid`'s application name and last statement, if it is connected. */
  const backend = async (pid: number) => {
    const { rows } = await admin.query<{ application_name: string; query: string }>(
      "SELECT application_name, query FROM pg_stat_activity WHERE pid = $1",
      [pid],
    )
    return rows[0]
  }

  beforeAll(async () => {
    admin = makePool({ max: 2 })
    proxy = await startProxy({ target: databaseUrl() })
    cluster = await startCluster("listen_status", {
      nodes: 1,
      options: fastOptions,
      connectionString: proxy.url,
    })
  })

  afterAll(async () => {
    proxy?.restore()
    await cluster?.close()
    await proxy?.close()
    await admin?.end()
  })

  it("names the LISTEN connection's backend once the channel is listened on", async () => {
    await cluster.nodes[0]!.adapter("/").ready
    await eventually(() => status().privateChannel, { message: "private channel listened on" })
    const { listening, backendPid } = status()
    expect(listening).toBe(true)
    expect(backendPid).toBeTypeOf("number")
    const row = await backend(backendPid!)
    expect(row?.application_name).toBe(cluster.nodes[0]!.applicationName)
    expect(row?.query).toMatch(/^LISTEN /i)
  })

  it("reports a new backend after the old one is terminated", async () => {
    const before = status().backendPid!
    await admin.query("SELECT pg_terminate_backend($1)", [before])
    await eventually(
      () => status().listening && ![undefined, before].includes(status().backendPid),
      {
        timeout: 10_000,
        message: "listening on a new backend",
      },
    )
    expect((await backend(status().backendPid!))?.query).toMatch(/^LISTEN /i)
    expect(await backend(before)).toBeUndefined()
  })

  it("is not listening, with no backend, while the connection is down", async () => {
    // New connections are held by the proxy, so the Listener cannot come back until `restore()`.
    proxy.blackHole({ newConnections: true })
    proxy.reset()
    await eventually(() => !status().listening && status().backendPid === undefined, {
      timeout: 10_000,
      message: "reported down",
    })
    // Its requests then get their answers on the namespace's channel.
    expect(status().privateChannel).toBe(false)
    proxy.restore()
    await eventually(
      () => {
        const now = status()
        return now.listening && now.backendPid !== undefined && now.privateChannel
      },
      {
        timeout: 15_000,
        message: "listening again",
      },
    )
  })

  it("is not listening once the server is closed", async () => {
    const adapter = cluster.nodes[0]!.adapter("/")
    await cluster.closeNode(cluster.nodes[0]!)
    expect(adapter.listenStatus()).toEqual({
      listening: false,
      backendPid: undefined,
      privateChannel: false,
    })
  })
})
