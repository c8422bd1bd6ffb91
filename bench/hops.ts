/**
 * `npm run bench:hops`: what one hop costs on each transport, with no adapter around it. A hop is
 * a message from one connection to another that listens: a NOTIFY through a pooled connection
 * (as the Publisher sends it: a notify script, committed asynchronously; and for comparison as it
 * did before, `SELECT pg_notify($1, $2)` with parameters) to a LISTEN connection, and Redis
 * PUBLISH to a SUBSCRIBE connection. A round trip is a question and its answer, each from
 * its own connection: the floor of a request (`fetchSockets`, `serverSideEmitWithAck`), which
 * takes one hop out and one back whatever the adapter does.
 *
 * Each transport is measured alone, then with `--bystanders` (default 2, the other nodes of a
 * 3-node cluster) connections listening on channels of their own, which hear none of the measured
 * messages: PostgreSQL before 19 wakes every listening backend of the database at each commit
 * that notifies (Redis writes only to a channel's subscribers), which the server CPU per 1,000
 * trips shows (PostgreSQL's processes, or redis-server, from /proc; null when the server is not
 * on this machine). The notify script is measured a third time with the messages sent from the
 * bystanders' own LISTEN connections (the question from one, the answer from another), as nodes
 * that notify from their LISTEN connection would: one backend fewer to wake per message.
 *
 * One message at a time, in one process, after a warm-up; p50 and p95 of `--count` (default 2,000).
 * `DATABASE_URL` selects the PostgreSQL (else an embedded one), `REDIS_URL` the Redis (default
 * `redis://127.0.0.1:6379`; skipped, and said so, when none answers). Writes `--out`
 * (default `bench/results/hops.json`).
 */
import { randomBytes } from "node:crypto"
import * as fs from "node:fs/promises"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { parseArgs } from "node:util"
import pg from "pg"
import { createClient } from "redis"
import { openDatabase } from "../demo/postgres.js"
import { ASYNC_COMMIT_CALL, notifyScript } from "../src/internal/statements.js"
import { cpuBetween, percentiles, redisProcesses, serverCpu, serverProcesses } from "./stats.js"

const { values } = parseArgs({
  options: {
    count: { type: "string", default: "2000" },
    bystanders: { type: "string", default: "2" },
    out: { type: "string" },
  },
})
const count = Number(values.count)
if (!Number.isInteger(count) || count < 10) throw new Error("--count: an integer of at least 10")
const bystanders = Number(values.bystanders)
if (!Number.isInteger(bystanders) || bystanders < 0 || bystanders > 50) {
  throw new Error("--bystanders: an integer from 0 to 50")
}
const here = path.dirname(fileURLToPath(import.meta.url))
const out = values.out ?? path.join(here, "results", "hops.json")

/** Sends `message` on `channel`; resolves once the transport took it. */
type Send = (channel: string, message: string) => Promise<unknown>
/** Calls `onMessage` with every message of `channel`. */
type Listen = (channel: string, onMessage: (message: string) => void) => Promise<unknown>

interface Bystander {
  readonly close: () => Promise<void>
  readonly send?: Send | undefined
}

interface Transport {
  readonly name: string
  readonly send: Send
  /** A second sender on a connection of its own: the one that answers. */
  readonly answer: Send
  readonly listen: Listen
  /**
   * Opens a connection that listens on a channel of its own, as another node of the cluster
   * does: it hears none of the measured messages. Resolves with its close, and (PostgreSQL) a
   * sender on that connection: a node that would notify from its own LISTEN connection.
   */
  readonly bystander: () => Promise<Bystander>
  /** The pids of the server's processes in a `serverCpu` snapshot. */
  readonly serverPids: (snapshot: ReturnType<typeof serverCpu>) => Array<number>
  readonly close: () => Promise<void>
}

// Times `count` round trips of `trip` after 200 unmeasured ones; milliseconds.
const time = async (trip: () => Promise<void>): Promise<Array<number>> => {
  for (let i = 0; i < 200; i++) await trip()
  const times: Array<number> = []
  for (let i = 0; i < count; i++) {
    const start = performance.now()
    await trip()
    times.push(performance.now() - start)
  }
  return times
}

