/**
 * Smoke test of `npm run bench:idle`: a tiny run against the tests' database writes its results.
 * Counts are not asserted here (a timed window): test/membership.test.ts checks the idle cost.
 */
import { mkdtemp, readFile, rm } from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { databaseUrl } from "./utils/postgres.js"
import { runScript } from "./utils/scripts.js"

describe("npm run bench:idle", () => {
  let out: string | undefined

  afterAll(async () => {
    if (out !== undefined) await rm(out, { recursive: true, force: true })
  })

  it("runs every kind it is asked for and writes idle.json", async () => {
    out = await mkdtemp(path.join(os.tmpdir(), "bench-idle-"))
    const args = ["--quick", "--namespaces", "1,3", "--intervals", "1", "--out", out]
    const { code, stdout, stderr } = await runScript("bench/idle.ts", args, {
      env: { ...process.env, DATABASE_URL: databaseUrl() },
    })
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
