/**
 * `npm start`: first a tour in the terminal — three Socket.IO servers clustered through PostgreSQL
 * by this adapter, one client on each, what crosses the cluster and how long it takes — then the
 * browser demo on http://localhost:3000: three servers in processes of their own, a client of each
 * side by side, live panels and fault buttons (see `web.ts`, `servers.ts`, `public/`), until
 * Ctrl-C. `DEMO_EXIT=1` or `--once` stops right after the tour (a smoke test for CI).
 *
 * Environment: `DATABASE_URL` (else an embedded PostgreSQL), `PORT` (the page's, default 3000),
 * `DEMO_TABLE_PREFIX` (the demo's tables, default the adapter's own names), `NO_COLOR`.
 */
import { createHash, randomBytes } from "node:crypto"
import * as http from "node:http"
import { performance } from "node:perf_hooks"
import pg from "pg"
import { Server } from "socket.io"
import { io as connectClient, type Socket as ClientSocket } from "socket.io-client"
import { createAdapter } from "../src/index.js"
import { type DemoDatabase, openDatabase } from "./postgres.js"
import { DemoServers } from "./servers.js"
import { PortInUseError, startWeb, type Web } from "./web.js"

// ─── settings ─────────────────────────────────────────────────────────────────────────────────

const SERVER_COUNT = 3
const STEP_TIMEOUT_MS = 5_000
const CLUSTER_TIMEOUT_MS = 15_000
const SHUTDOWN_TIMEOUT_MS = 15_000
// How long a step keeps listening after the expected arrivals, to show that nothing else arrives.
const QUIET_MS = 150

/** A failure worth one plain line, without a stack trace. */
class UserError extends Error {}

const truthy = (value: string | undefined) =>
  value !== undefined && !["", "0", "false", "no"].includes(value.toLowerCase())
const ONCE = truthy(process.env["DEMO_EXIT"]) || process.argv.includes("--once")

const pagePort = (): number => {
  const raw = process.env["PORT"] ?? "3000"
  const port = Number(raw)
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new UserError("PORT must be a port number from 1 to 65535")
  }
  return port
}

/** The demo's table names: the adapter's defaults, or `DEMO_TABLE_PREFIX`'s (tests isolate so). */
const tableNames = (): { readonly tableName?: string; readonly recoveryTablePrefix?: string } => {
  const prefix = process.env["DEMO_TABLE_PREFIX"]
  if (prefix === undefined || prefix === "") return {}
  if (!/^[a-z_][a-z0-9_]{0,39}$/.test(prefix)) {
    throw new UserError("DEMO_TABLE_PREFIX must be a lowercase SQL name of at most 40 characters")
  }
  return { tableName: `${prefix}_attachments`, recoveryTablePrefix: `${prefix}_recovery` }
}

// ─── output ───────────────────────────────────────────────────────────────────────────────────

const useColor =
  process.env["NO_COLOR"] === undefined &&
  (truthy(process.env["FORCE_COLOR"]) || process.stdout.isTTY === true)
const style =
  (open: number, close: number) =>
  (text: string): string =>
    useColor ? `\x1b[${open}m${text}\x1b[${close}m` : text
const bold = style(1, 22)
const dim = style(2, 22)
const red = style(31, 39)
const green = style(32, 39)
const yellow = style(33, 39)
const cyan = style(36, 39)

