/**
 * Delivery guarantees across three real Socket.IO servers on our adapter, through real PostgreSQL
 * without faults: nothing lost under a burst, identical packets all delivered, send order kept when
 * attachments interleave with inline packets, and a clean shutdown.
 */
import type { Server } from "socket.io"
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { startCluster, type Cluster } from "./utils/nodes.js"
import { eventually, waitFor } from "./utils/cluster.js"

/** How many of each kind of libuv resource keep the process alive now. */
const resources = () => {
  const counts = new Map<string, number>()
  for (const kind of process.getActiveResourcesInfo()) counts.set(kind, (counts.get(kind) ?? 0) + 1)
  return counts
}

describe("adapter delivery guarantees across 3 servers", () => {
  let cluster: Cluster
  let io: Array<Server>
  // clients[i] is connected to server i.
  let clients: Array<ClientSocket>
  let baseline: Map<string, number>

  beforeAll(async () => {
    baseline = resources()
    cluster = await startCluster("guarantees")
    io = cluster.nodes.map((server) => server.io)
    clients = await cluster.connectEach()
    await cluster.waitForMembers()
  })

  // Closing every server and ending the pools is all it takes for this file's process to exit.
  afterAll(async () => {
    await cluster?.close()
  })

  /**
   * Records the arguments of every `event` on `client` until `end` arrives. `end` is emitted from
   * the same server after the packets, so it arrives after all of them.
   */
  const recordUntil = (client: ClientSocket, event: string, end: string, timeoutMs = 20_000) => {
    const seen: Array<unknown[]> = []
    const listener = (...args: unknown[]) => void seen.push(args)
    client.on(event, listener)
    return waitFor(client, end, timeoutMs).then(
      () => {
        client.off(event, listener)
        return seen
      },
      (error) => {
        client.off(event, listener)
        throw new Error(`${error.message} (${seen.length} "${event}" events before)`)
      },
    )
  }

  const remotes = () => [clients[1]!, clients[2]!]

  it("a burst of 5,000 io.emit from server 0 reaches the clients of servers 1 and 2, all of them, once", async () => {
    const recorded = Promise.all(remotes().map((client) => recordUntil(client, "n", "n-end")))
    for (let i = 0; i < 5000; i++) io[0]!.emit("n", i)
    io[0]!.emit("n-end")
    const expected = Array.from({ length: 5000 }, (_, i) => i)
    for (const seen of await recorded) {
      const values = seen.map(([n]) => n as number)
      expect(values.length).toBe(5000)
      expect(new Set(values).size).toBe(5000)
      expect(values).toEqual(expected)
    }
  })

  it("1,000 identical packets io.emit('same', 1) all arrive on every remote client", async () => {
    const recorded = Promise.all(remotes().map((client) => recordUntil(client, "same", "same-end")))
    for (let i = 0; i < 1000; i++) io[0]!.emit("same", 1)
    io[0]!.emit("same-end")
    for (const seen of await recorded) {
      expect(seen.length).toBe(1000)
      expect(seen.every((args) => args.length === 1 && args[0] === 1)).toBe(true)
    }
  })

  it("identical packets all arrive when attachments are batched into the same statements", async () => {
    const recorded = Promise.all(remotes().map((client) => recordUntil(client, "mix", "mix-end")))
    // Every fourth packet carries binary (an attachment); the others are the same inline packet.
    for (let i = 0; i < 400; i++) io[0]!.emit("mix", i % 4 === 0 ? Buffer.from([1, 2, 3]) : 1)
    io[0]!.emit("mix-end")
    for (const seen of await recorded) {
      expect(seen.length).toBe(400)
      expect(seen.filter((args) => args[0] === 1).length).toBe(300)
      seen.forEach((args, i) => {
        if (i % 4 === 0)
          expect(Buffer.from(args[0] as ArrayBuffer).equals(Buffer.from([1, 2, 3]))).toBe(true)
        else expect(args[0]).toBe(1)
      })
    }
  })

  it("packets reach every remote client in send order when large and binary ones interleave with small ones", async () => {
    const large = "L".repeat(20_000)
    const packetOf = (i: number): unknown[] =>
      i % 3 === 0 ? [i, large] : i % 5 === 0 ? [i, Buffer.from([i & 0xff, i >> 8])] : [i]
    const recorded = Promise.all(remotes().map((client) => recordUntil(client, "o", "o-end")))
    for (let i = 0; i < 600; i++) io[0]!.emit("o", ...packetOf(i))
    io[0]!.emit("o-end")
    for (const seen of await recorded) {
      expect(seen.map(([i]) => i)).toEqual(Array.from({ length: 600 }, (_, i) => i))
      for (const [i, extra] of seen as Array<[number, unknown]>) {
        if (i % 3 === 0) expect(extra).toBe(large)
        else if (i % 5 === 0)
          expect(Buffer.from(extra as Buffer)).toEqual(Buffer.from([i & 0xff, i >> 8]))
        else expect(extra).toBeUndefined()
      }
    }
  })

  it("closing every server and ending the pools leaves no socket, server or timer of ours behind", async () => {
    await cluster.close()
    const kinds = ["TCPSocketWrap", "TCPServerWrap", "Timeout", "Immediate"]
    const excess = () =>
      kinds
        .map((kind) => [kind, (resources().get(kind) ?? 0) - (baseline.get(kind) ?? 0)] as const)
        .filter(([, n]) => n > 0)
    await eventually(() => excess().length === 0, {
      message: "resources back to what they were before the cluster started",
    }).catch((error) => {
      throw new Error(`${error.message}: ${JSON.stringify(excess())}`)
    })
  })
})
