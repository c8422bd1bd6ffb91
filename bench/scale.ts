/**
 * `npm run bench:scale` (issue 13): what `subscriptionMode` saves the servers that have no member
 * in a room, and what rooms coming and going cost in LISTEN statements.
 *
 * Four servers, each in a process of its own (`scaleNode.ts`): server 0 emits to room "r" at a
 * fixed rate; every member of "r" is a client of server 1; servers 2 and 3 are bystanders (a client
 * each, in no room). For each mode, the CPU of every server while the packets flow, per packet, raw
 * and net of the same server's idle CPU (heartbeats, liveness pings) over as long; every member
 * must get every packet. Then, in the dynamic modes, churn: sockets of server 3 join and leave
 * random rooms, and the LISTEN / UNLISTEN statements its LISTEN connection sent are counted.
 *
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/test npm run bench:scale -- [--count 5000]
 *     [--rate 1000] [--members 4] [--modes static,dynamic] [--churn-ops 5000] [--out DIR]
 */
import { randomBytes } from "node:crypto"
import { mkdir, writeFile } from "node:fs/promises"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import pg from "pg"
import { io as connect, type Socket } from "socket.io-client"
import { roomChannelName } from "../src/Channel.js"
import { Worker } from "./ipc.js"

type Mode = "static" | "dynamic" | "dynamic-private"
const here = path.dirname(fileURLToPath(import.meta.url))

const option = (name: string, fallback: string): string => {
  const at = process.argv.indexOf(`--${name}`)
  return at === -1 ? fallback : process.argv[at + 1]!
}
const url = process.env.DATABASE_URL
if (url === undefined) throw new Error("bench:scale needs DATABASE_URL")
const count = Number(option("count", "5000"))
const rate = Number(option("rate", "1000"))
const members = Number(option("members", "4"))
const churnOps = Number(option("churn-ops", "5000"))
const modes = option("modes", "static,dynamic").split(",") as Array<Mode>
const out = option("out", path.join(here, "results", "scale"))
const IDLE_MS = 2000
const ROOM = "r"

const log = (line: string) => process.stderr.write(`${line}\n`)
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))
const until = async (what: string, predicate: () => Promise<boolean> | boolean, ms = 20_000) => {
  const deadline = Date.now() + ms
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

interface Status {
  readonly servers: number
  readonly sockets: number
  readonly roomChannels: Array<string>
}

const client = async (port: number): Promise<Socket> => {
  const socket = connect(`http://127.0.0.1:${port}`, { transports: ["websocket"] })
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve)
    socket.once("connect_error", reject)
  })
  return socket
}

