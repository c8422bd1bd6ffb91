/**
 * Guarantee 4 (bad input): junk NOTIFYed on our channel by some other program is skipped with a
 * warning, one notification at a time, while real packets keep arriving complete and in order.
 */
import createDebug from "debug"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import type pg from "pg"
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFinished, vi } from "vitest"
import * as Metrics from "../src/Metrics.js"
import { watchProcessFaults } from "./fixtures/faults.js"
import { collect } from "./utils/cluster.js"
import { type Cluster, startCluster } from "./utils/nodes.js"
import { makePool } from "./utils/postgres.js"

const JUNK = 2000
const REAL = 100
const opts = { rooms: [], except: [] }

const skippedCount = () => Effect.runSync(Metric.value(Metrics.malformedNotifications)).count

describe("when junk is notified on the adapter's channel", () => {
  const watcher = watchProcessFaults()
  let id: string
  let junkPool: pg.Pool
  let cluster: Cluster
  let clients: Array<ClientSocket>
  let channel: string
  // Rows of our attachments table that do not hold a cluster message.
  let notMsgpackRow: string
  let notAMessageRow: string

  /** Every kind of junk, each made unique by `i` where the format allows it. */
  const junk: ReadonlyArray<(i: number) => string> = [
    (i) => `not json ${i}`,
    (i) => `{"uid":"x","type":3,${i}`,
    (i) => JSON.stringify([i, { uid: "x", type: 3 }]),
    (i) => JSON.stringify(`a string ${i}`),
    (i) => String(i),
    () => "null",
    () => "",
    (i) =>
      JSON.stringify({ type: 3, nsp: "/", data: { opts, packet: { type: 2, data: ["n", -i] } } }),
    (i) => JSON.stringify({ uid: i, type: 3 }),
    (i) => JSON.stringify({ uid: "x", type: "3", i }),
    (i) => JSON.stringify({ uid: "x", type: 3.5, i }),
    (i) => JSON.stringify({ uid: "x", type: 99, nsp: "/", i }),
    (i) => JSON.stringify({ uid: "x", type: 3, nsp: 42, i }),
    // BROADCAST without opts, with bad opts, with a bad packet, without data.
    (i) =>
      JSON.stringify({
        uid: "x",
        type: 3,
        nsp: "/",
        data: { packet: { type: 2, data: ["n", -i] } },
      }),
    (i) =>
      JSON.stringify({
        uid: "x",
        type: 3,
        nsp: "/",
        data: { opts: { rooms: "all", except: [] }, packet: { type: 2, data: ["n", -i] } },
      }),
    (i) =>
      JSON.stringify({
        uid: "x",
        type: 3,
        nsp: "/",
        data: { opts, packet: { type: 2, data: "n" }, i },
      }),
    (i) => JSON.stringify({ uid: "x", type: 3, nsp: "/", data: null, i }),
    (i) => JSON.stringify({ uid: "x", type: 3, nsp: "/", data: { opts, packet: [i] } }),
    // Other message types with missing or mistyped fields.
    (i) => JSON.stringify({ uid: "x", type: 4, nsp: "/", data: { opts, rooms: "r", i } }),
    (i) => JSON.stringify({ uid: "x", type: 6, nsp: "/", data: { i } }),
    (i) => JSON.stringify({ uid: "x", type: 7, nsp: "/", data: { opts, i } }),
    (i) =>
      JSON.stringify({ uid: "x", type: 8, nsp: "/", data: { requestId: `${i}`, sockets: "none" } }),
    (i) => JSON.stringify({ uid: "x", type: 9, nsp: "/", data: { packet: `ping ${i}` } }),
    (i) => JSON.stringify({ uid: "x", type: 10, nsp: "/", data: { i } }),
    (i) => JSON.stringify({ uid: "x", type: 11, nsp: "/", data: { requestId: `${i}` } }),
    // Attachment headers: unknown ids, ids that are not row ids, rows that hold no message.
    (i) => JSON.stringify({ uid: "x", type: 3, attachmentId: "999999999", i }),
    (i) => JSON.stringify({ uid: "x", type: 3, attachmentId: 999_999_999 + i }),
    (i) => JSON.stringify({ uid: "x", type: 3, attachmentId: `1; DROP TABLE ${id}`, i }),
    (i) => JSON.stringify({ uid: "x", type: 3, attachmentId: "1' OR '1'='1", i }),
    (i) => JSON.stringify({ uid: "x", type: 3, attachmentId: "-1", i }),
    (i) => JSON.stringify({ uid: "x", type: 3, attachmentId: "9999999999999999999", i }),
    (i) => JSON.stringify({ uid: "x", type: 3, attachmentId: { id: 1 }, i }),
    (i) => JSON.stringify({ uid: "x", type: 3, attachmentId: null, i }),
    (i) => JSON.stringify({ uid: "x", type: 3, attachmentId: notMsgpackRow, i }),
    (i) => JSON.stringify({ uid: "x", type: 3, attachmentId: notAMessageRow, i }),
    // Long garbage, just under the NOTIFY limit.
    (i) => `${i} ${"~".repeat(7900)}`,
  ]

  beforeAll(async () => {
    junkPool = makePool({ max: 4 })
    cluster = await startCluster("faults_input", {
      nodes: 2,
      options: { heartbeatInterval: 300, heartbeatTimeout: 3000 },
    })
    id = cluster.id
    clients = await cluster.connectEach()
    channel = cluster.nodes[0]!.adapter().channel
    const rows = await junkPool.query<{ id: string }>(
      `INSERT INTO ${id} (payload) VALUES ($1), ($2) RETURNING id::text AS id`,
      [Buffer.from([0xc1, 0xff, 0x00]), Buffer.from([0x93, 0x01, 0x02, 0x03])],
    )
    notMsgpackRow = rows.rows[0]!.id
    notAMessageRow = rows.rows[1]!.id
  })

  afterEach(() => {
    vi.restoreAllMocks()
    expect(watcher.faults).toEqual([])
  })

  afterAll(async () => {
    watcher.stop()
    await cluster?.close()
    await junkPool?.end()
  })

  it("delivers every real packet in order and skips each junk notification with a warning", async () => {
    // Plain apps log through `debug` (quiet unless DEBUG asks): ask, and keep what it writes.
    const logged: Array<string> = []
    const log = createDebug.log
    createDebug.log = (...args: Array<unknown>) => void logged.push(args.join(" "))
    createDebug.enable("socket.io-postgres-effect:*")
    onTestFinished(() => {
      createDebug.disable()
      createDebug.log = log
    })
    const skippedBefore = skippedCount()
    const [client0, client1] = clients
    const remote = collect(client1!, "n", REAL, 30_000)
    const local = collect(client0!, "n", REAL, 30_000)

    const notify = (payload: string) =>
      junkPool.query("SELECT pg_notify($1, $2)", [channel, payload])
    const perReal = JUNK / REAL
    for (let k = 0; k < REAL; k++) {
      const batch = Array.from({ length: perReal }, (_, j) => {
        const i = k * perReal + j
        return notify(junk[i % junk.length]!(i))
      })
      // Every tenth packet carries binary data: it travels through an attachment.
      if (k % 10 === 0) cluster.nodes[0]!.io.emit("n", k, Buffer.from([k]))
      else cluster.nodes[0]!.io.emit("n", k)
      await Promise.all(batch)
    }

    const expected = Array.from({ length: REAL }, (_, k) => k)
    expect((await remote).map((args) => args[0])).toEqual(expected)
    expect((await local).map((args) => args[0])).toEqual(expected)
    const binary = (await remote).filter((args) => args.length === 2)
    expect(binary.map((args) => [...(args[1] as Buffer)])).toEqual(
      expected.filter((k) => k % 10 === 0).map((k) => [k]),
    )

    // Each server skipped each junk notification once, and said so in the log.
    await vi.waitFor(() => expect(skippedCount() - skippedBefore).toBe(2 * JUNK), {
      timeout: 10_000,
    })
    expect(logged.some((line) => /skipped \d+ malformed notification/.test(line))).toBe(true)
    // Junk is not a publish or listen error.
    expect(cluster.nodes.flatMap((node) => node.errors)).toEqual([])
  })

  it("skips broadcasts whose packet Socket.IO clients could not parse, keeping them connected", async () => {
    const skippedBefore = skippedCount()
    const hostile = [
      { type: 99, data: ["n", -1] },
      { type: 1 },
      { type: 0, data: ["n", -1] },
      { type: 3, data: ["n", -1] },
      { type: 2, data: [] },
      { type: 2, data: [{ not: "an event name" }] },
      { type: 2, data: ["disconnect"] },
      { type: 2, data: ["connect", -1] },
      { type: "2", data: ["n", -1] },
      { type: 2, data: ["n", -1], id: "not a number" },
      { type: 5, data: ["n", -1] },
    ]
    const client = clients[1]!
    const disconnected = vi.fn()
    client.on("disconnect", disconnected)
    const got = collect(client, "after-hostile", 1, 10_000)
    for (const [i, packet] of hostile.entries()) {
      await junkPool.query("SELECT pg_notify($1, $2)", [
        channel,
        JSON.stringify({ uid: "x", type: 3, nsp: "/", data: { opts, packet }, i }),
      ])
    }
    cluster.nodes[0]!.io.emit("after-hostile")
    await got
    client.off("disconnect", disconnected)
    expect(disconnected).not.toHaveBeenCalled()
    expect(clients.every((c) => c.connected)).toBe(true)
    await vi.waitFor(() => expect(skippedCount() - skippedBefore).toBe(2 * hostile.length))
  })

  it("keeps working after the flood: no phantom member, clients connected, requests answered", async () => {
    expect(clients.every((client) => client.connected)).toBe(true)
    await cluster.waitForMembers("/", 2)
    cluster.nodes[1]!.io.on("ping", (ack: (answer: string) => void) => ack("pong"))
    expect(await cluster.nodes[0]!.io.serverSideEmitWithAck("ping")).toEqual(["pong"])
    // The table the junk tried to drop is still there.
    const table = await junkPool.query("SELECT to_regclass($1) AS t", [id])
    expect(table.rows[0].t).not.toBeNull()
  })
})
