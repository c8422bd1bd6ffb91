/**
 * `npm run soak -- --quick` as part of `npm test`: about a minute of traffic on three server
 * processes while the LISTEN backends are killed, every connection is black-holed and a server is
 * SIGKILLed; it must pass its own rules (exit code 0) and write its report. The soak starts a
 * PostgreSQL of its own and takes free ports only, so it runs beside any other suite. Timings are
 * never asserted: the report's recovery times are only required to exist.
 */
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import type { Tally } from "../soak/accounting.js"
import { runScript } from "./utils/scripts.js"

const runSoak = (args: ReadonlyArray<string>) =>
  runScript("soak/soak.ts", args, { timeout: 240_000 })

describe("npm run soak --quick", () => {
  it("survives a killed LISTEN, a black hole and a killed server, and reports every window", async () => {
    const out = await mkdtemp(path.join(os.tmpdir(), "sio-soak-"))
    try {
      const result = await runSoak(["--quick", "--out", out])
      expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0)

      const files = await readdir(out)
      const json = files.find((f) => f.endsWith(".json"))
      expect(json, files.join(", ")).toBeDefined()
      expect(files.some((f) => f.endsWith(".svg"))).toBe(true)
      const report = JSON.parse(await readFile(path.join(out, json!), "utf8")) as {
        ok: boolean
        failures: Array<string>
        faults: Array<{ kind: string; recoveryP50Ms: number | null; recoveryMaxMs: number | null }>
        windows: Array<{ fault: string | null; rec: Tally; plain: Tally }>
        totals: { rec: Tally; plain: Tally }
        samples: Array<{ rssMb: Array<unknown>; connections: Array<number> | null }>
      }
      expect(report.ok).toBe(true)
      expect(report.failures).toEqual([])
      expect(report.faults.map((f) => f.kind)).toEqual(["listen-kill", "black-hole", "server-kill"])
      for (const fault of report.faults) {
        expect(fault.recoveryP50Ms, fault.kind).toBeTypeOf("number")
        expect(fault.recoveryMaxMs, fault.kind).toBeGreaterThanOrEqual(fault.recoveryP50Ms!)
      }
      // One window before the first fault, one from each fault to the next.
      expect(report.windows.map((w) => w.fault)).toEqual([
        null,
        ...report.faults.map((f) => f.kind),
      ])
      for (const window of report.windows) {
        for (const tally of [window.rec, window.plain]) {
          expect(tally.sent).toBeGreaterThan(0)
          expect(tally.delivered + tally.lost + tally.late).toBe(tally.expected)
        }
      }
      for (const cluster of [report.totals.rec, report.totals.plain]) {
        expect(cluster.delivered).toBeGreaterThan(0)
      }
      expect(report.samples.length).toBeGreaterThan(0)
      expect(report.samples.some((s) => s.connections !== null)).toBe(true)
    } finally {
      await rm(out, { recursive: true, force: true })
    }
  }, 300_000)
})
