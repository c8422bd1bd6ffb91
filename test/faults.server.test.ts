/**
 * Guarantee 3 (Postgres down), the whole server: stopped, or frozen with SIGSTOP. Local clients
 * keep getting everything at once, publish failures go to the errorHandler (never an unhandled
 * rejection), requests end instead of hanging, and the cluster heals when PostgreSQL is back.
 */
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest"
import {
  deliveredEventually,
  type Settled,
  settleWithin,
  watchProcessFaults,
} from "./fixtures/faults.js"
import { fastOptions } from "./utils/adapters.js"
import { collect, eventually, waitFor } from "./utils/cluster.js"
import { type Cluster, startCluster } from "./utils/nodes.js"
import { type PrivatePostgres, startPrivatePostgres } from "./utils/postgres.js"

const SERVERS = 3
// Generous bound for "ends instead of hanging": well above requestsTimeout and heartbeatTimeout.
const SETTLE_BOUND = 4 * fastOptions.requestsTimeout

/** A request ended: with answers (an array), or with a timeout error. */
const expectEnded = (settled: Settled<unknown>) => {
  if (settled.status === "fulfilled") {
    expect(Array.isArray(settled.value)).toBe(true)
  } else {
    expect(settled.reason).toBeInstanceOf(Error)
    expect((settled.reason as Error).message).toMatch(/timeout/i)
  }
}

