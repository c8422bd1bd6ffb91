/**
 * With connection state recovery on, a server whose LISTEN connection is lost reads back the
 * stored packets it missed and delivers them, in order, before the live ones: nothing is lost.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { startAdapterCluster, type AdapterCluster } from "./utils/adapterCluster.js"
import { eventually } from "./utils/cluster.js"
import { terminateListeners } from "./utils/postgres.js"

describe("recovery: a lost LISTEN connection", () => {
  let cluster: AdapterCluster

  beforeAll(async () => {
    cluster = await startAdapterCluster(
      "recovery_listener",
      2,
      {},
      { connectionStateRecovery: { maxDisconnectionDuration: 60_000 } },
    )
    await cluster.waitForMembers()
  })
  afterAll(() => cluster?.close())

  it("delivers what was sent while it was down, in order, once", async () => {
    const [, remote] = await cluster.connectEach()
    const received: Array<number> = []
    const offsets: Array<bigint> = []
    remote!.on("n", (n: number, offset: string) => {
      received.push(n)
      offsets.push(BigInt(offset))
    })
    const total = 3000
    let sent = 0
    let killed = 0
    // Emits in slices, one per turn of the event loop, and kills the listeners a third of the way.
    await new Promise<void>((resolve, reject) => {
      const tick = () => {
        for (let i = 0; i < 50 && sent < total; i++) cluster.servers[0]!.io.emit("n", sent++)
        if (sent === 1000) {
          terminateListeners(cluster.pool, { queryContains: cluster.id })
            .then((n) => void (killed = n))
            .catch(reject)
        }
        if (sent < total) setImmediate(tick)
        else resolve()
      }
      tick()
    })
    await eventually(() => received.length >= total, {
      timeout: 20_000,
      message: "every packet received",
    })
    expect(killed).toBeGreaterThan(0)
    expect(received).toEqual(Array.from({ length: total }, (_, i) => i))
    for (let i = 1; i < offsets.length; i++) expect(offsets[i]! > offsets[i - 1]!).toBe(true)
  })
})
