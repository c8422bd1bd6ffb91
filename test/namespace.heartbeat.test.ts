/**
 * A namespace announces itself (`INITIAL_HEARTBEAT`) once its LISTEN is active, so that it hears
 * the other nodes' answers, and again after every re-LISTEN: answers sent while its LISTEN
 * connection was down are lost, and without a new announcement the others would stay unknown to it
 * for a whole heartbeat interval.
 */
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { channelName, quoteIdentifier } from "../src/Channel.js"
import { createAdapter, type PostgresAdapter } from "../src/index.js"
import { MessageType } from "../src/Protocol.js"
import { listenerPids } from "./fixtures/faults.js"
import { fastOptions } from "./utils/adapters.js"
import { eventually, startServer, type TestServer } from "./utils/cluster.js"
import { databaseUrl, dropTable, makePool, suiteId } from "./utils/postgres.js"

const id = suiteId("ns_heartbeat")

describe("a namespace's INITIAL_HEARTBEAT", () => {
  let pool: pg.Pool
  let admin: pg.Pool
  let observer: pg.Client
  let server: TestServer
  const payloads: Array<string> = []

  beforeAll(async () => {
    pool = makePool({ max: 4, application_name: id })
    admin = makePool({ max: 2 })
    observer = new pg.Client({ connectionString: databaseUrl() })
    await observer.connect()
    observer.on("notification", (message) => void payloads.push(message.payload ?? ""))
    await observer.query(`LISTEN ${quoteIdentifier(channelName(id, "/"))}`)
    server = await startServer({
      adapter: createAdapter(pool, { channelPrefix: id, tableName: id, ...fastOptions }),
    })
  })

  afterAll(async () => {
    await server?.close()
    await observer?.end()
    await dropTable(admin, id)
    await Promise.all([pool, admin].filter(Boolean).map((p) => p.end()))
  })

  /** How many INITIAL_HEARTBEATs the namespace has sent so far. */
  const announcements = (uid: string) =>
    payloads.filter((payload) => {
      const message = JSON.parse(payload)
      return message.uid === uid && message.type === MessageType.INITIAL_HEARTBEAT
    }).length

  it("is sent once the LISTEN is active, and again after every re-LISTEN", async () => {
    const adapter = server.io.of("/").adapter as unknown as PostgresAdapter
    await adapter.ready
    const uid = (adapter as unknown as { uid: string }).uid
    await eventually(() => announcements(uid) === 1, { message: "the first announcement" })

    for (let reconnects = 1; reconnects <= 2; reconnects++) {
      const [pid] = await listenerPids(admin, id)
      expect(pid, "the namespace has a LISTEN backend").toBeDefined()
      await admin.query("SELECT pg_terminate_backend($1)", [pid])
      await eventually(() => announcements(uid) === 1 + reconnects, {
        timeout: 10_000,
        message: `an announcement after re-LISTEN #${reconnects}`,
      })
    }
  })
})