describe("when the PostgreSQL server goes away", () => {
  const watcher = watchProcessFaults()
  let postgres: PrivatePostgres
  let cluster: Cluster
  let clients: Array<ClientSocket>

  const clearErrors = () => cluster.nodes.forEach((node) => (node.errors.length = 0))
  const publishErrors = (i: number) =>
    cluster.nodes[i]!.errors.filter((error) => (error as { _tag?: string })._tag === "PublishError")

  const requestsEnd = async () => {
    const io = cluster.nodes[0]!.io
    const [sockets, acks] = await Promise.all([
      settleWithin(io.fetchSockets(), SETTLE_BOUND, "fetchSockets"),
      settleWithin(io.serverSideEmitWithAck("ping"), SETTLE_BOUND, "serverSideEmitWithAck"),
    ])
    expectEnded(sockets)
    expectEnded(acks)
  }

  const crossServerDeliveryWorks = async (tag: string) => {
    for (let from = 0; from < SERVERS; from++) {
      const to = (from + 1) % SERVERS
      await deliveredEventually(cluster.nodes[from]!.io, clients[to]!, `${tag}-${from}-to-${to}`)
    }
  }

  /**
   * A broadcast reaches a local client before its publish settles: sent before a local-only
   * marker (which never touches PostgreSQL), it arrives first. Were local delivery to wait for the
   * publish, the marker would overtake it.
   */
  const localBeforePublish = async (i: number, event: string) => {
    const got = collect(clients[i]!, event, 2)
    clearErrors()
    cluster.nodes[i]!.io.emit(event, "broadcast")
    cluster.nodes[i]!.io.local.emit(event, "local marker")
    expect(await got).toEqual([["broadcast"], ["local marker"]])
    // And the publish did fail, later: PostgreSQL really was out of reach.
    await eventually(() => publishErrors(i).length > 0, {
      message: "the broadcast's publish failed",
    })
  }

  /** One more server (its pool ended with the cluster), for the tests that close one. */
  const startExtraServer = async () => {
    const node = await cluster.addNode()
    await cluster.waitForMembers("/", SERVERS + 1)
    return { close: () => cluster.closeNode(node) }
  }

  beforeAll(async () => {
    postgres = await startPrivatePostgres()
    cluster = await startCluster("faults_server", {
      nodes: SERVERS,
      options: fastOptions,
      connectionString: postgres.url,
    })
    clients = await cluster.connectEach()
    cluster.nodes.forEach((node, i) =>
      node.io.on("ping", (ack: (answer: unknown) => void) => ack(`pong-${i}`)),
    )
  })

  beforeEach(async () => {
    // Whatever the previous test did, each starts with PostgreSQL up and a complete cluster.
    await postgres.resume()
    await postgres.start()
    await cluster.waitForMembers("/", SERVERS)
  })

  afterEach(() => {
    expect(watcher.faults).toEqual([])
  })

  afterAll(async () => {
    watcher.stop()
    await postgres?.resume()
    await cluster?.close()
    await postgres?.destroy()
  })

  it("answers requests from every server while PostgreSQL is up", async () => {
    const acks = await cluster.nodes[0]!.io.serverSideEmitWithAck("ping")
    expect([...acks].sort()).toEqual(["pong-1", "pong-2"])
    expect(await cluster.nodes[0]!.io.fetchSockets()).toHaveLength(SERVERS)
  })

  describe("stopped", () => {
    it("still delivers to local clients at once, in order", async () => {
      await postgres.stop()
      const [client0, client1] = clients
      const got = collect(client0!, "local", 50)
      for (let n = 0; n < 50; n++) cluster.nodes[0]!.io.emit("local", n)
      expect(await got).toEqual(Array.from({ length: 50 }, (_, n) => [n]))
      // Room and single-socket emits too.
      const inRoom = waitFor(client1!, "room")
      cluster.nodes[1]!.io.in(client1!.id!).emit("room", "here")
      expect(await inRoom).toEqual(["here"])
      // Received while PostgreSQL is down: local delivery never waited for it.
      expect(await cluster.nodes[0]!.pool.query("SELECT 1").catch(() => "down")).toBe("down")
    })

    it("delivers to local clients before the publish fails, not after", async () => {
      await postgres.stop()
      await localBeforePublish(1, "stopped-order")
    })

    it("reports publish failures to the errorHandler, never as an unhandled rejection", async () => {
      await postgres.stop()
      clearErrors()
      cluster.nodes[0]!.io.emit("lost", 1)
      await eventually(() => publishErrors(0).length > 0, {
        message: "a PublishError reached the errorHandler",
      })
      expect(publishErrors(0)[0]!.message).not.toBe("")
      // The Listener's failed reconnections are reported as well.
      await eventually(
        () =>
          cluster
            .running()
            .every(({ errors }) =>
              errors.some((error) => /LISTEN connection (lost|failed)/.test(error.message)),
            ),
        { message: "every server reported its lost LISTEN connection" },
      )
    })

    it("ends fetchSockets and serverSideEmitWithAck instead of hanging", async () => {
      await postgres.stop()
      await requestsEnd()
    })

    it("lets a server close without hanging", async () => {
      const extra = await startExtraServer()
      await postgres.stop()
      const closed = await settleWithin(extra.close(), SETTLE_BOUND, "io.close()")
      expect(closed.status).toBe("fulfilled")
    })

    it("reconnects and resumes cross-server delivery once PostgreSQL is started again", async () => {
      await postgres.stop()
      // Let the cluster notice: every node drops the others after heartbeatTimeout.
      await cluster.waitForMembers("/", 1)
      await postgres.start()
      await cluster.waitForMembers("/", SERVERS)
      await crossServerDeliveryWorks("restarted")
      const acks = await cluster.nodes[1]!.io.serverSideEmitWithAck("ping")
      expect([...acks].sort()).toEqual(["pong-0", "pong-2"])
    })
  })

  describe("frozen (SIGSTOP)", () => {
    it("still delivers to local clients at once", async () => {
      await postgres.pause()
      const got = collect(clients[2]!, "frozen-local", 20)
      for (let n = 0; n < 20; n++) cluster.nodes[2]!.io.emit("frozen-local", n)
      expect(await got).toEqual(Array.from({ length: 20 }, (_, n) => [n]))
    })

    it("delivers to local clients before the publish times out, not after", async () => {
      await postgres.pause()
      await localBeforePublish(2, "frozen-order")
    })

    it("ends requests by timeout and reports publish timeouts", async () => {
      await postgres.pause()
      clearErrors()
      await requestsEnd()
      cluster.nodes[0]!.io.emit("frozen", 1)
      await eventually(() => publishErrors(0).length > 0, {
        message: "a publish timeout reached the errorHandler",
      })
    })

    it("lets a server close without hanging", async () => {
      const extra = await startExtraServer()
      await postgres.pause()
      const closed = await settleWithin(extra.close(), SETTLE_BOUND, "io.close()")
      expect(closed.status).toBe("fulfilled")
    })

    it("resumes cross-server delivery once PostgreSQL runs again", async () => {
      await postgres.pause()
      cluster.nodes[0]!.io.emit("while-frozen", 1)
      await postgres.resume()
      await crossServerDeliveryWorks("resumed")
      await cluster.waitForMembers("/", SERVERS)
      const acks = await cluster.nodes[2]!.io.serverSideEmitWithAck("ping")
      expect([...acks].sort()).toEqual(["pong-0", "pong-1"])
    })
  })
})
