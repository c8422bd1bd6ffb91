/**
 * The README's Effect example runs as written: two processes of it form a cluster (a client of
 * one hears of a client that joined the other), Ctrl-C ends each (exit code 130, as runMain
 * does), and a PostgreSQL it cannot reach is said in its log while it keeps trying.
 */
import { spawn, type ChildProcess } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { io as connect, type Socket } from "socket.io-client"
import { afterAll, describe, expect, inject, it } from "vitest"
import { freePort } from "./setup/embedded.js"

const root = path.resolve(import.meta.dirname, "..")
const readme = fs.readFileSync(path.join(root, "README.md"), "utf8")
const example = [...readme.matchAll(/^```ts\n([\s\S]*?)^```$/gm)]
  .map((match) => match[1]!)
  .find((code) => code.includes("makeAdapterFactory"))

const dir = fs.mkdtempSync(path.join(root, ".tmp-readme-effect-"))
const file = path.join(dir, "example.ts")
// Only the package's own name changes: it points at the sources here.
fs.writeFileSync(
  file,
  (example ?? "").replace(
    `from "socket.io-postgres-effect/effect"`,
    `from ${JSON.stringify(path.join(root, "src", "effect.ts"))}`,
  ),
)
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

interface Run {
  readonly child: ChildProcess
  readonly output: () => string
  readonly exited: Promise<number | null>
}

const run = (env: Record<string, string>): Run => {
  const child = spawn(process.execPath, ["--import", "tsx", file], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  })
  let output = ""
  child.stdout!.on("data", (chunk) => (output += chunk))
  child.stderr!.on("data", (chunk) => (output += chunk))
  const exited = new Promise<number | null>((resolve) => child.once("exit", resolve))
  return { child, output: () => output, exited }
}

/** Resolves once `predicate` holds on the process's output; rejects if it exits first. */
const waitForOutput = (process: Run, predicate: (output: string) => boolean, ms = 20_000) =>
  new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      clearInterval(poll)
      reject(new Error(`timed out; output so far:\n${process.output()}`))
    }, ms)
    const poll = setInterval(() => {
      if (!predicate(process.output())) return
      clearInterval(poll)
      clearTimeout(timer)
      resolve()
    }, 20)
    void process.exited.then((code) => {
      if (predicate(process.output())) return
      clearInterval(poll)
      clearTimeout(timer)
      reject(new Error(`exited with ${code}; output:\n${process.output()}`))
    })
  })

describe("README: the Effect example", () => {
  it("is in the README", () => {
    expect(example).toBeDefined()
  })

  it("runs as written: two processes form a cluster, and Ctrl-C ends them", async () => {
    const [portA, portB] = [await freePort(), await freePort()]
    const env = { DATABASE_URL: inject("databaseUrl") }
    const a = run({ ...env, PORT: String(portA) })
    const b = run({ ...env, PORT: String(portB) })
    const clients: Array<Socket> = []
    try {
      await waitForOutput(a, (output) => output.includes("Socket.IO is listening"))
      await waitForOutput(b, (output) => output.includes("Socket.IO is listening"))
      const onA = connect(`http://127.0.0.1:${portA}`, { transports: ["websocket"] })
      clients.push(onA)
      const joined: Array<unknown> = []
      onA.on("joined", (id) => joined.push(id))
      await new Promise<void>((resolve) => onA.once("connect", () => resolve()))
      // B's io.emit reaches A's client only through PostgreSQL.
      const onB = connect(`http://127.0.0.1:${portB}`, { transports: ["websocket"] })
      clients.push(onB)
      await new Promise<void>((resolve) => onB.once("connect", () => resolve()))
      await new Promise<void>((resolve) => {
        const check = () => (joined.includes(onB.id) ? resolve() : onA.once("joined", check))
        check()
      })
      a.child.kill("SIGINT")
      b.child.kill("SIGINT")
      expect(await a.exited).toBe(130)
      expect(await b.exited).toBe(130)
    } finally {
      for (const client of clients) client.close()
      a.child.kill("SIGKILL")
      b.child.kill("SIGKILL")
    }
  }, 60_000)

  it("says in its log that PostgreSQL cannot be reached, and keeps trying", async () => {
    const closedPort = await freePort()
    const broken = run({
      DATABASE_URL: `postgres://postgres@127.0.0.1:${closedPort}/test`,
      PORT: String(await freePort()),
    })
    try {
      await waitForOutput(broken, (output) => /WARN.*ECONNREFUSED/.test(output))
      broken.child.kill("SIGINT")
      expect(await broken.exited).toBe(130)
    } finally {
      broken.child.kill("SIGKILL")
    }
  }, 60_000)
})
