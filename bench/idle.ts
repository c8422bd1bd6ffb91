/**
 * `npm run bench:idle`: what an idle cluster costs, in notifications (each one a commit that
 * writes WAL), with 1, 100 and 1,000 namespaces on 3 servers: this adapter (one membership per
 * server: `membership: "auto"`), the same with per-namespace heartbeats (`membership:
 * "namespace"`, 0.5.0's wire) and `@socket.io/postgres-adapter` 0.5.0.
 *
 * The three servers run in this process (idle: their CPU is not measured), each with its own pool
 * and adapter runtime. Once every server counts the others in every namespace, a LISTEN of the
 * bench's own on every channel counts the notifications of `--intervals` heartbeat intervals. The
 * count per interval does not depend on the interval's length: per minute at the default
 * `heartbeatInterval` (5 s) is that count times 12.
 *
 *   npm run bench:idle                                  every kind, 1, 100 and 1,000 namespaces
 *   npm run bench:idle -- --namespaces 1,100 --kind ours,upstream
 *   npm run bench:idle -- --quick                       1 and 10 namespaces, 2 intervals
 *
 * `DATABASE_URL` selects the PostgreSQL; without it an embedded one is started and deleted after.
 * Writes bench/results/idle.json (`--out DIR` elsewhere).
 */
import { randomBytes } from "node:crypto"
import * as fs from "node:fs/promises"
import * as http from "node:http"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { parseArgs } from "node:util"
import { createAdapter as createUpstreamAdapter } from "@socket.io/postgres-adapter"
import pg from "pg"
import { Server } from "socket.io"
import { openDatabase } from "../demo/postgres.js"
import { channelName, quoteIdentifier, serverChannelName } from "../src/Channel.js"
import { createAdapter } from "../src/index.js"

const KINDS = ["ours", "ours-namespace", "upstream"] as const
type IdleKind = (typeof KINDS)[number]

const LABELS: Record<IdleKind, string> = {
  ours: 'ours (membership "auto")',
  "ours-namespace": 'ours (membership "namespace")',
  upstream: "0.5.0",
}

const SERVERS = 3
/** Long enough for 1,000 namespaces' heartbeats to be spread over it, short enough to run soon. */
const HEARTBEAT_MS = 1000
const DEFAULT_HEARTBEAT_MS = 5000

const log = (line: string) => process.stderr.write(`${line}\n`)
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** One measurement: a kind with a number of namespaces. */
interface IdleResult {
  readonly kind: IdleKind
  readonly namespaces: number
  readonly intervals: number
  readonly windowMs: number
  readonly notifications: number
  /** Notifications per heartbeat interval, the cluster's 3 servers together. */
  readonly perInterval: number
  /** Per minute with the default `heartbeatInterval` of 5 s. */
  readonly perMinuteAt5s: number
  /** Of them, on namespace channels (the rest is on the server channel). */
  readonly onNamespaceChannels: number
  /** ms from the first adapter until every server counted the others in every namespace. */
  readonly formedMs: number
}

const makeAdapter = (kind: IdleKind, pool: pg.Pool, prefix: string) => {
  const options = { channelPrefix: prefix, tableName: prefix, heartbeatInterval: HEARTBEAT_MS }
  const errorHandler = (error: Error) => log(`  adapter error: ${error.message}`)
  if (kind === "upstream") return createUpstreamAdapter(pool, { ...options, errorHandler })
  const membership = kind === "ours" ? "auto" : "namespace"
  return createAdapter(pool, { ...options, membership, errorHandler })
}

/** Until every server counts every server in every namespace. */
const waitFormed = async (servers: ReadonlyArray<Server>, nsps: ReadonlyArray<string>) => {
  const deadline = Date.now() + 60_000 + 10 * HEARTBEAT_MS
  for (;;) {
    let formed = true
    for (const io of servers) {
      for (const nsp of nsps) {
        if ((await io.of(nsp).adapter.serverCount()) !== SERVERS) formed = false
        if (!formed) break
      }
      if (!formed) break
    }
    if (formed) return
    if (Date.now() > deadline) throw new Error("the cluster did not form within a minute")
    await sleep(50)
  }
}

