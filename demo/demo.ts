/**
 * `npm start`: three Socket.IO servers clustered through PostgreSQL by this adapter, one client on
 * each, a tour of what crosses the cluster (with timings), then the servers keep running until
 * Ctrl-C. `DEMO_EXIT=1` or `--once` stops right after the tour (a smoke test for CI).
 *
 * Environment: `DATABASE_URL` (else an embedded PostgreSQL), `PORT` (first port, default 3000),
 * `NO_COLOR`.
 */
import { createHash, randomBytes } from "node:crypto"
import * as http from "node:http"
import { performance } from "node:perf_hooks"
import pg from "pg"
import { Server } from "socket.io"
import { io as connectClient, type Socket as ClientSocket } from "socket.io-client"
import { createAdapter } from "../src/index.js"
import { type DemoDatabase, openDatabase } from "./postgres.js"

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

const firstPort = (): number => {
  const raw = process.env["PORT"] ?? "3000"
  const port = Number(raw)
  if (!Number.isInteger(port) || port < 1 || port > 65535 - (SERVER_COUNT - 1)) {
    throw new UserError(`PORT must be a port number from 1 to ${65535 - (SERVER_COUNT - 1)}`)
  }
  return port
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

/** What the demo's own clients send in their handshake, to tell them from browser tabs. */
interface Handshake {
  readonly demoClient?: number
}

const page = (port: number, ports: ReadonlyArray<number>) => `<!doctype html>
<meta charset="utf-8">
<title>socket.io-postgres-effect · :${port}</title>
<style>
  body { font: 15px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem }
  #log { list-style: none; padding: 0 } #log li { border-bottom: 1px solid #eee; padding: .2rem 0 }
  small { color: #777 } input { width: 70%; font: inherit } button { font: inherit }
</style>
<h1>Server :${port}</h1>
<p id="status">connecting…</p>
<form id="form"><input id="text" autocomplete="off" placeholder="Say something to the whole cluster">
<button>Send</button></form>
<ul id="log"></ul>
<p><small>Open another server of the demo (${ports
  .filter((other) => other !== port)
  .map((other) => `<a href="http://localhost:${other}/">:${other}</a>`)
  .join(", ")}) in a second tab: a message sent here reaches it through PostgreSQL.</small></p>
<script src="/socket.io/socket.io.js"></script>
<script>
  const socket = io()
  const $ = (id) => document.getElementById(id)
  socket.on("connect", () => ($("status").textContent = "connected to :${port} as " + socket.id))
  socket.on("disconnect", () => ($("status").textContent = "disconnected"))
  socket.on("chat", ({ text, server, from }) => {
    const li = document.createElement("li")
    li.textContent = text + "  "
    const small = document.createElement("small")
    small.textContent = "from " + from + " on :" + server
    li.append(small)
    $("log").prepend(li)
  })
  $("form").addEventListener("submit", (event) => {
    event.preventDefault()
    if ($("text").value.trim() !== "") socket.emit("chat", $("text").value)
    $("text").value = ""
  })
</script>
`

/** Starts a Socket.IO server on `port` with the adapter, serving a small chat page on `/`. */
const startNode = async (
  index: number,
  ports: ReadonlyArray<number>,
  adapter: ReturnType<typeof createAdapter>,
  serving: () => boolean,
): Promise<Node> => {
  const port = ports[index]!
  const html = page(port, ports)
  const httpServer = http.createServer((req, res) => {
    if (req.url === "/" || req.url === "/index.html") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(html)
    } else {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found\n")
    }
  })
  const io = new Server(httpServer, { adapter })
  const name = `:${port}`
  io.on("connection", (socket) => {
    const { demoClient } = socket.handshake.auth as Handshake
    socket.data.server = port
    socket.data.kind = demoClient === undefined ? "browser" : `demo client ${demoClient}`
    socket.on("join", (room: unknown, ack: unknown) => {
      if (typeof room === "string") socket.join(room)
      if (typeof ack === "function") ack()
    })
    // From the page: one message to every socket of the cluster, whichever server it is on.
    socket.on("chat", (text: unknown) => {
      if (typeof text !== "string") return
      const clipped = text.slice(0, 500)
      io.emit("chat", { text: clipped, server: port, from: socket.id })
      if (serving()) say(`${cyan(name)} ${socket.id} says ${JSON.stringify(clipped)} → everyone`)
    })
    if (serving() && demoClient === undefined) {
      say(`${cyan(name)} ${green("+")} browser ${socket.id} connected`)
      socket.on("disconnect", (reason) =>
        say(`${cyan(name)} ${dim("-")} browser ${socket.id} left ${dim(`(${reason})`)}`),
      )
    }
  })
  const listening = new Promise<void>((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException) => {
      httpServer.off("listening", onListening)
      reject(
        error.code === "EADDRINUSE"
          ? new UserError(
              `port ${port} is already in use; choose other ports, e.g. PORT=${ports[0]! + 1000} npm start`,
            )
          : error,
      )
    }
    const onListening = () => {
      httpServer.off("error", onError)
      resolve()
    }
    httpServer.once("error", onError)
    httpServer.once("listening", onListening)
    httpServer.listen(port)
  })
  try {
    await listening
  } catch (error) {
    // Its adapter already listens on PostgreSQL: close it, or it would keep the process alive.
    await io.close()
    throw error
  }
  return { index, port, name, io, http: httpServer }
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

