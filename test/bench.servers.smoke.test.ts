/**
 * Smoke test of `npm run bench:servers`: a tiny run over its two embedded PostgreSQL servers
 * prints its JSON. Throughput is not asserted (a timing); where the namespaces and their traffic
 * went is: every namespace on one server, every packet counted once where its namespace lives.
 */
import { describe, expect, it } from "vitest"
import { runScript } from "./utils/scripts.js"

describe("npm run bench:servers", () => {
  it("runs over one and two servers and counts where the traffic went", async () => {
    const args = ["--namespaces", "6", "--count", "5", "--idle", "1", "--json"]
    args.push("--rooms", "12", "--room-count", "5")
    const { code, stdout, stderr } = await runScript("bench/servers.ts", args)
    expect(code, stderr).toBe(0)
    const json = JSON.parse(stdout)
    const [one, two] = json.results
    expect(one.namespacesPerServer).toEqual([6])
    expect(two.namespacesPerServer.reduce((a: number, b: number) => a + b, 0)).toBe(6)
    for (const run of [one, two]) {
      // The LISTEN of the bench hears every broadcast once, on its namespace's server (plus the
      // heartbeats of the load's few seconds).
      const heard = run.notificationsPerServer.reduce((a: number, b: number) => a + b, 0)
      expect(heard).toBeGreaterThanOrEqual(6 * 5)
      run.namespacesPerServer.forEach((n: number, s: number) => {
        if (n === 0) expect(run.notificationsPerServer[s]).toBeLessThan(6 * 5)
      })
      expect(run.broadcastsPerSecond).toBeGreaterThan(0)
    }
    // The room-heavy load: one namespace's rooms on both servers, each room's packets counted on
    // its own server.
    const [oneRooms, twoRooms] = json.rooms.results
    expect(oneRooms.roomsPerServer).toEqual([12])
    expect(twoRooms.roomsPerServer.reduce((a: number, b: number) => a + b, 0)).toBe(12)
    for (const run of [oneRooms, twoRooms]) {
      run.roomsPerServer.forEach((n: number, s: number) =>
        expect(run.notificationsPerServer[s]).toBe(n * 5),
      )
      expect(run.broadcastsPerSecond).toBeGreaterThan(0)
    }
  }, 180_000)
})
