/**
 * The README's plain examples run as written, in child processes, against a PostgreSQL of their
 * own (they use the default channels and table): the quick-start server forms a cluster, the
 * emitter example reaches its clients and exits, and the server survives a PostgreSQL restart,
 * with its pool's 'error' listener as in the README and without any (the adapter adds one and
 * says so once). Only the package's name changes: it points at the sources here.
 */
import { spawn, type ChildProcess } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { io as connect, type Socket } from "socket.io-client"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { freePort } from "./setup/embedded.js"
import { eventually } from "./utils/cluster.js"
import { type PrivatePostgres, startPrivatePostgres } from "./utils/postgres.js"

const root = path.resolve(import.meta.dirname, "..")
const readme = fs.readFileSync(path.join(root, "README.md"), "utf8")
const blocks = [...readme.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((match) => match[1]!)
const quickStart = blocks.find((code) => code.includes("httpServer.listen(")) ?? ""
const emitterExample = blocks.find((code) => code.includes("new Emitter(pool)")) ?? ""
const POOL_LISTENER = `pool.on("error", (error) => console.error("PostgreSQL pool:", error.message))\n`

const dir = fs.mkdtempSync(path.join(root, ".tmp-readme-plain-"))
const write = (name: string, code: string) => {
  const file = path.join(dir, name)
  fs.writeFileSync(
    file,
    code.replace(
      `from "socket.io-postgres-effect"`,
      `from ${JSON.stringify(path.join(root, "src", "index.ts"))}`,
    ),
  )
  return file
}
const serverFile = write("server.ts", quickStart)
const bareServerFile = write("bare-server.ts", quickStart.replace(POOL_LISTENER, ""))
const emitterFile = write("emitter.ts", emitterExample)

interface Run {
  readonly child: ChildProcess
  readonly port: number
  readonly output: () => string
  readonly exited: Promise<number | null>
}

const runs: Array<Run> = []
const clients: Array<Socket> = []

const run = async (file: string, env: Record<string, string>): Promise<Run> => {
  const port = await freePort()
  const child = spawn(process.execPath, ["--import", "tsx", file], {
    cwd: root,
    env: { ...process.env, DEBUG: "", PORT: String(port), ...env },
    stdio: ["ignore", "pipe", "pipe"],
  })
  let output = ""
  child.stdout!.on("data", (chunk) => (output += chunk))
  child.stderr!.on("data", (chunk) => (output += chunk))
  const exited = new Promise<number | null>((resolve) => child.once("exit", resolve))
  const started = { child, port, output: () => output, exited }
  runs.push(started)
  return started
}

const alive = (server: Run) => server.child.exitCode === null && server.child.signalCode === null

/** A client of `server`, connected (the server may still be starting: retried). */
const client = async (server: Run): Promise<Socket> => {
  const socket = connect(`http://127.0.0.1:${server.port}`, { transports: ["websocket"] })
  clients.push(socket)
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`no connection; output:\n${server.output()}`)),
      20_000,
    )
    socket.once("connect", () => {
      clearTimeout(timer)
      resolve()
    })
  })
  return socket
}

/**
 * The quick start's own cross-server traffic: a client joining `to` makes it emit "hello" to
 * room1, which `from`'s client hears only through PostgreSQL. Joins again until it does (what is
 * sent while a LISTEN connection is not back yet is lost).
 */
const crossServerDelivery = async (from: Run, to: Run) => {
  const listener = await client(from)
  let heard = false
  listener.on("hello", () => void (heard = true))
  await eventually(
    async () => {
      if (!heard) (await client(to)).close()
      return heard
    },
    { timeout: 30_000, interval: 200, message: `hello from :${to.port} heard on :${from.port}` },
  )
  listener.close()
}

describe("README: the plain examples, as written", () => {
  let postgres: PrivatePostgres
  let env: Record<string, string>

  beforeAll(async () => {
    postgres = await startPrivatePostgres()
    env = { DATABASE_URL: postgres.url }
  })

  afterAll(async () => {
    for (const socket of clients) socket.close()
    for (const { child } of runs) child.kill("SIGKILL")
    await Promise.all(runs.map((r) => r.exited))
    await postgres?.destroy()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  it("are in the README", () => {
    expect(quickStart).toContain(POOL_LISTENER)
    expect(emitterExample).toContain("await pool.end()")
  })

  it("the quick start forms a cluster, and the emitter example reaches its clients and exits", async () => {
    const [a, b] = [await run(serverFile, env), await run(serverFile, env)]
    await crossServerDelivery(a, b)
    await crossServerDelivery(b, a)
    const listener = await client(a)
    const time = new Promise((resolve) => listener.once("time", resolve))
    const emitter = await run(emitterFile, env)
    expect(await emitter.exited, emitter.output()).toBe(0)
    await time
    // Both servers answered its serverSideEmitWithAck("health").
    expect(emitter.output()).toMatch(/health: ok, ok\n/)
    a.child.kill("SIGTERM")
    b.child.kill("SIGTERM")
    await Promise.all([a.exited, b.exited])
  }, 90_000)

  it("survives a PostgreSQL restart, with the README's pool listener and without any", async () => {
    const [a, bare] = [await run(serverFile, env), await run(bareServerFile, env)]
    await crossServerDelivery(a, bare)
    await crossServerDelivery(bare, a)
    await postgres.stop()
    await postgres.start()
    await crossServerDelivery(a, bare)
    await crossServerDelivery(bare, a)
    expect(alive(a), a.output()).toBe(true)
    expect(alive(bare), bare.output()).toBe(true)
    // The pool without a listener got one of the adapter's, said in one line. (Whether an idle
    // connection was there to fail at the restart, and so was reported, depends on timing.)
    const notices = bare
      .output()
      .split("\n")
      .filter((line) => line.includes("'error' listener"))
    expect(notices).toEqual([
      expect.stringMatching(/^socket\.io-postgres-effect: the pg\.Pool has no 'error' listener: /),
    ])
    expect(a.output()).not.toMatch(/'error' listener/)
  }, 120_000)
})