const main = async () => {
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(signal, onSignal)
  const port = firstPort()

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
  const adapterErrors = (name: string) => (error: Error) => {
    if (shuttingDown === undefined) say(yellow(`${name} adapter: ${error.message}`))
  }
  const nodes: Array<Node> = []
  const formed = new Stopwatch()
  formed.start()
  cleanups.push({
    name: "servers",
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
  const ports = Array.from({ length: SERVER_COUNT }, (_, i) => port + i)
  for (let i = 0; i < SERVER_COUNT; i++) {
    const adapter = createAdapter(pool, {
      channelPrefix,
      errorHandler: adapterErrors(`:${ports[i]}`),
    })
    nodes.push(await startup(startNode(i, ports, adapter, () => serving)))
    if (shuttingDown) return
  }
  const clients: Array<ClientSocket> = []
  cleanups.push({
    name: "clients",
    done: "closed",
    run: async () => clients.forEach((client) => client.close()),
  })
  for (const node of nodes) clients.push(await startup(connectDemoClient(node)))
  if (shuttingDown) return

  say(`${padEnd("PostgreSQL", 11)} ${database.description}`)
  say(
    `${padEnd("Servers", 11)} ${nodes.map((n) => bold(n.name)).join("  ")}  ${dim(`one pg.Pool, channels "${channelPrefix}#/…"`)}`,
  )
  say(`${padEnd("Clients", 11)} one socket.io-client on each server (websocket)`)

  // Each adapter announces itself once it listens; the others answer with a heartbeat.
  const counts = () => Promise.all(nodes.map((node) => node.io.of("/").adapter.serverCount()))
  let seen = await counts()
  while (seen.some((count) => count < SERVER_COUNT) && formed.elapsed() < CLUSTER_TIMEOUT_MS) {
    if (shuttingDown) return
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
  if (shuttingDown) return
  say()
  say(
    failures === 0
      ? `${ok} ${bold("Every step arrived where it should.")}`
      : `${notOk} ${bold(red(`${failures} check(s) failed.`))}`,
  )

  if (ONCE)
    return shutdown(
      process.argv.includes("--once") ? "--once" : "DEMO_EXIT",
      failures === 0 ? 0 : 1,
    )

  serving = true
  say()
  say(bold("The cluster keeps running. Open two of these in a browser and chat across servers:"))
  for (const node of nodes) say(`   ${cyan(`http://localhost:${node.port}/`)}`)
  say(dim("Press Ctrl-C to stop."))
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
