/**
 * Smoke test of `npm run bench:idle`: a tiny run against the tests' database writes its results.
 * Counts are not asserted here (a timed window): test/membership.test.ts checks the idle cost.
 */
import { execFile } from "node:child_process"
import { mkdtemp, readFile, rm } from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { afterAll, describe, expect, it } from "vitest"
import { databaseUrl } from "./utils/postgres.js"

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)))

describe("npm run bench:idle", () => {
  let out: string | undefined

  afterAll(async () => {
    if (out !== undefined) await rm(out, { recursive: true, force: true })
  })

  it("runs every kind it is asked for and writes idle.json", async () => {
    out = await mkdtemp(path.join(os.tmpdir(), "bench-idle-"))
    const args = ["--quick", "--namespaces", "1,3", "--intervals", "1", "--out", out]
    const { code, stdout, stderr } = await new Promise<{
      code: number | null
      stdout: string
      stderr: string
    }>((resolve) =>
      execFile(
        process.execPath,
        ["--import", "tsx", "bench/idle.ts", ...args],
        {
          cwd: root,
          env: { ...process.env, DATABASE_URL: databaseUrl() },
          timeout: 120_000,
        },
        (error, stdout, stderr) =>
          resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr }),
      ),
    )
    expect(code, stderr).toBe(0)
    expect(stdout).toContain("per minute at 5 s")
    const json = JSON.parse(await readFile(path.join(out, "idle.json"), "utf8"))
    const runs = json.results.map((r: { kind: string; namespaces: number }) => [
      r.kind,
      r.namespaces,
    ])
    expect(runs).toEqual([
      ["ours", 1],
      ["ours", 3],
      ["ours-namespace", 1],
      ["ours-namespace", 3],
      ["upstream", 1],
      ["upstream", 3],
    ])
  }, 150_000)
})