// A promise for the next message of a listener, with a deadline instead of a hang.
const waiter = () => {
  let next: ((message: string) => void) | undefined
  return {
    deliver: (message: string) => next?.(message),
    next: () =>
      new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("no message within 5 s")), 5000)
        next = (message) => {
          clearTimeout(timer)
          next = undefined
          resolve(message)
        }
      }),
  }
}

// The server's CPU (ms per 1,000 trips: PostgreSQL's processes, or redis-server) over `times`.
const withCpu = async (transport: Transport, times: () => Promise<Array<number>>) => {
  const before = serverCpu()
  const measured = await times()
  const after = serverCpu()
  const cpu = cpuBetween(before, after, transport.serverPids(after))
  const { p50, p95 } = percentiles(measured)
  return {
    p50: Number(p50!.toFixed(3)),
    p95: Number(p95!.toFixed(3)),
    serverCpuMsPer1k: cpu === undefined ? null : Math.round((cpu * 1000) / count),
  }
}

/**
 * One hop and one round trip, with `others` bystanders listening meanwhile. `fromListeners`: the
 * question is sent from the first bystander's connection and the answer from the second's (else
 * from the transport's own), as nodes notifying from their LISTEN connections would, instead of
 * from connections that only send.
 */
const measure = async (base: Transport, others: number, fromListeners = false) => {
  const opened = await Promise.all(Array.from({ length: others }, () => base.bystander()))
  const closers = opened.map((bystander) => bystander.close)
  const transport: Transport = fromListeners
    ? { ...base, send: opened[0]!.send!, answer: opened[1]?.send ?? base.answer }
    : base
  try {
    const prefix = `hops_${randomBytes(4).toString("hex")}`
    const hop = waiter()
    const back = waiter()
    await transport.listen(`${prefix}_q`, hop.deliver)
    await transport.listen(`${prefix}_a`, back.deliver)
    const oneHop = await withCpu(transport, () =>
      time(async () => {
        const got = hop.next()
        await Promise.all([transport.send(`${prefix}_q`, "x"), got])
      }),
    )
    // The answering side: every question heard is answered from another connection.
    await transport.listen(
      `${prefix}_q`,
      (message) => void transport.answer(`${prefix}_a`, message),
    )
    const roundTrip = await withCpu(transport, () =>
      time(async () => {
        const got = back.next()
        await transport.send(`${prefix}_q`, "x")
        await got
      }),
    )
    const sender = fromListeners ? "listening connection" : "sending connection"
    return { name: transport.name, sender, bystanders: others, hop: oneHop, roundTrip }
  } finally {
    await Promise.all(closers.map((close) => close()))
  }
}

/**
 * How a statement notifies: as the Publisher does (a notify script in the simple query protocol),
 * or as it did before (`SELECT pg_notify($1, $2)` with parameters, asynchronous commit too).
 */
const STATEMENTS = {
  "PostgreSQL NOTIFY": (client: pg.ClientBase, channel: string, message: string) =>
    client.query(notifyScript([channel, message])),
  "PostgreSQL pg_notify": (client: pg.ClientBase, channel: string, message: string) =>
    client.query(`SELECT ${ASYNC_COMMIT_CALL}, pg_notify($1, $2)`, [channel, message]),
} as const

const postgres = async (url: string, name: keyof typeof STATEMENTS): Promise<Transport> => {
  const pool = new pg.Pool({ connectionString: url, max: 2 })
  const listener = new pg.Client({ connectionString: url })
  await listener.connect()
  const handlers = new Map<string, Array<(message: string) => void>>()
  listener.on("notification", (n) => {
    for (const handler of handlers.get(n.channel) ?? []) handler(n.payload ?? "")
  })
  // Two connections of the pool, as two servers' publishers would be.
  const [first, second] = [await pool.connect(), await pool.connect()]
  const { rows } = await first.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")
  const notify = (client: pg.ClientBase) => (channel: string, message: string) =>
    STATEMENTS[name](client, channel, message)
  return {
    name,
    send: notify(first),
    answer: notify(second),
    listen: async (channel, onMessage) => {
      // One handler per channel at a time: the last one given.
      if (!handlers.has(channel)) await listener.query(`LISTEN "${channel}"`)
      handlers.set(channel, [onMessage])
    },
    bystander: async () => {
      const other = new pg.Client({ connectionString: url })
      await other.connect()
      await other.query(`LISTEN "hops_bystander_${randomBytes(4).toString("hex")}"`)
      return { close: () => other.end(), send: notify(other) }
    },
    serverPids: (snapshot) => serverProcesses(snapshot, rows[0]!.pid),
    close: async () => {
      first.release()
      second.release()
      await listener.end()
      await pool.end()
    },
  }
}