const visibleLength = (text: string) => text.replace(/\x1b\[[0-9;]*m/g, "").length
const padEnd = (text: string, width: number) =>
  text + " ".repeat(Math.max(0, width - visibleLength(text)))
const padStart = (text: string, width: number) =>
  " ".repeat(Math.max(0, width - visibleLength(text))) + text

const say = (line = "") => process.stdout.write(line + "\n")
const ms = (millis: number) => `${millis.toFixed(1)} ms`
const kb = (bytes: number) => `${(bytes / 1024).toFixed(1)} KiB`
const ok = green("✓")
const notOk = red("✗")

/** Columns whose header starts with `>` are right-aligned. */
const table = (headers: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>) => {
  const right = headers.map((h) => h.startsWith(">"))
  const titles = headers.map((h) => h.replace(/^>/, ""))
  const widths = titles.map((title, i) =>
    Math.max(visibleLength(title), ...rows.map((row) => visibleLength(row[i] ?? ""))),
  )
  const line = (cells: ReadonlyArray<string>) =>
    "   " +
    cells
      .map((cell, i) => (right[i] ? padStart(cell, widths[i]!) : padEnd(cell, widths[i]!)))
      .join("   ")
      .trimEnd()
  say(dim(line(titles)))
  for (const row of rows) say(line(row))
}

const heading = (number: number, title: string, detail: string) => {
  say()
  say(`${bold(cyan(`${number}.`))} ${bold(title)}`)
  say(`   ${dim(detail)}`)
}

// ─── the cluster ──────────────────────────────────────────────────────────────────────────────

interface Node {
  readonly index: number
  readonly port: number
  /** `:3000`, how the output names a server. */
  readonly name: string
  readonly io: Server
  readonly http: http.Server
}

/** What the demo's own clients send in their handshake. */
interface Handshake {
  readonly demoClient?: number
}

/** Starts a Socket.IO server with the adapter on a free port of 127.0.0.1. */
const startNode = async (
  index: number,
  adapter: ReturnType<typeof createAdapter>,
): Promise<Node> => {
  const httpServer = http.createServer((_req, res) => {
    res.writeHead(404, { "content-type": "text/plain" }).end("not found\n")
  })
  const io = new Server(httpServer, { adapter })
  let port = 0
  io.on("connection", (socket) => {
    const { demoClient } = socket.handshake.auth as Handshake
    socket.data.server = port
    socket.data.kind = demoClient === undefined ? "other" : `demo client ${demoClient}`
    socket.on("join", (room: unknown, ack: unknown) => {
      if (typeof room === "string") socket.join(room)
      if (typeof ack === "function") ack()
    })
  })
  try {
    await new Promise<void>((resolve, reject) => {
      httpServer.once("error", reject)
      httpServer.listen(0, "127.0.0.1", () => resolve())
    })
  } catch (error) {
    // Its adapter already listens on PostgreSQL: close it, or it would keep the process alive.
    await io.close()
    throw error
  }
  const address = httpServer.address()
  port = typeof address === "object" && address !== null ? address.port : 0
  return { index, port, name: `:${port}`, io, http: httpServer }
}

const connectDemoClient = (node: Node): Promise<ClientSocket> =>
  new Promise((resolve, reject) => {
    const client = connectClient(`http://127.0.0.1:${node.port}`, {
      transports: ["websocket"],
      reconnection: false,
      auth: { demoClient: node.index } satisfies Handshake,
    })
    const timer = setTimeout(() => {
      client.close()
      reject(new Error(`client of ${node.name} could not connect`))
    }, STEP_TIMEOUT_MS)
    client.once("connect", () => {
      clearTimeout(timer)
      resolve(client)
    })
    client.once("connect_error", (error) => {
      clearTimeout(timer)
      client.close()
      reject(error)
    })
  })

// ─── measuring ────────────────────────────────────────────────────────────────────────────────

/** Arrival times of one step, in ms since `start()`, keyed by receiver. */
class Stopwatch {
  #t0 = 0
  readonly #arrivals = new Map<string, { readonly ms: number; readonly note: string }>()
  #waiting: { keys: ReadonlyArray<string>; done: () => void } | undefined

  start(): void {
    this.#t0 = performance.now()
  }

  elapsed(): number {
    return performance.now() - this.#t0
  }

  /** Records the first arrival at `key`. */
  arrived(key: string, note = ""): void {
    if (this.#arrivals.has(key)) return
    this.#arrivals.set(key, { ms: this.elapsed(), note })
    if (this.#waiting?.keys.every((k) => this.#arrivals.has(k))) this.#waiting.done()
  }

  get(key: string) {
    return this.#arrivals.get(key)
  }

  /** Waits until every key arrived or `timeout` passed (missing ones then show as missing). */
  until(keys: ReadonlyArray<string>, timeout = STEP_TIMEOUT_MS): Promise<void> {
    if (keys.every((k) => this.#arrivals.has(k))) return Promise.resolve()
    return new Promise((resolve) => {
      const timer = setTimeout(finish, timeout)
      function finish() {
        clearTimeout(timer)
        resolve()
      }
      this.#waiting = { keys, done: finish }
    })
  }
}

const sleep = (millis: number) => new Promise((resolve) => setTimeout(resolve, millis))

const sha1 = (data: string | Uint8Array) => createHash("sha1").update(data).digest("hex")

// ─── the tour ─────────────────────────────────────────────────────────────────────────────────

interface Delivery {
  readonly title: string
  readonly detail: string
  readonly from: Node
  readonly event: string
  /** Sends the event; called right after the stopwatch started. */
  readonly emit: () => void
  /** Indexes of the clients that must receive it; the others must not. */
  readonly receivers: ReadonlyArray<number>
  /** Checks what a client received; returns a short note, or throws what is wrong. */
  readonly check: (args: ReadonlyArray<unknown>) => string
  /** What a client that must not receive it shows. */
  readonly absentNote?: string
}

class Tour {
  failures = 0
  #step = 0

  constructor(
    readonly nodes: ReadonlyArray<Node>,
    readonly clients: ReadonlyArray<ClientSocket>,
  ) {}

  #next(title: string, detail: string) {
    heading(++this.#step, title, detail)
  }

  #fail(): string {
    this.failures++
    return notOk
  }

  /** One event emitted by a server, timed at every demo client. */
  async delivery(step: Delivery): Promise<void> {
    this.#next(step.title, step.detail)
    const watch = new Stopwatch()
    const problems = new Map<number, string>()
    const listeners = this.clients.map((client, i) => {
      const listener = (...args: Array<unknown>) => {
        let note: string
        try {
          note = step.check(args)
        } catch (error) {
          note = (error as Error).message
          problems.set(i, note)
        }
        watch.arrived(`client${i}`, note)
      }
      client.on(step.event, listener)
      return listener
    })
    watch.start()
    step.emit()
    await watch.until(step.receivers.map((i) => `client${i}`))
    if (step.receivers.length < this.clients.length) await sleep(QUIET_MS)
    this.clients.forEach((client, i) => client.off(step.event, listeners[i]))

    const rows = this.nodes.map((node, i) => {
      const arrival = watch.get(`client${i}`)
      const expected = step.receivers.includes(i)
      const path = node === step.from ? "same server" : "via PostgreSQL"
      const receiver = `client on ${node.name}`
      if (!expected) {
        return arrival === undefined
          ? [
              dim(receiver),
              dim(step.absentNote ?? "not addressed"),
              dim("—"),
              `${ok} ${dim("nothing, as expected")}`,
            ]
          : [receiver, path, ms(arrival.ms), `${this.#fail()} received it, but should not have`]
      }
      if (arrival === undefined) {
        return [
          receiver,
          path,
          red("—"),
          `${this.#fail()} nothing within ${STEP_TIMEOUT_MS / 1000} s`,
        ]
      }
      const mark = problems.has(i) ? this.#fail() : ok
      return [receiver, path, ms(arrival.ms), `${mark} ${arrival.note}`]
    })
    table(["receiver", "path", ">time", "received"], rows)
  }

  /** `fetchSockets()` from one server: every socket of the cluster, with where it lives. */
  async fetchSockets(from: Node): Promise<void> {
    this.#next(
      `fetchSockets() from ${from.name}`,
      "asks every server for its sockets over PostgreSQL and waits for all the answers",
    )
    const watch = new Stopwatch()
    watch.start()
    let sockets: Awaited<ReturnType<Server["fetchSockets"]>>
    try {
      sockets = await from.io.fetchSockets()
    } catch (error) {
      say(`   ${this.#fail()} failed after ${ms(watch.elapsed())}: ${(error as Error).message}`)
      return
    }
    const took = watch.elapsed()
    const rows = [...sockets]
      .sort((a, b) => a.data.server - b.data.server || a.id.localeCompare(b.id))
      .map((socket) => {
        const rooms = [...socket.rooms].filter((room) => room !== socket.id)
        return [
          socket.id,
          `:${socket.data.server}`,
          socket.data.server === from.port ? "local" : "remote",
          socket.data.kind,
          rooms.length === 0 ? dim("—") : rooms.join(", "),
        ]
      })
    table(["socket", "server", "where", "who", "rooms"], rows)
    const found = new Set(sockets.filter((s) => s.data.kind?.startsWith("demo")).map((s) => s.id))
    const missing = this.clients.filter((client) => !found.has(client.id ?? ""))
    say(
      missing.length === 0
        ? `   ${ok} ${sockets.length} sockets from ${new Set(sockets.map((s) => s.data.server)).size} servers in ${bold(ms(took))}`
        : `   ${this.#fail()} ${missing.length} demo client(s) missing after ${ms(took)}`,
    )
  }

  /** `serverSideEmitWithAck` from one server: each other server answers. */
  async serverSideEmitWithAck(from: Node): Promise<void> {
    this.#next(
      `serverSideEmitWithAck("ping") from ${from.name}`,
      "a message to the other servers (not to clients); resolves once each of them acknowledged",
    )
    const others = this.nodes.filter((node) => node !== from)
    const watch = new Stopwatch()
    const handlers = others.map((node) => {
      const handler = (payload: { from: number }, ack: (reply: unknown) => void) => {
        watch.arrived(node.name, `from :${payload.from}`)
        ack({ pong: node.port })
      }
      node.io.on("ping", handler)
      return handler
    })
    watch.start()
    let replies: Array<{ pong: number }> = []
    let failure: string | undefined
    try {
      replies = await from.io.serverSideEmitWithAck("ping", { from: from.port })
    } catch (error) {
      failure = (error as Error).message
    }
    const took = watch.elapsed()
    others.forEach((node, i) => node.io.off("ping", handlers[i]))
    const rows = others.map((node) => {
      const arrival = watch.get(node.name)
      const replied = replies.some((reply) => reply?.pong === node.port)
      return [
        `server ${node.name}`,
        arrival === undefined ? red("—") : ms(arrival.ms),
        replied ? `${ok} ${JSON.stringify({ pong: node.port })}` : `${this.#fail()} no answer`,
      ]
    })
    table(["handler", ">request arrived", "acknowledged with"], rows)
    say(
      failure === undefined
        ? `   ${ok} ${replies.length} acknowledgements back at ${from.name} after ${bold(ms(took))}`
        : `   ${this.#fail()} ${failure} (after ${ms(took)})`,
    )
  }
}

const runTour = async (nodes: ReadonlyArray<Node>, clients: ReadonlyArray<ClientSocket>) => {
  const tour = new Tour(nodes, clients)
  const [a, b, c] = nodes as [Node, Node, Node]

  const sentAt = new Date().toISOString()
  await tour.delivery({
    title: `Broadcast from ${a.name}`,
    detail: `io.emit("news", …): local clients directly, the other servers through one NOTIFY`,
    from: a,
    event: "news",
    emit: () => a.io.emit("news", { headline: "hello, cluster", sentAt }),
    receivers: [0, 1, 2],
    check: ([news]) => {
      if ((news as { sentAt?: string })?.sentAt !== sentAt) throw new Error("unexpected payload")
      return JSON.stringify((news as { headline: string }).headline)
    },
  })

  const room = "lobby"
  await Promise.all(
    [clients[0]!, clients[2]!].map((client) =>
      client.timeout(STEP_TIMEOUT_MS).emitWithAck("join", room),
    ),
  )
  await tour.delivery({
    title: `Room "${room}" from ${b.name}`,
    detail: `the clients of ${a.name} and ${c.name} joined "${room}"; ${b.name} has no member in it`,
    from: b,
    event: "room",
    emit: () => b.io.to(room).emit("room", { room, text: `hello, ${room}` }),
    receivers: [0, 2],
    absentNote: `not in "${room}"`,
    check: ([message]) => {
      if ((message as { room?: string })?.room !== room) throw new Error("unexpected payload")
      return JSON.stringify((message as { text: string }).text)
    },
  })

  // Varied text, so compression or deduplication would not flatter the numbers.
  const large = { rows: [] as Array<{ id: number; text: string; at: number }> }
  for (let size = 0; size < 50 * 1024;) {
    const row = { id: large.rows.length, text: randomBytes(48).toString("base64"), at: Date.now() }
    large.rows.push(row)
    size += JSON.stringify(row).length + 1
  }
  const largeBytes = Buffer.byteLength(JSON.stringify(large))
  const largeHash = sha1(JSON.stringify(large))
  await tour.delivery({
    title: `Large payload (${kb(largeBytes)}) from ${c.name}`,
    detail:
      "above PostgreSQL's 8000-byte NOTIFY limit: stored in the attachments table, NOTIFY carries its id",
    from: c,
    event: "large",
    emit: () => c.io.emit("large", large),
    receivers: [0, 1, 2],
    check: ([received]) => {
      const text = JSON.stringify(received)
      if (sha1(text) !== largeHash) throw new Error("payload differs")
      return `${kb(Buffer.byteLength(text))}, identical`
    },
  })

  const binary = randomBytes(4096)
  const binaryHash = sha1(binary)
  await tour.delivery({
    title: `Binary payload (Buffer, ${kb(binary.length)}) from ${a.name}`,
    detail: "binary is msgpack-encoded into the attachments table; clients get the exact bytes",
    from: a,
    event: "binary",
    emit: () => a.io.emit("binary", { name: "random.bin", bytes: binary }),
    receivers: [0, 1, 2],
    check: ([received]) => {
      const bytes = (received as { bytes?: unknown })?.bytes
      if (!(bytes instanceof Uint8Array) && !(bytes instanceof ArrayBuffer)) {
        throw new Error(`not binary: ${typeof bytes}`)
      }
      const view = bytes instanceof ArrayBuffer ? new Uint8Array(bytes) : bytes
      if (sha1(view) !== binaryHash) throw new Error("bytes differ")
      return `${kb(view.byteLength)}, identical bytes`
    },
  })

  await tour.fetchSockets(b)
  await tour.serverSideEmitWithAck(c)
  return tour.failures
}

// ─── life cycle ───────────────────────────────────────────────────────────────────────────────

/** What has been started, stopped in reverse order on the way out. */
const cleanups: Array<{
  readonly name: string
  readonly done: string
  readonly run: () => Promise<unknown>
}> = []
let shuttingDown: Promise<void> | undefined
let serving = false
let firstSignalAt = 0
let starting: Promise<unknown> | undefined

/** A startup step that a shutdown waits for, so that whatever it starts gets stopped too. */
const startup = <A>(promise: Promise<A>): Promise<A> => {
  starting = promise
  return promise
}

/**
 * Holds back the adapters' own log lines (Effect's logger, `timestamp=… level=WARN …`) until the
 * returned function is called; it returns how many it held back.
 */
const muteAdapterLogs = (): (() => number) => {
  const original = console.log
  let muted = 0
  console.log = (...args: Array<unknown>) => {
    if (typeof args[0] === "string" && /^timestamp=\S+ level=/.test(args[0])) muted++
    else original(...args)
  }
  return () => {
    console.log = original
    return muted
  }
}

const shutdown = (reason: string, exitCode: number, delayMs = 0): Promise<void> =>
  (shuttingDown ??= (async () => {
    serving = false
    say()
    say(bold(`Shutting down (${reason})…`))
    // A Ctrl-C in a terminal reaches the embedded PostgreSQL too, which then drops every
    // connection while the adapters close: their warnings about it say nothing new here.
    const unmute = muteAdapterLogs()
    if (delayMs > 0) await sleep(delayMs)
    const force = setTimeout(() => {
      say(red(`   shutdown took longer than ${SHUTDOWN_TIMEOUT_MS / 1000} s, exiting anyway`))
      process.exit(1)
    }, SHUTDOWN_TIMEOUT_MS)
    force.unref()
    let failed = false
    await starting?.then(
      () => {},
      () => {},
    )
    for (let cleanup = cleanups.pop(); cleanup !== undefined; cleanup = cleanups.pop()) {
      const started = performance.now()
      try {
        await cleanup.run()
        const took = padStart(ms(performance.now() - started), 9)
        say(`   ${ok} ${padEnd(`${cleanup.name} ${cleanup.done}`, 20)} ${dim(took)}`)
      } catch (error) {
        failed = true
        say(`   ${notOk} ${cleanup.name}: ${(error as Error).message}`)
      }
    }
    clearTimeout(force)
    const muted = unmute()
    if (muted > 0) {
      say(
        dim(
          `   (PostgreSQL got the signal too and went first: ${muted} adapter warning(s) about it hidden)`,
        ),
      )
    }
    process.exitCode = failed ? 1 : exitCode
    say(failed ? red("Stopped, with errors.") : exitCode === 0 ? "Bye." : "Stopped.")
    // Everything is closed, so the process ends by itself; if not, something leaked: say so.
    setTimeout(() => {
      say(red("Something still holds the event loop after the shutdown; exiting anyway."))
      process.exit(1)
    }, 3_000).unref()
  })())

const onSignal = (signal: NodeJS.Signals) => {
  if (shuttingDown !== undefined) {
    // npm and tsx pass one Ctrl-C on to us again: only a later one means "stop now".
    if (performance.now() - firstSignalAt < 1_500) return
    say(yellow(`${signal} again: exiting without cleaning up`))
    process.exit(130)
  }
  firstSignalAt = performance.now()
  // tsx (under `npm start`) resends a signal its child has not acknowledged within 30 ms, then
  // SIGKILLs the child 30 ms later: leave the event loop free for the acknowledgement first.
  void shutdown(signal, 0, 100)
}

/** Removes a cleanup from the stack and runs it now (a step that is over). */
const cleanUpNow = async (name: string) => {
  const index = cleanups.findIndex((cleanup) => cleanup.name === name)
  if (index < 0) return
  const [cleanup] = cleanups.splice(index, 1)
  await cleanup!.run()
}

/**
 * The terminal tour on three servers in this process, on free ports of 127.0.0.1; they are closed
 * at its end. Returns the number of failed checks, or undefined if interrupted.
 */
const tour = async (
  pool: pg.Pool,
  channelPrefix: string,
  tables: ReturnType<typeof tableNames>,
): Promise<number | undefined> => {
  const adapterErrors = (index: number) => (error: Error) => {
    if (shuttingDown === undefined) say(yellow(`tour server ${index + 1}: ${error.message}`))
  }
  const nodes: Array<Node> = []
  const formed = new Stopwatch()
  formed.start()
  cleanups.push({
    name: "tour servers",
    done: "closed",
    // `io.close()` closes the adapters (each announces it is leaving) and the HTTP servers.
    run: () =>
      Promise.all(
        nodes.map((node) => {
          const closing = node.io.close()
          node.http.closeAllConnections()
          return closing
        }),
      ),
  })
  for (let i = 0; i < SERVER_COUNT; i++) {
    const adapter = createAdapter(pool, {
      channelPrefix,
      ...tables,
      errorHandler: adapterErrors(i),
    })
    nodes.push(await startup(startNode(i, adapter)))
    if (shuttingDown) return undefined
  }
  const clients: Array<ClientSocket> = []
  cleanups.push({
    name: "tour clients",
    done: "closed",
    run: async () => clients.forEach((client) => client.close()),
  })
  for (const node of nodes) clients.push(await startup(connectDemoClient(node)))
  if (shuttingDown) return undefined

  say(
    `${padEnd("Servers", 11)} ${nodes.map((n) => bold(n.name)).join("  ")}  ${dim(`one pg.Pool, channels "${channelPrefix}#/…"`)}`,
  )
  say(`${padEnd("Clients", 11)} one socket.io-client on each server (websocket)`)

  // Each adapter announces itself once it listens; the others answer with a heartbeat.
  const counts = () => Promise.all(nodes.map((node) => node.io.of("/").adapter.serverCount()))
  let seen = await counts()
  while (seen.some((count) => count < SERVER_COUNT) && formed.elapsed() < CLUSTER_TIMEOUT_MS) {
    if (shuttingDown) return undefined
    await sleep(20)
    seen = await counts()
  }
  if (seen.some((count) => count < SERVER_COUNT)) {
    throw new UserError(
      `the cluster did not form within ${CLUSTER_TIMEOUT_MS / 1000} s (server counts: ${seen.join(", ")})`,
    )
  }
  say(
    `${padEnd("Cluster", 11)} ${ok} every server sees ${SERVER_COUNT} servers ${dim(`(${ms(formed.elapsed())} after the first one started)`)}`,
  )
  say(
    dim(
      `\nTimes are from the emit on the server to the arrival at the receiver, all in this process.`,
    ),
  )

  const failures = await runTour(nodes, clients)
  if (shuttingDown) return undefined
  say()
  say(
    failures === 0
      ? `${ok} ${bold("Every step arrived where it should.")}`
      : `${notOk} ${bold(red(`${failures} check(s) failed.`))}`,
  )
  await cleanUpNow("tour clients")
  await cleanUpNow("tour servers")
  return failures
}

const main = async () => {
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(signal, onSignal)
  const port = ONCE ? 0 : pagePort()
  const tables = tableNames()

  say()
  say(bold("socket.io-postgres-effect · demo"))
  say(dim("three Socket.IO servers, one PostgreSQL, no other broker"))
  say()

  const database: DemoDatabase = await startup(openDatabase((line) => say(dim(line))))
  if (database.embedded) cleanups.push({ name: "PostgreSQL", done: "stopped", run: database.stop })
  if (shuttingDown) return

  const pool = new pg.Pool({ connectionString: database.url, max: 10 })
  // An idle connection that breaks (server restarted or stopped) must not crash the demo.
  pool.on("error", () => {})
  cleanups.push({ name: "pool", done: "ended", run: () => pool.end() })
  try {
    await pool.query("SELECT 1")
  } catch (error) {
    throw new UserError(`cannot reach PostgreSQL: ${(error as Error).message}`)
  }

  // A fresh channel prefix per run, so two demos (or test runs) on one database stay apart.
  const channelPrefix = `demo_${randomBytes(3).toString("hex")}`

  // The page's port first: a busy one is said before anything else runs.
  let web: Web | undefined
  let servers: DemoServers | undefined
  if (!ONCE) {
    servers = new DemoServers({
      databaseUrl: database.url,
      channelPrefix,
      tableName: tables.tableName ?? "socket_io_attachments",
      recoveryTablePrefix: tables.recoveryTablePrefix ?? "socket_io_recovery",
      admin: pool,
      log: (text) => {
        web?.log(text)
        if (serving) say(`${dim("·")} ${text}`)
      },
    })
    const freezeReason = database.embedded
      ? "SIGSTOP to the embedded PostgreSQL's processes, SIGCONT 5 s later"
      : "only possible with the demo's own embedded PostgreSQL: DATABASE_URL is set, and that server is not the demo's to freeze"
    try {
      web = await startup(
        startWeb({
          port,
          servers,
          freeze: database.freeze,
          setup: {
            database: database.description,
            channelPrefix,
            freeze: { available: database.freeze !== undefined, reason: freezeReason },
          },
        }),
      )
    } catch (error) {
      if (error instanceof PortInUseError) throw new UserError(error.message)
      throw error
    }
    const started = web
    cleanups.push({ name: "page", done: "closed", run: () => started.close() })
  }

  say(`${padEnd("PostgreSQL", 11)} ${database.description}`)
  const failures = await tour(pool, channelPrefix, tables)
  if (failures === undefined || shuttingDown) return

  if (ONCE)
    return shutdown(
      process.argv.includes("--once") ? "--once" : "DEMO_EXIT",
      failures === 0 ? 0 : 1,
    )

  say()
  say(bold("The browser demo: three servers in processes of their own…"))
  const running = servers!
  cleanups.push({ name: "demo servers", done: "stopped", run: () => running.close() })
  await startup(running.start())
  if (shuttingDown) return
  serving = true
  const ports = running.views().map((view) => `:${view.port}`)
  say(`   ${ok} servers 1, 2, 3 on ${ports.join(", ")} ${dim(`(channels "${channelPrefix}#/…")`)}`)
  say()
  say(`${bold("Open")} ${cyan(web!.url)} ${bold("in a browser")}`)
  say(
    dim(
      "a client of each server side by side: chat, rooms, live panels, and buttons that kill a LISTEN\n" +
        "connection, freeze PostgreSQL or stop a server. Press Ctrl-C to stop.",
    ),
  )
  say()
}

main().catch(async (error: unknown) => {
  if (shuttingDown !== undefined) return // a step interrupted by Ctrl-C: nothing to report
  say()
  say(
    error instanceof UserError
      ? `${notOk} ${error.message}`
      : `${notOk} ${(error as Error)?.stack ?? String(error)}`,
  )
  await shutdown("after an error", 1)
  process.exitCode = 1
})
