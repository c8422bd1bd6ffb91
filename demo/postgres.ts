/**
 * The demo's PostgreSQL: `DATABASE_URL` when it is set, else an embedded server started by the
 * tests' helper (`test/setup/embedded.ts`: temporary directory, free port; as root, run as the
 * `postgres` user from binaries it can reach).
 */
import { performance } from "node:perf_hooks"
import { type EmbeddedServer, signalServer, startEmbeddedPostgres } from "../test/setup/embedded.js"

/** Where the demo's database lives and how to let go of it. */
export interface DemoDatabase {
  readonly url: string
  /** One line for a person: where the database comes from. */
  readonly description: string
  /** Whether the demo started it (and so stops it). */
  readonly embedded: boolean
  /** Stops the embedded server and deletes its files; nothing for `DATABASE_URL`. Idempotent. */
  readonly stop: () => Promise<void>
  /**
   * Freezes the embedded server for `ms` (SIGSTOP to the postmaster and every backend, then
   * SIGCONT): connections hang without an error. Absent for `DATABASE_URL`: not ours to freeze.
   */
  readonly freeze?: (ms: number) => Promise<void>
}

/** `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for printing. */
export const redactUrl = (url: string): string => {
  try {
    const parsed = new URL(url)
    if (parsed.password !== "") parsed.password = "***"
    return parsed.toString()
  } catch {
    return "(unparsable URL)"
  }
}

/**
 * Uses `DATABASE_URL`, or starts an embedded PostgreSQL. `onProgress` hears about the (slow, first
 * time) embedded start so the demo can say what it is waiting for.
 */
export const openDatabase = async (onProgress: (line: string) => void): Promise<DemoDatabase> => {
  const fromEnv = process.env["DATABASE_URL"]
  if (fromEnv !== undefined && fromEnv !== "") {
    return {
      url: fromEnv,
      description: `DATABASE_URL ${redactUrl(fromEnv)}`,
      embedded: false,
      stop: async () => {},
    }
  }

  onProgress("DATABASE_URL is not set: starting an embedded PostgreSQL…")
  const started = performance.now()
  let server: EmbeddedServer
  try {
    // The demo stops it itself on a signal, after its servers (see demo.ts).
    server = await startEmbeddedPostgres({ killOnSignal: false })
  } catch (error) {
    // One message, with no stack: it is about the machine, not about the demo.
    const failure = new Error(
      `${(error as Error)?.message ?? String(error)}\n` +
        "Or use a PostgreSQL of your own: DATABASE_URL=postgres://user:password@127.0.0.1:5432/db npm start",
    )
    failure.stack = failure.message
    throw failure
  }
  const seconds = ((performance.now() - started) / 1000).toFixed(1)
  // Set while frozen: wakes the server now (a stopped server would never act on its shutdown).
  let thaw: (() => void) | undefined
  return {
    url: server.url,
    description: `embedded PostgreSQL on 127.0.0.1:${server.port} (started in ${seconds} s, deleted on exit)`,
    embedded: true,
    // A Ctrl-C in a terminal reaches the postgres child too, which then shuts itself down:
    // `destroy()` only waits for a server that still runs, and is idempotent.
    stop: async () => {
      if (thaw !== undefined) {
        thaw()
        await signalServer(server.dataDir, "SIGCONT").catch(() => {})
      }
      await server.destroy()
    },
    freeze: async (ms) => {
      if (thaw !== undefined || !server.running()) return
      await signalServer(server.dataDir, "SIGSTOP")
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, ms)
        thaw = () => {
          clearTimeout(timer)
          resolve()
        }
      })
      thaw = undefined
      await signalServer(server.dataDir, "SIGCONT").catch(() => {})
    },
  }
}