const measureOne = async (
  url: string,
  kind: IdleKind,
  namespaces: number,
  intervals: number,
): Promise<IdleResult> => {
  const prefix = `idle_${randomBytes(4).toString("hex")}`
  const nsps = ["/", ...Array.from({ length: namespaces - 1 }, (_, i) => `/n${i}`)]
  const channels = nsps.map((nsp) => channelName(prefix, nsp))
  const listener = new pg.Client({ connectionString: url, application_name: `${prefix} count` })
  await listener.connect()
  const seen: Array<{ readonly at: number; readonly channel: string }> = []
  listener.on("notification", ({ channel }) => void seen.push({ at: Date.now(), channel }))
  for (const channel of [serverChannelName(prefix), ...channels]) {
    await listener.query(`LISTEN ${quoteIdentifier(channel)}`)
  }
  const pools = Array.from(
    { length: SERVERS },
    (_, i) => new pg.Pool({ connectionString: url, max: 4, application_name: `${prefix} s${i}` }),
  )
  // 0.5.0 does not create its table; heartbeats never use it, its cleanup does.
  await pools[0]!.query(
    `CREATE TABLE IF NOT EXISTS ${prefix} (id bigserial UNIQUE, created_at timestamptz DEFAULT now(), payload bytea)`,
  )
  for (const pool of pools) pool.on("error", (error) => log(`  pool error: ${error.message}`))
  const servers = await Promise.all(
    pools.map(async (pool) => {
      const httpServer = http.createServer()
      await new Promise<void>((resolve) => httpServer.listen(0, "127.0.0.1", resolve))
      return new Server(httpServer, { adapter: makeAdapter(kind, pool, prefix) })
    }),
  )
  try {
    const started = Date.now()
    for (const io of servers) for (const nsp of nsps) io.of(nsp)
    await waitFormed(servers, nsps)
    const formedMs = Date.now() - started
    // What the joins caused is over after an interval or two.
    await sleep(2 * HEARTBEAT_MS)
    const from = Date.now()
    await sleep(intervals * HEARTBEAT_MS)
    const to = Date.now()
    const window = seen.filter((s) => s.at >= from && s.at < to)
    const notifications = window.length
    const perInterval = (notifications * HEARTBEAT_MS) / (to - from)
    return {
      kind,
      namespaces,
      intervals,
      windowMs: to - from,
      notifications,
      perInterval: Math.round(perInterval * 10) / 10,
      perMinuteAt5s: Math.round((perInterval * 60_000) / DEFAULT_HEARTBEAT_MS),
      onNamespaceChannels: window.filter((s) => s.channel !== serverChannelName(prefix)).length,
      formedMs,
    }
  } finally {
    await Promise.all(servers.map((io) => io.close()))
    await listener.end()
    await pools[0]!.query(`DROP TABLE IF EXISTS ${prefix}`).catch(() => {})
    await Promise.all(pools.map((pool) => pool.end()))
  }
}

const formatTable = (results: ReadonlyArray<IdleResult>): string => {
  const header = ["kind", "namespaces", "per interval", "per minute at 5 s", "x one namespace"]
  const rows = results.map((r) => {
    const one = results.find((o) => o.kind === r.kind && o.namespaces === 1)
    const ratio = one === undefined || one.perInterval === 0 ? "-" : r.perInterval / one.perInterval
    return [
      LABELS[r.kind],
      r.namespaces.toLocaleString("en-US"),
      r.perInterval.toFixed(1),
      r.perMinuteAt5s.toLocaleString("en-US"),
      typeof ratio === "number" ? ratio.toFixed(2) : ratio,
    ]
  })
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)))
  const line = (cells: ReadonlyArray<string>) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ")
  return [line(header), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map(line)].join("\n")
}

const main = async () => {
  const { values } = parseArgs({
    options: {
      kind: { type: "string", multiple: true },
      namespaces: { type: "string" },
      intervals: { type: "string" },
      quick: { type: "boolean", default: false },
      out: { type: "string" },
    },
  })
  const kinds = (values.kind ?? [...KINDS]).flatMap((k) => k.split(",")) as Array<IdleKind>
  for (const kind of kinds) {
    if (!KINDS.includes(kind)) throw new Error(`unknown kind ${kind}: ${KINDS.join(", ")}`)
  }
  const counts = (values.namespaces ?? (values.quick ? "1,10" : "1,100,1000"))
    .split(",")
    .map(Number)
  if (counts.some((n) => !Number.isInteger(n) || n < 1)) throw new Error("--namespaces: 1 or more")
  const intervals = Number(values.intervals ?? (values.quick ? 2 : 10))
  const here = path.dirname(fileURLToPath(import.meta.url))
  const out = path.resolve(values.out ?? path.join(here, "results"))
  const database = await openDatabase(log)
  const results: Array<IdleResult> = []
  try {
    for (const kind of kinds) {
      for (const namespaces of counts) {
        log(`${LABELS[kind]}, ${namespaces} namespace(s)…`)
        const result = await measureOne(database.url, kind, namespaces, intervals)
        log(`  ${result.perInterval} notifications per interval (formed in ${result.formedMs} ms)`)
        results.push(result)
      }
    }
  } finally {
    await database.stop()
  }
  process.stdout.write(`${formatTable(results)}\n`)
  await fs.mkdir(out, { recursive: true })
  const json = {
    date: new Date().toISOString(),
    heartbeatMs: HEARTBEAT_MS,
    servers: SERVERS,
    results,
  }
  await fs.writeFile(path.join(out, "idle.json"), `${JSON.stringify(json, null, 2)}\n`)
}

main().catch((error) => {
  log(error instanceof Error ? (error.stack ?? error.message) : String(error))
  process.exit(1)
})
