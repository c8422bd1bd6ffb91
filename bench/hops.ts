/**
 * `npm run bench:hops`: what one hop costs on each transport, with no adapter around it. A hop is
 * a message from one connection to another that listens: a NOTIFY through a pooled connection
 * (as the Publisher sends it: a notify script, committed asynchronously; and for comparison as it
 * did before, `SELECT pg_notify($1, $2)` with parameters) to a LISTEN connection, and Redis
 * PUBLISH to a SUBSCRIBE connection. A round trip is a question and its answer, each from
 * its own connection: the floor of a request (`fetchSockets`, `serverSideEmitWithAck`), which
 * takes one hop out and one back whatever the adapter does.
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
import { percentiles } from "./stats.js"

const { values } = parseArgs({
  options: {
    count: { type: "string", default: "2000" },
    out: { type: "string" },
  },
})
const count = Number(values.count)
if (!Number.isInteger(count) || count < 10) throw new Error("--count: an integer of at least 10")
const here = path.dirname(fileURLToPath(import.meta.url))
const out = values.out ?? path.join(here, "results", "hops.json")

/** Sends `message` on `channel`; resolves once the transport took it. */
type Send = (channel: string, message: string) => Promise<unknown>
/** Calls `onMessage` with every message of `channel`. */
type Listen = (channel: string, onMessage: (message: string) => void) => Promise<unknown>

interface Transport {
  readonly name: string
  readonly send: Send
  /** A second sender on a connection of its own: the one that answers. */
  readonly answer: Send
  readonly listen: Listen
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

const measure = async (transport: Transport) => {
  const prefix = `hops_${randomBytes(4).toString("hex")}`
  const hop = waiter()
  const back = waiter()
  await transport.listen(`${prefix}_q`, hop.deliver)
  await transport.listen(`${prefix}_a`, back.deliver)
  const oneHop = await time(async () => {
    const got = hop.next()
    await Promise.all([transport.send(`${prefix}_q`, "x"), got])
  })
  // The answering side: every question heard is answered from another connection.
  await transport.listen(`${prefix}_q`, (message) => void transport.answer(`${prefix}_a`, message))
  const roundTrip = await time(async () => {
    const got = back.next()
    await transport.send(`${prefix}_q`, "x")
    await got
  })
  const summary = (times: Array<number>) => {
    const { p50, p95 } = percentiles(times)
    return { p50: Number(p50!.toFixed(3)), p95: Number(p95!.toFixed(3)) }
  }
  return { name: transport.name, hop: summary(oneHop), roundTrip: summary(roundTrip) }
}

/**
 * How a statement notifies: as the Publisher does (a notify script in the simple query protocol),
 * or as it did before (`SELECT pg_notify($1, $2)` with parameters, asynchronous commit too).
 */
const STATEMENTS = {
  "PostgreSQL NOTIFY": (client: pg.PoolClient, channel: string, message: string) =>
    client.query(notifyScript([channel, message])),
  "PostgreSQL pg_notify": (client: pg.PoolClient, channel: string, message: string) =>
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
  const notify = (client: pg.PoolClient) => (channel: string, message: string) =>
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
      results.push(await measure(transport))
      await transport.close()
    }
  } finally {
    await database.stop()
  }
  console.log(`one message at a time, ${count} of each, ms:`)
  console.log("transport            hop p50  hop p95  round trip p50  round trip p95")
  for (const r of results) {
    console.log(
      `${r.name.padEnd(20)} ${String(r.hop.p50).padStart(7)}  ${String(r.hop.p95).padStart(7)}  ` +
        `${String(r.roundTrip.p50).padStart(14)}  ${String(r.roundTrip.p95).padStart(14)}`,
    )
  }
  await fs.mkdir(path.dirname(out), { recursive: true })
  await fs.writeFile(
    out,
    JSON.stringify(
      { date: new Date().toISOString(), count, database: database.description, results },
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
