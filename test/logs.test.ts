/**
 * Logs as Socket.IO users expect: a plain app's console stays quiet when all is well (a junk
 * notification included: it is skipped with a debug line, not a console line), `DEBUG` shows what
 * the adapter does, and the default errorHandler prints one line per incident.
 */
import { spawn } from "node:child_process"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { makeDefaultErrorHandler } from "../src/internal/debugLog.js"
import { databaseUrl, suiteId } from "./utils/postgres.js"

const runApp = (env: Record<string, string>) =>
  new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(
      process.execPath,
      ["--import", "tsx", path.join(import.meta.dirname, "fixtures", "quiet-app.ts")],
      {
        env: { ...process.env, DATABASE_URL: databaseUrl(), ...env },
        stdio: ["ignore", "pipe", "pipe"],
      },
    )
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (chunk) => (stdout += chunk))
    child.stderr.on("data", (chunk) => (stderr += chunk))
    child.once("exit", (code) => resolve({ code, stdout, stderr }))
  })

describe("logs", () => {
  it("a plain app's console stays quiet when all is well", async () => {
    const run = await runApp({ PREFIX: suiteId("quiet"), DEBUG: "" })
    expect(run.code).toBe(0)
    expect(run.stdout.trim()).toBe("done")
    expect(run.stderr).toBe("")
  }, 60_000)

  it("DEBUG=socket.io-postgres-effect:* shows the adapter's log lines, the skipped junk included", async () => {
    const run = await runApp({ PREFIX: suiteId("debug"), DEBUG: "socket.io-postgres-effect:*" })
    expect(run.code).toBe(0)
    expect(run.stderr).toMatch(/socket\.io-postgres-effect:\w+ .*malformed notification/)
  }, 60_000)

  it("the default errorHandler prints one line per incident, not per repeat", () => {
    const lines: Array<string> = []
    const handler = makeDefaultErrorHandler((line) => lines.push(line))
    for (let port = 1; port <= 50; port++) {
      handler(new Error(`LISTEN connection failed: connect ECONNREFUSED 127.0.0.1:${port}`))
    }
    handler(new Error("publish failed: timeout"))
    expect(lines).toEqual([
      "socket.io-postgres-effect: LISTEN connection failed: connect ECONNREFUSED 127.0.0.1:1",
      "socket.io-postgres-effect: publish failed: timeout",
    ])
  })
})