const runMode = async (mode: Mode) => {
  const prefix = `scale_${mode.replace("-", "_")}_${randomBytes(3).toString("hex")}`
  const workers = await Promise.all([0, 1, 2, 3].map((i) => Worker.start("scaleNode.ts", `s${i}`)))
  const clients: Array<Socket> = []
  try {
    const ports = await Promise.all(
      workers.map((w) =>
        w.call<{ port: number }>("start", {
          url,
          channelPrefix: prefix,
          tableName: prefix,
          subscriptionMode: mode,
          heartbeatInterval: 2000,
        }),
      ),
    )
    const status = (i: number) => workers[i]!.call<Status>("status")
    await until("4 servers", async () =>
      (await Promise.all(workers.map((_, i) => status(i)))).every((s) => s.servers === 4),
    )
    await workers[1]!.call("joinOnConnect", { rooms: [ROOM] })
    const received: Array<number> = []
    for (let i = 0; i < members; i++) {
      const socket = await client(ports[1]!.port)
      const at = received.push(0) - 1
      socket.on("m", () => received[at]!++)
      clients.push(socket)
    }
    clients.push(await client(ports[2]!.port), await client(ports[3]!.port))
    if (mode !== "static") {
      const channel = roomChannelName(prefix, "/", ROOM)
      await until("server 1 listening on the room", async () =>
        (await status(1)).roomChannels.includes(channel),
      )
    }
    const cpu = async (during: () => Promise<unknown>) => {
      await Promise.all(workers.map((w) => w.call("cpuStart")))
      const started = performance.now()
      await during()
      const ms = performance.now() - started
      const used = await Promise.all(workers.map((w) => w.call<{ cpuMs: number }>("cpuStop")))
      return { ms, cpuMs: used.map((u) => u.cpuMs) }
    }
    log(`${mode}: idle ${IDLE_MS} ms`)
    const idle = await cpu(() => sleep(IDLE_MS))
    log(`${mode}: ${count} packets at ${rate}/s to room "${ROOM}"`)
    const busy = await cpu(async () => {
      await workers[0]!.call("emit", { room: ROOM, count, rate })
      await until("every packet at every member", () => received.every((n) => n >= count), 30_000)
    })
    const lost = received.reduce((sum, n) => sum + (count - n), 0)
    const servers = busy.cpuMs.map((cpuMs, i) => {
      const idlePerMs = idle.cpuMs[i]! / idle.ms
      return {
        role: i === 0 ? "emitter" : i === 1 ? "members" : "bystander",
        cpuMs: round(cpuMs),
        usPerPacket: round((cpuMs * 1000) / count),
        netUsPerPacket: round(((cpuMs - idlePerMs * busy.ms) * 1000) / count),
      }
    })
    let churn: unknown = null
    if (mode !== "static") {
      for (let i = 0; i < 50; i++) clients.push(await client(ports[3]!.port))
      await until("50 churn sockets", async () => (await status(3)).sockets >= 51)
      log(`${mode}: churn, ${churnOps} joins/leaves on server 3`)
      churn = {
        ...(await workers[3]!.call<Record<string, number>>("churn", {
          ops: churnOps,
          roomCount: 200,
          pace: 10,
          prefix: "churn:",
        })),
        sockets: 50,
        roomCount: 200,
        opsPerTurn: 10,
      }
    }
    return { mode, count, rate, members, ms: round(busy.ms), lost, servers, churn }
  } finally {
    for (const socket of clients) socket.disconnect()
    await Promise.all(workers.map((w) => w.stop()))
    const admin = new pg.Client({ connectionString: url })
    await admin.connect()
    await admin.query(`DROP TABLE IF EXISTS "${prefix}"`).catch(() => {})
    await admin.end()
  }
}

const round = (n: number) => Math.round(n * 10) / 10

const results: Array<Awaited<ReturnType<typeof runMode>>> = []
for (const mode of modes) results.push(await runMode(mode))
const bystanders = (r: (typeof results)[number]) =>
  r.servers.filter((s) => s.role === "bystander").reduce((sum, s) => sum + s.netUsPerPacket, 0) / 2
const lines = [
  `| mode | server | CPU ms | µs/packet | net of idle µs/packet |`,
  `| --- | --- | ---: | ---: | ---: |`,
  ...results.flatMap((r) =>
    r.servers.map(
      (s, i) =>
        `| ${r.mode} | ${i} (${s.role}) | ${s.cpuMs} | ${s.usPerPacket} | ${s.netUsPerPacket} |`,
    ),
  ),
  "",
  ...results.map((r) => `${r.mode}: ${r.count} packets in ${r.ms} ms, ${r.lost} lost`),
]
const reference = results.find((r) => r.mode === "static")
const raw = (r: (typeof results)[number]) =>
  r.servers.filter((s) => s.role === "bystander").reduce((sum, s) => sum + s.usPerPacket, 0) / 2
if (reference !== undefined)
  for (const r of results)
    if (r !== reference)
      lines.push(
        `bystanders' CPU per packet, ${r.mode} / static: ${(raw(r) / raw(reference)).toFixed(3)} (net of idle: ${(bystanders(r) / bystanders(reference)).toFixed(3)})`,
      )
for (const r of results)
  if (r.churn !== null) {
    const c = r.churn as {
      joins: number
      leaves: number
      listen: number
      unlisten: number
      created: number
      deleted: number
    }
    lines.push(
      `${r.mode} churn: ${c.joins} joins + ${c.leaves} leaves, ${c.created} rooms created and ${c.deleted} deleted on the server: ${c.listen} LISTEN + ${c.unlisten} UNLISTEN = ${((c.listen + c.unlisten) / (c.joins + c.leaves)).toFixed(3)} statements per join/leave, ${((c.listen + c.unlisten) / (c.created + c.deleted)).toFixed(2)} per room created or deleted`,
    )
  }
const text = lines.join("\n")
process.stdout.write(`${text}\n`)
await mkdir(out, { recursive: true })
await writeFile(
  path.join(out, "latest.json"),
  JSON.stringify({ date: new Date().toISOString(), results }, null, 2),
)
await writeFile(path.join(out, "latest.txt"), `${text}\n`)
