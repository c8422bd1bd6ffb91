/**
 * Smoke test of `npm run bench`: the quick mode runs every scenario against the tests' database and
 * writes its results. Timings are never asserted: this machine's numbers mean nothing here.
 */
import { execFile } from "node:child_process"
import { mkdtemp, readFile, rm, stat } from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "vitest"
import { scenarios } from "../bench/scenarios.js"
import { databaseUrl } from "./utils/postgres.js"

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)))

const runBench = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv) =>
  new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    execFile(
      process.execPath,
      ["--import", "tsx", "bench/bench.ts", ...args],
      { cwd: root, env, timeout: 150_000, maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) =>
        resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    )
  })

describe("npm run bench --quick", () => {
  it("exits 0 and writes a JSON result with every scenario for both adapters", async () => {
    const out = await mkdtemp(path.join(os.tmpdir(), "sio-bench-"))
    try {
      const result = await runBench(["--quick", "--out", out], {
        ...process.env,
        DATABASE_URL: databaseUrl(),
      })
      expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0)

      const json = JSON.parse(await readFile(path.join(out, "latest.json"), "utf8")) as {
        scenarios: Array<{ name: string; results: Record<string, { runs: number }> }>
      }
      expect(json.scenarios.map((s) => s.name)).toEqual(scenarios(true).map((s) => s.name))
      for (const scenario of json.scenarios) {
        expect(scenario.results["ours"]?.runs, scenario.name).toBe(1)
        expect(scenario.results["upstream"]?.runs, scenario.name).toBe(1)
      }
      expect((await stat(path.join(out, "latest.svg"))).size).toBeGreaterThan(0)
    } finally {
      await rm(out, { recursive: true, force: true })
    }
  }, 180_000)
})
