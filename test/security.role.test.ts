/**
 * The README's least-privilege role (Security): an administrator runs its SQL (names made unique
 * for this run), the recovery tables' DDL of the README beside it, and a signed cluster with
 * connection state recovery runs on a login of that role with `createTable: false`: broadcasts,
 * attachments, their cleanup and recovery work, nothing is reported, and the role cannot create.
 */
import { randomBytes } from "node:crypto"
import { readFileSync } from "node:fs"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { collect, eventually, waitFor } from "./utils/cluster.js"
import { type Cluster, startCluster } from "./utils/nodes.js"
import { databaseUrl, makePool, suiteId } from "./utils/postgres.js"
import { dropTransport, emitStored, recorder, resume, withoutOffset } from "./utils/recovery.js"

const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8")

/** The first ```sql block after `marker` in the README. */
const sqlAfter = (marker: string): string => {
  const at = readme.indexOf(marker)
  if (at === -1) throw new Error(`README has no ${marker}`)
  const start = readme.indexOf("```sql\n", at) + "```sql\n".length
  return readme.slice(start, readme.indexOf("```", start))
}

describe("the README's least-privilege role", () => {
  const id = suiteId("role")
  const role = `${id}_app`
  const password = randomBytes(12).toString("hex")
  let admin: pg.Pool
  let cluster: Cluster | undefined
  let roleUrl: string

  beforeAll(async () => {
    admin = makePool({ max: 1 })
    const database = (await admin.query<{ db: string }>("SELECT current_database() AS db")).rows[0]!
      .db
    const names = (sql: string) =>
      sql
        .replaceAll("socket_io_app", role)
        .replaceAll("socket_io_attachments", id)
        .replaceAll("socket_io_recovery", id)
        .replaceAll("DATABASE app", `DATABASE "${database}"`)
        .replaceAll("'change-me'", `'${password}'`)
    // The recovery tables first: the role's SQL grants on them.
    await admin.query(names(sqlAfter("to create them yourself (replace the")))
    await admin.query(names(sqlAfter("<!-- least-privilege-role -->")))
    const url = new URL(databaseUrl())
    url.username = role
    url.password = password
    roleUrl = url.toString()
  })

  afterAll(async () => {
    await cluster?.close()
    for (const table of [id, `${id}_offsets`, `${id}_packets`, `${id}_sessions`]) {
      await admin.query(`DROP TABLE IF EXISTS "${table}"`).catch(() => {})
    }
    await admin.query(`DROP OWNED BY "${role}"`).catch(() => {})
    await admin.query(`DROP ROLE IF EXISTS "${role}"`)
    await admin.end()
  })

  it("runs a signed cluster with recovery, and cannot create tables", async () => {
    const asRole = new pg.Client({ connectionString: roleUrl })
    await asRole.connect()
    try {
      const version = Number(
        (await asRole.query("SHOW server_version_num")).rows[0].server_version_num,
      )
      // PostgreSQL 15 took CREATE on public away from PUBLIC; the README says what to do before.
      if (version >= 150000) {
        await expect(asRole.query(`CREATE TABLE "${id}_nope" (x int)`)).rejects.toThrow(
          /permission denied/,
        )
      }
    } finally {
      await asRole.end()
    }
    cluster = await startCluster("role", {
      nodes: 2,
      options: () => ({
        channelPrefix: id,
        tableName: id,
        recoveryTablePrefix: id,
        createTable: false,
        cleanupInterval: 300,
        secret: "the-secret-of-the-role-suite!!!!",
      }),
      serverOptions: { connectionStateRecovery: { maxDisconnectionDuration: 60_000 } },
      poolOptions: () => ({ connectionString: roleUrl }),
    })
    const [a, b] = await cluster.connectEach()
    // Inline and through the attachments table, both ways.
    const got = collect(b!, "ev", 2)
    // Server 0's own client gets them too (before what follows is awaited on it).
    const gotLocally = collect(a!, "ev", 2)
    cluster.nodes[0]!.io.emit("ev", "inline")
    cluster.nodes[0]!.io.emit("ev", Buffer.from("binary"))
    await gotLocally
    const args = (await got).map((e) => e[0])
    expect(args[0]).toBe("inline")
    expect(Buffer.from(args[1] as ArrayBuffer).toString()).toBe("binary")
    const back = waitFor(a!, "ev")
    cluster.nodes[1]!.io.emit("ev", Buffer.from("back"))
    expect(Buffer.from((await back)[0] as ArrayBuffer).toString()).toBe("back")
    // Recovery: a client that lost its transport gets what it missed, from the other server.
    const log = recorder()
    await dropTransport(a!, admin, id)
    await emitStored(admin, id, () => cluster!.nodes[1]!.io.emit("ev", "missed"))
    const resumed = await resume(a!, cluster.nodes[1]!.url, { attach: log.attach })
    try {
      expect(resumed.recovered).toBe(true)
      await eventually(() => log.received.some((r) => r.event === "ev"))
      expect(withoutOffset(log.received.find((r) => r.event === "ev")!.args)).toEqual(["missed"])
    } finally {
      resumed.disconnect()
    }
    // The cleanup (DELETE) runs under the role too: old attachment rows go.
    await eventually(
      async () => (await admin.query(`SELECT count(*)::int AS n FROM "${id}"`)).rows[0].n === 0,
      { timeout: 10_000 },
    )
    expect(cluster.nodes.flatMap((node) => node.errors.map((e) => e.message))).toEqual([])
  })
})
