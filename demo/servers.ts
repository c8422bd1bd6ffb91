/**
 * The browser demo's three Socket.IO servers, each a child process running `demo/server.ts`: started,
 * crashed (`SIGKILL`) and started again on the same port, their LISTEN backend terminated, their
 * live status kept for the page.
 */
import { type ChildProcess, fork } from "node:child_process"
import { fileURLToPath } from "node:url"
import type pg from "pg"
import type { ServerCommand, ServerReport, ServerSettings, ServerStatus } from "./server.js"

/** What the page shows of one server. */
export interface ServerView {
  readonly number: number
  readonly state: "starting" | "running" | "stopped"
  /** Its port, once it listened the first time. */
  readonly port: number | undefined
  /** The last status it reported while running. */
  readonly status: ServerStatus | undefined
}

/** Settings shared by the three servers. */
export interface ServersOptions {
  readonly databaseUrl: string
  readonly channelPrefix: string
  readonly tableName: string
  readonly recoveryTablePrefix: string
  /** A pool of the demo's own, for `pg_terminate_backend`. */
  readonly admin: pg.Pool
  /** A line for the page's event log. */
  readonly log: (text: string) => void
}

const SERVER_COUNT = 3
const START_TIMEOUT_MS = 20_000
const STOP_TIMEOUT_MS = 8_000
// Short enough to watch on the page: a crashed server is dropped by the others within 8 s, and a
// 5-s freeze makes the LISTEN connection miss its liveness ping (2 s, 4 s) and get replaced.
const HEARTBEAT_INTERVAL = 2_000
const HEARTBEAT_TIMEOUT = 8_000

const script = fileURLToPath(new URL("./server.ts", import.meta.url))

class ServerProcess {
  state: ServerView["state"] = "stopped"
  port: number | undefined
  status: ServerStatus | undefined
  child: ChildProcess | undefined
  /** Whether this process listened already (so the next time is "again"). */
  #listened = false

  constructor(
    readonly number: number,
    readonly options: ServersOptions,
  ) {}

  /** Starts the process (on its first port again, if it had one); resolves once it listens. */
  start(): Promise<void> {
    if (this.child !== undefined) return Promise.resolve()
    const { admin: _, log: __, ...shared } = this.options
    const settings: ServerSettings = {
      ...shared,
      number: this.number,
      port: this.port ?? 0,
      heartbeatInterval: HEARTBEAT_INTERVAL,
      heartbeatTimeout: HEARTBEAT_TIMEOUT,
    }
    this.state = "starting"
    this.status = undefined
    this.#listened = false
    // The parent's own loader flags (tsx's, under `npm start`) so the child runs TypeScript too.
    const child = fork(script, [], {
      env: { ...process.env, DEMO_SERVER: JSON.stringify(settings) },
      execArgv: process.execArgv,
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    })
    this.child = child
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`server ${this.number} did not start within ${START_TIMEOUT_MS / 1000} s`))
        child.kill("SIGKILL")
      }, START_TIMEOUT_MS)
      child.on("message", (message: ServerReport) => {
        if (message.type === "ready") {
          clearTimeout(timer)
          this.port = message.port
          this.state = "running"
          resolve()
        } else if (message.type === "status") {
          if (this.child === child) this.#update(message.status)
        } else if (message.type === "log") {
          this.options.log(`server ${this.number}: ${message.text}`)
        }
      })
      child.once("exit", (code, signal) => {
        clearTimeout(timer)
        if (this.child === child) {
          this.child = undefined
          this.state = "stopped"
          this.status = undefined
        }
        reject(new Error(`server ${this.number} exited (${signal ?? `code ${code}`})`))
      })
    })
  }

  // A new status; what changed that a fault shows is said in the page's event log.
  #update(status: ServerStatus): void {
    const before = this.status
    this.status = status
    const name = `server ${this.number}`
    if (before !== undefined && before.members !== status.members)
      this.options.log(`${name} sees ${status.members} server(s) in the cluster`)
    if (before?.listening === true && !status.listening) this.options.log(`${name}: LISTEN down`)
    // A new backend while listening: it was down between two reports.
    if (
      status.listening &&
      (before?.listening !== true || before.backendPid !== status.backendPid)
    ) {
      const again = this.#listened ? "listening again" : "listening"
      this.options.log(`${name}: ${again}, on backend ${status.backendPid}`)
      this.#listened = true
    }
  }

  /** Kills the process at once, as a crash would: no goodbye to the cluster. */
  crash(): Promise<void> {
    const child = this.child
    if (child === undefined) return Promise.resolve()
    return new Promise((resolve) => {
      child.once("exit", () => resolve())
      child.kill("SIGKILL")
    })
  }

  /** Stops the process cleanly (the others drop it at once); killed if it takes too long. */
  stop(): Promise<void> {
    const child = this.child
    if (child === undefined) return Promise.resolve()
    return new Promise((resolve) => {
      const timer = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT_MS)
      child.once("exit", () => {
        clearTimeout(timer)
        resolve()
      })
      if (child.connected) child.send({ type: "shutdown" } satisfies ServerCommand)
      else child.kill("SIGTERM")
    })
  }

  view(): ServerView {
    return { number: this.number, state: this.state, port: this.port, status: this.status }
  }
}

/** The demo's three servers. */
export class DemoServers {
  readonly #servers: ReadonlyArray<ServerProcess>

  constructor(readonly options: ServersOptions) {
    this.#servers = Array.from(
      { length: SERVER_COUNT },
      (_, i) => new ServerProcess(i + 1, options),
    )
  }

  /** Starts the three servers; resolves once each listens. */
  async start(): Promise<void> {
    await Promise.all(this.#servers.map((server) => server.start()))
  }

  /** What the page shows. */
  views(): Array<ServerView> {
    return this.#servers.map((server) => server.view())
  }

  #server(number: unknown): ServerProcess {
    const server = this.#servers.find((s) => s.number === number)
    if (server === undefined) throw new Error(`no server ${String(number)}`)
    return server
  }

  /** Terminates the server's LISTEN backend (`pg_terminate_backend`); its Listener must recover. */
  async killListen(number: unknown): Promise<string> {
    const server = this.#server(number)
    const pid = server.status?.backendPid
    if (server.state !== "running" || pid === undefined) {
      throw new Error(`server ${server.number} has no LISTEN connection right now`)
    }
    const { rows } = await this.options.admin.query<{ done: boolean }>(
      "SELECT pg_terminate_backend($1) AS done",
      [pid],
    )
    if (rows[0]?.done !== true) throw new Error(`backend ${pid} was already gone`)
    return `server ${server.number}: LISTEN backend ${pid} terminated`
  }

  /** Crashes a server (SIGKILL). */
  async stop(number: unknown): Promise<string> {
    const server = this.#server(number)
    if (server.child === undefined) throw new Error(`server ${server.number} is not running`)
    await server.crash()
    return `server ${server.number}: killed (SIGKILL)`
  }

  /** Starts a stopped server again, on its port. */
  async restart(number: unknown): Promise<string> {
    const server = this.#server(number)
    if (server.child !== undefined) throw new Error(`server ${server.number} is running`)
    await server.start()
    return `server ${server.number}: started again on port ${server.port}`
  }

  /** Stops every server cleanly. */
  async close(): Promise<void> {
    await Promise.all(this.#servers.map((server) => server.stop()))
  }
}
