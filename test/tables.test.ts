/**
 * The adapter's tables in PostgreSQL: names that need quoting (mixed case, a schema, characters
 * that are not plain identifiers) are used as given, for the attachments table and the recovery
 * tables alike; and the cleanup deletes the attachments older than `cleanupInterval`, and only
 * those, by its own SQL.
 */
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { eventually, waitFor } from "./utils/cluster.js"
import { type Cluster, startCluster } from "./utils/nodes.js"
import { makePool, quoteName } from "./utils/postgres.js"
import { dropTransport, emitStored, recorder, resume } from "./utils/recovery.js"

const BINARY = Buffer.from([0, 1, 2, 253, 254, 255])

/** Tables that need quoting, named after the suite's id (unique, so parallel suites never meet). */
const LAYOUTS = [
  {
    name: "mixed case",
    tables: (id: string) => ({ tableName: `Att_Mixed_${id}`, recoveryTablePrefix: `Rec_${id}` }),
  },
  {
    name: "schema-qualified, with a space and a hyphen",
    tables: (id: string) => ({
      tableName: `Sch_${id}.Att Mixed`,
      recoveryTablePrefix: `Sch_${id}.Rec-Mixed`,
    }),
  },
]

describe.each(LAYOUTS)("tables named $name", ({ tables }) => {
  let cluster: Cluster
  let tableName: string
  let recoveryTablePrefix: string
  const resumed: Array<ClientSocket> = []

  beforeAll(async () => {
    cluster = await startCluster("tables_quoted", {
      nodes: 2,
      options: tables,
      serverOptions: { connectionStateRecovery: { maxDisconnectionDuration: 60_000 } },
    })
    ;({ tableName, recoveryTablePrefix } = tables(cluster.id))
  })

  afterEach(async () => {
    for (const client of resumed.splice(0)) client.disconnect()
    await cluster.disconnectClients()
  })

  afterAll(async () => {
    await cluster?.close()
    // The cluster dropped its tables; a schema of the test's own goes too.
    if (tableName?.includes(".")) {
      const pool = makePool({ max: 1 })
      await pool.query(`DROP SCHEMA IF EXISTS ${quoteName(tableName.split(".")[0]!)} CASCADE`)
      await pool.end()
    }
  })

  /** How many rows the table of that exact name holds (it fails if there is no such table). */
  const rows = async (table: string) =>
    Number((await cluster.admin.query(`SELECT count(*) AS n FROM ${quoteName(table)}`)).rows[0].n)

  it("sends binary broadcasts through the attachments table of exactly that name", async () => {
    const [, client] = await cluster.connectEach()
    const received = waitFor(client!, "bin")
    cluster.nodes[0]!.io.emit("bin", BINARY)
    const [bytes] = await received
    expect(Buffer.from(bytes as Buffer).equals(BINARY)).toBe(true)
    expect(await rows(tableName)).toBeGreaterThan(0)
  })

  it("stores packets and restores sessions in recovery tables of exactly that prefix", async () => {
    const { admin } = cluster
    const client = await cluster.connect(0)
    const log = recorder()
    log.attach(client)
    await emitStored(admin, recoveryTablePrefix, () => cluster.nodes[1]!.io.emit("ev", 1))
    await eventually(() => log.received.length === 1, { message: "the first packet arrived" })
    await dropTransport(client, admin, recoveryTablePrefix)
    const missed = await emitStored(admin, recoveryTablePrefix, () =>
      cluster.nodes[1]!.io.emit("ev", 2),
    )

    const next = await resume(client, cluster.nodes[1]!.url, { attach: log.attach, track: resumed })
    expect(next.recovered).toBe(true)
    await eventually(() => log.received.length === 2, { message: "the missed packet replayed" })
    expect(log.received[1]).toEqual({ event: "ev", args: [2, String(missed)] })
    expect(await rows(`${recoveryTablePrefix}_packets`)).toBeGreaterThanOrEqual(2)
  })
})

describe("the cleanup of attachments", () => {
  const INTERVAL = 2000
  let cluster: Cluster

  beforeAll(async () => {
    cluster = await startCluster("tables_cleanup", {
      nodes: 1,
      options: { cleanupInterval: INTERVAL },
    })
    // Created in the background by the node.
    await eventually(
      async () =>
        (await cluster.admin.query("SELECT to_regclass($1) AS t", [cluster.id])).rows[0].t !== null,
      { message: "the attachments table exists" },
    )
  })

  afterAll(async () => {
    await cluster?.close()
  })

  /** Inserts an attachment row whose `created_at` is `ms` milliseconds from now; its id. */
  const insertAt = async (ms: number): Promise<string> => {
    const { rows } = await cluster.admin.query<{ id: string }>(
      `INSERT INTO ${quoteName(cluster.id)} (payload) VALUES ('\\x00') RETURNING id::text AS id`,
    )
    const id = rows[0]!.id
    // Set afterwards, as if it had been written then: no waiting for rows to age.
    await cluster.admin.query(
      `UPDATE ${quoteName(cluster.id)} SET created_at = now() + make_interval(secs => $2) WHERE id = $1`,
      [id, ms / 1000],
    )
    return id
  }

  const exists = async (id: string) =>
    (await cluster.admin.query(`SELECT 1 FROM ${quoteName(cluster.id)} WHERE id = $1`, [id]))
      .rowCount === 1

  /** Waits until the cleanup deleted `id`. */
  const deleted = (id: string, what: string) =>
    eventually(async () => !(await exists(id)), { timeout: 4 * INTERVAL, message: what })

  it("deletes the attachments older than cleanupInterval and keeps the younger ones", async () => {
    // A pass of the cleanup just ran once this old row is gone; the next one comes an interval later.
    await deleted(await insertAt(-3_600_000), "a first cleanup pass deleted an hour-old row")
    // At the next pass, `old` is 2.5 intervals old and `young` half an interval (it is written
    // half an interval ahead of now, so that the pass finds it aged between 0 and one interval).
    const old = await insertAt(-1.5 * INTERVAL)
    const young = await insertAt(INTERVAL / 2)
    await deleted(old, "the next pass deleted a row older than cleanupInterval")
    // That same pass (the one after comes an interval later) kept the younger row.
    expect(await exists(young)).toBe(true)
  })
})
