/**
 * Nodes given different lists of PostgreSQL servers place namespaces differently and do not hear
 * each other in those that moved. Where they still meet, each heartbeat carries the id of its
 * sender's list (`Placement.listId`), and a node with another list is warned about, once.
 */
import { format } from "node:util"
import createDebug from "debug"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { channelName } from "../src/Channel.js"
import { createAdapter } from "../src/index.js"
import * as Placement from "../src/Placement.js"
import { eventually, startServer, type TestServer } from "./utils/cluster.js"
import { startPrivatePostgres, type PrivatePostgres } from "./utils/privatePostgres.js"

const lines: Array<string> = []
const PREFIX = "serverlist"

describe("a node given another list of PostgreSQL servers", () => {
  let databases: Array<PrivatePostgres> = []
  const pools: Array<pg.Pool> = []
  const servers: Array<TestServer> = []
  const previous = createDebug.log

  const pool = (db: PrivatePostgres) => {
    const made = new pg.Pool({ connectionString: db.url, max: 4 })
    made.on("error", () => {})
    pools.push(made)
    return made
  }

  beforeAll(async () => {
    createDebug.enable("socket.io-postgres-effect:*")
    createDebug.log = (...args: Array<unknown>) => void lines.push(format(...args))
    databases = await Promise.all([startPrivatePostgres(), startPrivatePostgres()])
  })
  afterAll(async () => {
    await Promise.all(servers.map((server) => server.close()))
    await Promise.all(pools.map((p) => p.end()))
    await Promise.all(databases.map((db) => db.destroy()))
    createDebug.log = previous
    createDebug.disable()
  })

  it("is warned about where the two still meet, naming it; the same list is not", async () => {
    const [a, b] = databases
    const options = { channelPrefix: PREFIX, heartbeatInterval: 200, errorHandler: () => {} }
    // A namespace the two-server list places on "a", where the one-server node lives too.
    const placement = Placement.make(["a", "b"])
    const nsp = ["/x0", "/x1", "/x2", "/x3", "/x4", "/x5"].find(
      (n) => placement.indexOf(channelName(PREFIX, n)) === 0,
    )!
    const two = () =>
      createAdapter(
        [
          { pool: pool(a!), name: "a" },
          { pool: pool(b!), name: "b" },
        ],
        options,
      )
    servers.push(await startServer({ adapter: two() }))
    servers.push(await startServer({ adapter: two() }))
    servers.push(
      await startServer({ adapter: createAdapter([{ pool: pool(a!), name: "a" }], options) }),
    )
    for (const server of servers) server.io.of(nsp)
    await eventually(async () => (await servers[0]!.io.of(nsp).adapter.serverCount()) === 3)
    const uid = (i: number) => (servers[i]!.io.of(nsp).adapter as any).uid as string
    const warned = (about: number) =>
      lines.filter(
        (line) => line.includes("another list of PostgreSQL servers") && line.includes(uid(about)),
      )
    await eventually(() => warned(2).length >= 2 && warned(0).length >= 1 && warned(1).length >= 1)
    // Once per node and namespace; the nodes with the same list are not warned about by each other
    // (node 0 is warned about by node 2 only).
    await eventually(async () => (await servers[2]!.io.of(nsp).adapter.serverCount()) === 3)
    expect(warned(2)).toHaveLength(2)
    expect(warned(0)).toHaveLength(1)
    expect(warned(2)[0]).toContain(`namespace "${nsp}"`)
  })
})
