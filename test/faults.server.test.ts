/**
 * Guarantee 3 (Postgres down), the whole server: stopped, or frozen with SIGSTOP. Local clients
 * keep getting everything at once, publish failures go to the errorHandler (never an unhandled
 * rejection), requests end instead of hanging, and the cluster heals when PostgreSQL is back.
 */
import type pg from "pg"
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { createAdapter } from "../src/index.js"
import {
  clusterHasSize,
  deliveredEventually,
  fastOptions,
  type Settled,
  settleWithin,
  watchProcessFaults,
} from "./fixtures/faults.js"
import {
  collect,
  eventually,
  startCluster,
  startServer,
  waitFor,
  type TestCluster,
} from "./utils/cluster.js"
import { makePool, type PrivatePostgres, startPrivatePostgres, suiteId } from "./utils/postgres.js"

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
  const id = suiteId("faults_server")
  const errors: Array<Array<Error>> = Array.from({ length: SERVERS }, () => [])
  const pools: Array<pg.Pool> = []
  let postgres: PrivatePostgres
  let cluster: TestCluster

  const clearErrors = () => errors.forEach((list) => (list.length = 0))
  const publishErrors = (i: number) =>
    errors[i]!.filter((error) => (error as { _tag?: string })._tag === "PublishError")

  const requestsEnd = async () => {
    const io = cluster.servers[0]!.io
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
      await deliveredEventually(
        cluster.servers[from]!.io,
        cluster.clients[to]!,
        `${tag}-${from}-to-${to}`,
      )
    }
  }

  /** One more server on its own pool (ended with it), for the tests that close one. */
  const startExtraServer = async () => {
    const pool = makePool({ connectionString: postgres.url, max: 2 })
    const server = await startServer({
      adapter: createAdapter(pool, { channelPrefix: id, tableName: id, ...fastOptions }),
    })
    await clusterHasSize([...cluster.servers, server], SERVERS + 1)
    return {
      close: async () => {
        await server.close()
        // The pool is the caller's: ended here, once PostgreSQL is reachable or not.
        void pool.end().catch(() => {})
      },
    }
  }

  beforeAll(async () => {
    postgres = await startPrivatePostgres()
    for (let i = 0; i < SERVERS; i++) {
      pools.push(makePool({ connectionString: postgres.url, max: 4 }))
    }
    cluster = await startCluster(SERVERS, (i) =>
      createAdapter(pools[i]!, {
        channelPrefix: id,
        tableName: id,
        ...fastOptions,
        errorHandler: (error) => void errors[i]!.push(error),
      }),
    )
    cluster.servers.forEach((server, i) =>
      server.io.on("ping", (ack: (answer: unknown) => void) => ack(`pong-${i}`)),
    )
    await clusterHasSize(cluster.servers, SERVERS)
  })

  beforeEach(async () => {
    // Whatever the previous test did, each starts with PostgreSQL up and a complete cluster.
    await postgres.resume()
    await postgres.start()
    await clusterHasSize(cluster.servers, SERVERS)
  })

  afterEach(() => {
    expect(watcher.faults).toEqual([])
  })

  afterAll(async () => {
    watcher.stop()
    await postgres?.resume()
    await cluster?.close()
    await Promise.all(pools.map((pool) => pool.end()))
    await postgres?.destroy()
  })

  it("answers requests from every server while PostgreSQL is up", async () => {
    const acks = await cluster.servers[0]!.io.serverSideEmitWithAck("ping")
    expect([...acks].sort()).toEqual(["pong-1", "pong-2"])
    expect(await cluster.servers[0]!.io.fetchSockets()).toHaveLength(SERVERS)
  })

  describe("stopped", () => {
    it("still delivers to local clients at once, in order", async () => {
      await postgres.stop()
      const [client0, client1] = cluster.clients
      const got = collect(client0!, "local", 50)
      for (let n = 0; n < 50; n++) cluster.servers[0]!.io.emit("local", n)
      expect(await got).toEqual(Array.from({ length: 50 }, (_, n) => [n]))
      // Room and single-socket emits too.
      const inRoom = waitFor(client1!, "room")
      cluster.servers[1]!.io.in(client1!.id!).emit("room", "here")
      expect(await inRoom).toEqual(["here"])
      // Received while PostgreSQL is down: local delivery never waited for it.
      expect(await pools[0]!.query("SELECT 1").catch(() => "down")).toBe("down")
    })

    it("reports publish failures to the errorHandler, never as an unhandled rejection", async () => {
      await postgres.stop()
      clearErrors()
      cluster.servers[0]!.io.emit("lost", 1)
      await eventually(() => publishErrors(0).length > 0, {
        message: "a PublishError reached the errorHandler",
      })
      expect(publishErrors(0)[0]!.message).not.toBe("")
      // The Listener's failed reconnections are reported as well.
      await eventually(
        () =>
          errors.every((list) =>
            list.some((error) => /LISTEN connection (lost|failed)/.test(error.message)),
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
      await clusterHasSize(cluster.servers, 1)
      await postgres.start()
      await clusterHasSize(cluster.servers, SERVERS)
      await crossServerDeliveryWorks("restarted")
      const acks = await cluster.servers[1]!.io.serverSideEmitWithAck("ping")
      expect([...acks].sort()).toEqual(["pong-0", "pong-2"])
    })
  })

  describe("frozen (SIGSTOP)", () => {
    it("still delivers to local clients at once", async () => {
      await postgres.pause()
      const got = collect(cluster.clients[2]!, "frozen-local", 20)
      for (let n = 0; n < 20; n++) cluster.servers[2]!.io.emit("frozen-local", n)
      expect(await got).toEqual(Array.from({ length: 20 }, (_, n) => [n]))
    })

    it("ends requests by timeout and reports publish timeouts", async () => {
      await postgres.pause()
      clearErrors()
      await requestsEnd()
      cluster.servers[0]!.io.emit("frozen", 1)
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
      cluster.servers[0]!.io.emit("while-frozen", 1)
      await postgres.resume()
      await crossServerDeliveryWorks("resumed")
      await clusterHasSize(cluster.servers, SERVERS)
      const acks = await cluster.servers[2]!.io.serverSideEmitWithAck("ping")
      expect([...acks].sort()).toEqual(["pong-0", "pong-1"])
    })
  })
})