const redis = async (url: string): Promise<Transport | string> => {
  const publisher = createClient({
    url,
    socket: { connectTimeout: 3000, reconnectStrategy: false },
  })
  // A refused connection is the rejection of connect(); without a listener it would also crash.
  publisher.on("error", () => {})
  try {
    await publisher.connect()
  } catch (error) {
    return `no Redis at ${url}: ${(error as Error).message}`
  }
  const answerer = publisher.duplicate()
  const subscriber = publisher.duplicate()
  await Promise.all([answerer.connect(), subscriber.connect()])
  const handlers = new Map<string, (message: string) => void>()
  return {
    name: "Redis PUBLISH",
    send: (channel, message) => publisher.publish(channel, message),
    answer: (channel, message) => answerer.publish(channel, message),
    listen: async (channel, onMessage) => {
      if (!handlers.has(channel)) {
        await subscriber.subscribe(channel, (message) => handlers.get(channel)?.(message))
      }
      handlers.set(channel, onMessage)
    },
    bystander: async () => {
      const other = publisher.duplicate()
      await other.connect()
      await other.subscribe(`hops_bystander_${randomBytes(4).toString("hex")}`, () => {})
      // A subscribed connection cannot publish: no sender.
      return { close: async () => void (await other.quit()) }
    },
    serverPids: redisProcesses,
    close: async () => {
      await Promise.all([publisher.quit(), answerer.quit(), subscriber.quit()])
    },
  }
}

const main = async () => {
  const database = await openDatabase((line) => console.error(line))
  const results = []
  try {
    const transports: Array<Transport> = [
      await postgres(database.url, "PostgreSQL NOTIFY"),
      await postgres(database.url, "PostgreSQL pg_notify"),
    ]
    const other = await redis(process.env["REDIS_URL"] ?? "redis://127.0.0.1:6379")
    if (typeof other === "string") console.error(`${other}: skipped`)
    else transports.push(other)
    for (const transport of transports) {
      results.push(await measure(transport, 0))
      if (bystanders > 0) results.push(await measure(transport, bystanders))
      // Notifying from a LISTEN connection: one backend fewer to wake per message.
      if (bystanders > 0 && transport.name === "PostgreSQL NOTIFY") {
        results.push(await measure(transport, bystanders, true))
      }
      await transport.close()
    }
  } finally {
    await database.stop()
  }
  console.log(`one message at a time, ${count} of each; ms, and server CPU ms per 1,000:`)
  console.log(
    "transport                          bystanders  hop p50  hop p95  hop cpu  trip p50  trip p95  trip cpu",
  )
  const cell = (value: number | null, width: number) => String(value ?? "-").padStart(width)
  for (const r of results) {
    console.log(
      `${`${r.name}${r.sender === "listening connection" ? ", from listeners" : ""}`.padEnd(34)} ${cell(r.bystanders, 10)}  ${cell(r.hop.p50, 7)}  ${cell(r.hop.p95, 7)}  ` +
        `${cell(r.hop.serverCpuMsPer1k, 7)}  ${cell(r.roundTrip.p50, 8)}  ${cell(r.roundTrip.p95, 8)}  ` +
        cell(r.roundTrip.serverCpuMsPer1k, 8),
    )
  }
  await fs.mkdir(path.dirname(out), { recursive: true })
  await fs.writeFile(
    out,
    JSON.stringify(
      {
        date: new Date().toISOString(),
        count,
        bystanders,
        database: database.description,
        results,
      },
      null,
      2,
    ),
  )
  console.log(`wrote ${path.relative(process.cwd(), out)}`)
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
