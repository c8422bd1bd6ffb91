/**
 * Smoke test of `npm run bench:hops`: a tiny run against the tests' database (and the machine's
 * Redis when one answers) writes its results. Times are not asserted: benchmarks measure them.
 */
import { mkdtemp, readFile, rm } from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { databaseUrl } from "./utils/postgres.js"
import { runScript } from "./utils/scripts.js"

describe("npm run bench:hops", () => {
  let out: string | undefined

  afterAll(async () => {
    if (out !== undefined) await rm(out, { recursive: true, force: true })
  })

  it("times a hop and a round trip on PostgreSQL, both ways of notifying, with and without bystanders (and from one), and writes them", async () => {
    out = await mkdtemp(path.join(os.tmpdir(), "bench-hops-"))
    const file = path.join(out, "hops.json")
    const { code, stdout, stderr } = await runScript(
      "bench/hops.ts",
      ["--count", "20", "--bystanders", "1", "--out", file],
      {
        env: { ...process.env, DATABASE_URL: databaseUrl() },
      },
    )
    expect(code, stderr).toBe(0)
    expect(stdout).toContain("PostgreSQL NOTIFY")
    const json = JSON.parse(await readFile(file, "utf8"))
    const rows = json.results.map(
      (result: { name: string; sender: string; bystanders: number }) =>
        `${result.name}+${result.bystanders} (${result.sender})`,
    )
    // As the Publisher sends (a notify script), and as it did (`SELECT pg_notify($1, $2)`); each
    // alone, then with a connection listening on a channel of its own; the script also sent from
    // that listening connection.
    expect(rows.slice(0, 5)).toEqual([
      "PostgreSQL NOTIFY+0 (sending connection)",
      "PostgreSQL NOTIFY+1 (sending connection)",
      "PostgreSQL NOTIFY+1 (listening connection)",
      "PostgreSQL pg_notify+0 (sending connection)",
      "PostgreSQL pg_notify+1 (sending connection)",
    ])
    for (const postgres of json.results.slice(0, 5)) {
      for (const figure of [postgres.hop.p50, postgres.roundTrip.p50]) {
        expect(figure).toBeGreaterThan(0)
      }
      // The server's CPU is read from /proc when the database runs on this machine.
      const cpu = postgres.roundTrip.serverCpuMsPer1k
      expect(cpu === null || cpu >= 0).toBe(true)
    }
    const names = json.results.map((result: { name: string }) => result.name)
    // Redis is measured beside them when one answers, else the run says it skipped it.
    if (!names.includes("Redis PUBLISH")) expect(stderr).toContain("skipped")
  }, 120_000)
})
