/**
 * Request/response over the `child_process.fork` IPC channel: the orchestrator calls named commands
 * of its workers (`node.ts`, `clients.ts`) and awaits their results.
 */
import { fork, type ChildProcess } from "node:child_process"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

/** A command sent to a worker. */
interface Request {
  readonly id: number
  readonly cmd: string
  readonly args: unknown
}

/** A worker's answer to a {@link Request}, or its start-up signal. */
type Reply =
  | { readonly ready: true }
  | { readonly id: number; readonly ok: true; readonly result: unknown }
  | { readonly id: number; readonly ok: false; readonly error: string }

/** The commands a worker serves: each takes plain JSON arguments and returns plain JSON. */
export type Handlers = Record<string, (args: any) => unknown>

const here = path.dirname(fileURLToPath(import.meta.url))

/** Lines of output kept per worker, to explain a failure. */
const KEPT_LINES = 200

/** Options of {@link Worker.start}. */
export interface WorkerOptions {
  /** Extra node flags, e.g. `--cpu-prof`. */
  readonly execArgv?: ReadonlyArray<string>
  /** Print the worker's output as it comes (else it is kept and shown only on failure). */
  readonly verbose?: boolean
}

/** A forked worker script of this directory, driven through {@link Worker.call}. */
export class Worker {
  readonly #child: ChildProcess
  readonly #pending = new Map<
    number,
    { resolve: (value: any) => void; reject: (error: Error) => void; cmd: string }
  >()
  readonly #output: Array<string> = []
  #nextId = 1
  #exited: Promise<void>
  #gone = false

  private constructor(
    readonly name: string,
    child: ChildProcess,
    verbose: boolean,
  ) {
    this.#child = child
    const keep = (chunk: Buffer) => {
      for (const line of chunk.toString("utf8").split("\n")) {
        if (line === "") continue
        if (verbose) process.stderr.write(`[${name}] ${line}\n`)
        this.#output.push(line)
        if (this.#output.length > KEPT_LINES) this.#output.shift()
      }
    }
    child.stdout?.on("data", keep)
    child.stderr?.on("data", keep)
    child.on("message", (reply: Reply) => {
      if ("ready" in reply) return
      const pending = this.#pending.get(reply.id)
      if (pending === undefined) return
      this.#pending.delete(reply.id)
      if (reply.ok) pending.resolve(reply.result)
      else pending.reject(new Error(`${name}.${pending.cmd}: ${reply.error}`))
    })
    this.#exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        this.#gone = true
        for (const [, pending] of this.#pending) {
          pending.reject(
            new Error(
              `${name} exited (${signal ?? code}) during ${pending.cmd}\n${this.recentOutput()}`,
            ),
          )
        }
        this.#pending.clear()
        resolve()
      })
    })
  }

  /**
   * Forks `script` (a file of this directory, or an absolute path) with tsx and waits until it
   * serves commands.
   */
  static start(
    script: string,
    name: string,
    options: WorkerOptions = {},
    timeoutMs = 60_000,
  ): Promise<Worker> {
    const child = fork(path.resolve(here, script), [name], {
      cwd: path.dirname(here),
      execArgv: ["--import", "tsx", "--expose-gc", ...(options.execArgv ?? [])],
      silent: true,
      env: { ...process.env, FORCE_COLOR: "0" },
    })
    const worker = new Worker(name, child, options.verbose === true)
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill("SIGKILL")
        reject(new Error(`${name} did not start within ${timeoutMs} ms\n${worker.recentOutput()}`))
      }, timeoutMs)
      child.on("message", (reply: Reply) => {
        if ("ready" in reply) {
          clearTimeout(timer)
          resolve(worker)
        }
      })
      child.once("exit", (code) => {
        clearTimeout(timer)
        reject(new Error(`${name} exited with ${code} on start\n${worker.recentOutput()}`))
      })
    })
  }

  /** Runs a command of the worker; rejects with its error, or after `timeoutMs`. */
  call<T = unknown>(cmd: string, args: unknown = {}, timeoutMs = 120_000): Promise<T> {
    if (this.#gone) return Promise.reject(new Error(`${this.name} is not running (${cmd})`))
    const id = this.#nextId++
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id)
        reject(new Error(`${this.name}.${cmd} did not answer within ${timeoutMs} ms`))
      }, timeoutMs)
      this.#pending.set(id, {
        cmd,
        resolve: (value) => {
          clearTimeout(timer)
          resolve(value)
        },
        reject: (error) => {
          clearTimeout(timer)
          reject(error)
        },
      })
      const request: Request = { id, cmd, args }
      this.#child.send(request, (error) => {
        if (error == null) return
        this.#pending.delete(id)
        clearTimeout(timer)
        reject(error)
      })
    })
  }

  /** The worker's last lines of output. */
  recentOutput(): string {
    return this.#output.map((line) => `  [${this.name}] ${line}`).join("\n")
  }

  /** The worker's process id (undefined if it could not be spawned). */
  get pid(): number | undefined {
    return this.#child.pid
  }

  /** Whether the worker's process is gone. */
  get exited(): boolean {
    return this.#gone
  }

  /** Sends `signal` to the worker (e.g. SIGKILL: a crash) and waits until it is gone. */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    if (!this.#gone) this.#child.kill(signal)
    await this.#exited
  }

  /** Asks the worker to exit; kills it if it has not within `timeoutMs`. Never rejects. */
  async stop(timeoutMs = 10_000): Promise<void> {
    if (this.#gone) return
    this.call("exit", {}, timeoutMs).catch(() => {})
    const timer = setTimeout(() => this.#child.kill("SIGKILL"), timeoutMs)
    await this.#exited
    clearTimeout(timer)
  }
}

/**
 * The worker side: serves `handlers` on the IPC channel (plus `exit`), and exits when the
 * orchestrator goes away.
 */
export const serve = (handlers: Handlers): void => {
  const send = (reply: Reply) => {
    if (process.connected) process.send!(reply)
  }
  process.on("message", async (request: Request) => {
    if (request.cmd === "exit") {
      send({ id: request.id, ok: true, result: null })
      await handlers["close"]?.({})
      process.disconnect()
      // Leftover sockets or timers of a library must not keep a finished worker alive.
      setTimeout(() => process.exit(0), 200).unref()
      return
    }
    const handler = handlers[request.cmd]
    if (handler === undefined) {
      send({ id: request.id, ok: false, error: `unknown command ${request.cmd}` })
      return
    }
    try {
      send({ id: request.id, ok: true, result: (await handler(request.args)) ?? null })
    } catch (error) {
      send({
        id: request.id,
        ok: false,
        error: error instanceof Error ? (error.stack ?? error.message) : String(error),
      })
    }
  })
  process.on("disconnect", () => setTimeout(() => process.exit(0), 500).unref())
  send({ ready: true })
}
