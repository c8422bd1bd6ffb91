/**
 * Smoke test of `npm run bench`: the quick mode runs every scenario against the tests' database
 * (and the Redis adapter against `REDIS_URL`, when one is reachable) and writes its results.
 * Timings are never asserted: this machine's numbers mean nothing here.
 */
import { mkdtemp, readFile, rm, stat } from "node:fs/promises"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { createClient } from "redis"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { DEFAULT_REDIS_URL, scenarios } from "../bench/scenarios.js"
import { databaseUrl } from "./utils/postgres.js"
import { runScript } from "./utils/scripts.js"

const runBench = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv) =>
  runScript("bench/bench.ts", args, { env, timeout: 150_000 })

interface Result {
  readonly runs: number
  readonly serverCpuPer1k: number | null
}

interface BenchJson {
  readonly environment: {
    readonly redis: { reachable: boolean; skipped: string | null } | null
  }
  readonly options: { readonly kinds: ReadonlyArray<string> }
  readonly scenarios: ReadonlyArray<{
    readonly name: string
    readonly results: Record<string, Result>
    readonly headline: { vsRedis: number | null; vsUpstream: number | null } | null
  }>
}

const redisUrl = process.env["REDIS_URL"] ?? DEFAULT_REDIS_URL

/** Why the Redis kind cannot run here, or undefined when a Redis answers at `redisUrl`. */
const redisUnavailable = async (): Promise<string | undefined> => {
  const client = createClient({
    url: redisUrl,
    socket: { reconnectStrategy: false, connectTimeout: 3000 },
  })
  client.on("error", () => {})
  try {
    await client.connect()
    await client.ping()
    return undefined
  } catch (error) {
    return `no Redis at ${redisUrl}: ${(error as Error).message}`
  } finally {
    if (client.isOpen) client.destroy()
  }
}

const noRedis = await redisUnavailable()

/** A loopback port nothing listens on (taken, then released). */
const closedPort = () =>
  new Promise<number>((resolve, reject) => {
    const server = net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo
      server.close(() => resolve(port))
    })
  })

describe("npm run bench --quick", () => {
  let out: string
  let run: { code: number | null; stdout: string; stderr: string }
  let json: BenchJson

  beforeAll(async () => {
    out = await mkdtemp(path.join(os.tmpdir(), "sio-bench-"))
    run = await runBench(["--quick", "--out", out], {
      ...process.env,
      DATABASE_URL: databaseUrl(),
      REDIS_URL: redisUrl,
    })
    if (run.code === 0) json = JSON.parse(await readFile(path.join(out, "latest.json"), "utf8"))
  }, 180_000)

  afterAll(async () => {
    if (out !== undefined) await rm(out, { recursive: true, force: true })
  })

  it("exits 0 and writes a JSON result with every scenario for both PostgreSQL adapters", async () => {
    expect(run.code, `${run.stdout}\n${run.stderr}`).toBe(0)
    expect(json.scenarios.map((s) => s.name)).toEqual(scenarios(true).map((s) => s.name))
    for (const scenario of json.scenarios) {
      expect(scenario.results["ours"]?.runs, scenario.name).toBe(1)
      expect(scenario.results["upstream"]?.runs, scenario.name).toBe(1)
    }
    expect((await stat(path.join(out, "latest.svg"))).size).toBeGreaterThan(0)
  })

  it("reports server CPU per operation for every kind of every scenario but join", () => {
    expect(run.code, `${run.stdout}\n${run.stderr}`).toBe(0)
    for (const scenario of json.scenarios.filter((s) => s.name !== "join")) {
      for (const [kind, result] of Object.entries(scenario.results)) {
        expect(result.serverCpuPer1k, `${scenario.name} ${kind}`).toEqual(expect.any(Number))
      }
    }
  })

  it.skipIf(noRedis !== undefined)(
    `runs the Redis adapter in every scenario but join, with its ratios${noRedis === undefined ? "" : ` (skipped: ${noRedis})`}`,
    () => {
      expect(run.code, `${run.stdout}\n${run.stderr}`).toBe(0)
      expect(json.environment.redis).toMatchObject({ reachable: true, skipped: null })
      for (const scenario of json.scenarios) {
        if (scenario.name === "join") {
          expect(scenario.results["redis"], scenario.name).toBeUndefined()
          continue
        }
        expect(scenario.results["redis"]?.runs, scenario.name).toBe(1)
        expect(scenario.headline?.vsRedis, scenario.name).toEqual(expect.any(Number))
        expect(scenario.headline?.vsUpstream, scenario.name).toEqual(expect.any(Number))
      }
      expect(run.stdout).toContain("ours / redis")
      expect(run.stdout).toContain("ours/redis")
    },
  )

  it("skips kind redis, and says so in the output and the JSON, when no Redis is reachable", async () => {
    const elsewhere = await mkdtemp(path.join(os.tmpdir(), "sio-bench-"))
    try {
      const unreachable = `redis://127.0.0.1:${await closedPort()}`
      const result = await runBench(
        ["--quick", "--scenario", "small", "--kind", "ours,redis", "--out", elsewhere],
        { ...process.env, DATABASE_URL: databaseUrl(), REDIS_URL: unreachable },
      )
      expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0)
      expect(result.stdout).toMatch(/no Redis reachable at redis:\/\/127\.0\.0\.1:\d+ .*skipped/)
      const skipped = JSON.parse(
        await readFile(path.join(elsewhere, "latest.json"), "utf8"),
      ) as BenchJson
      expect(skipped.environment.redis).toMatchObject({ reachable: false })
      expect(skipped.environment.redis?.skipped).toMatch(/kind redis skipped/)
      expect(skipped.options.kinds).toEqual(["ours"])
      expect(skipped.scenarios[0]?.results["ours"]?.runs).toBe(1)
      expect(skipped.scenarios[0]?.results["redis"]).toBeUndefined()
    } finally {
      await rm(elsewhere, { recursive: true, force: true })
    }
  }, 60_000)
})
