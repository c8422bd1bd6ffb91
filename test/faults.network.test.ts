/**
 * Guarantee 3 against the network (issue 11): the connections to PostgreSQL are black-holed (as
 * after a NAT reset, a fail-over or a pulled cable: no FIN, no RST, new connections pass), reset,
 * slowed or lossy, and the cluster must keep or regain cross-server delivery, acks and
 * `fetchSockets` by itself, with the default options, leaking no pool slot.
 *
 * Every server's pool and Listener go through a TCP proxy of ours (test/utils/proxy.ts) in front
 * of a private PostgreSQL.
 *
 * The black hole is only found by an application-level check (TCP keep-alive never fires here,
 * see the proxy's notes): the Listener's liveness ping (issue 11 item 1) and the statements'
 * deadlines, which discard their connection and the idle ones as old (item 2).
 */
import { randomBytes } from "node:crypto"
import type pg from "pg"
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { defaults } from "../src/AdapterConfig.js"
import { createAdapter, Emitter, PublishError } from "../src/index.js"
import { settleWithin, watchProcessFaults } from "./fixtures/faults.js"
import {
  type AdapterConstructor,
  connectClient,
  eventually,
  startServer,
  type TestServer,
} from "./utils/cluster.js"
import { makePool, type PrivatePostgres, startPrivatePostgres, suiteId } from "./utils/postgres.js"
import { seededRandom, startProxy, type TcpProxy } from "./utils/proxy.js"

/** Servers on adapters of the test's own (proxied) pools, a client on each. */
interface TestCluster {
  readonly servers: Array<TestServer>
  readonly clients: Array<ClientSocket>
  readonly close: () => Promise<void>
}

const startCluster = async (
  n: number,
  makeAdapter: (index: number) => AdapterConstructor,
): Promise<TestCluster> => {
  const servers: Array<TestServer> = []
  const clients: Array<ClientSocket> = []
  const close = async () => {
    for (const client of clients) client.disconnect()
    await Promise.allSettled(servers.map((server) => server.close()))
  }
  try {
    for (let i = 0; i < n; i++) servers.push(await startServer({ adapter: makeAdapter(i) }))
    for (const server of servers) clients.push(await connectClient(server.url))
  } catch (error) {
    await close()
    throw error
  }
  return { servers, clients, close }
}

/** Resolves once every server counts `size` servers on `/`. */
const clusterHasSize = (servers: ReadonlyArray<TestServer>, size: number) =>
  eventually(
    async () => {
      const counts = await Promise.all(servers.map((s) => s.io.of("/").adapter.serverCount()))
      return counts.every((count) => count === size)
    },
    { timeout: 10_000, message: `every server counts ${size} servers` },
  )

// The promise of the issue: back by themselves within heartbeatTimeout + 5 s, default options.
const RECOVERY_BOUND = defaults.heartbeatTimeout + 5_000
const POOL_MAX = 4
// A publish on a dead connection: short, so that the test is quick; the behaviour is the same.
const PUBLISH_TIMEOUT = 1_000

describe("when the network to PostgreSQL fails (issue 11)", () => {
  const watcher = watchProcessFaults()
  let postgres: PrivatePostgres
  let proxy: TcpProxy
  let id: string
  const pools: Array<pg.Pool> = []
  const errors: Array<Error> = []
  // Closed after each test, whatever state it left the network in.
  const closers: Array<() => Promise<unknown>> = []

  /** Owners that still hold a black-holed connection: dead, but kept. */
  const deadConnectionsKept = () =>
    proxy.connections().filter((connection) => connection.blackHoled && connection.clientOpen)

  /** A pool through the proxy, ended after the test. */
  const proxiedPool = (max: number) => {
    const pool = makePool({ connectionString: proxy.url, max })
    pools.push(pool)
    return pool
  }

  /** Nothing checked out, nobody waiting, never over `max`. */
  const poolIsSane = (pool: pg.Pool, max: number) =>
    pool.waitingCount === 0 && pool.idleCount === pool.totalCount && pool.totalCount <= max

  beforeAll(async () => {
    postgres = await startPrivatePostgres()
  })

  beforeEach(async () => {
    id = suiteId("faults_network")
    errors.length = 0
    // Seed 7's first draw is 0.012: with any loss rate over that, the first chunk is lost.
    proxy = await startProxy({ target: postgres.url, random: seededRandom(7) })
  })

  afterEach(async () => {
    // Healed first, so that what hung completes and the servers close cleanly; then every
    // socket destroyed, whatever is left.
    proxy.restore()
    for (const close of closers.splice(0).reverse()) {
      await settleWithin(close(), 30_000, "closing the test's servers")
    }
    await proxy.close()
    await Promise.all(pools.splice(0).map((pool) => pool.end().catch(() => {})))
  })

  afterAll(async () => {
    watcher.stop()
    await postgres?.destroy()
  })

  /**
   * Polls `attempt` until it returns true, each try bounded by what is left until `deadline`;
   * a try still pending at the deadline fails the test as hanging.
   */
  const comesBackBy = async (deadline: number, what: string, attempt: () => Promise<boolean>) => {
    let last = "no answer yet"
    for (;;) {
      const remaining = deadline - Date.now()
      if (remaining <= 0) {
        throw new Error(`${what}: not back within ${RECOVERY_BOUND} ms (last try: ${last})`)
      }
      const settled = await settleWithin(attempt(), remaining, what).catch((error: Error) => ({
        status: "hung" as const,
        reason: error,
      }))
      if (settled.status === "fulfilled" && settled.value) return
      last =
        settled.status === "fulfilled"
          ? "not yet (not received, or not every answer)"
          : String((settled.reason as Error)?.message ?? settled.reason)
      // A poll interval, as in `eventually`: the next try, not a wait for time to pass.
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }

  /** Emits from `from` (once per poll) until `to`'s client receives it. */
  const deliveryBy = (
    cluster: TestCluster,
    deadline: number,
    from: number,
    to: number,
    what: string,
  ) => {
    const event = `across-${from}-${to}`
    let received = false
    const client = cluster.clients[to]!
    const onEvent = () => void (received = true)
    client.on(event, onEvent)
    return comesBackBy(deadline, what, async () => {
      if (!received) cluster.servers[from]!.io.emit(event)
      return received
    }).finally(() => client.off(event, onEvent))
  }

  /**
   * Two servers on default options, each pool and Listener through the proxy. Twice in a row:
   * `fault()` (which returns how many connections it hit), then cross-server delivery both ways,
   * acks both ways and `fetchSockets` must work by themselves within {@link RECOVERY_BOUND}. Then
   * no pool slot is leaked, no dead connection kept, no unhandled rejection.
   */
  const survivesTwice = async (fault: () => number) => {
    for (let i = 0; i < 2; i++) proxiedPool(POOL_MAX)
    // Default options: only the isolation from other suites and an errorHandler.
    const cluster = await startCluster(2, (i) =>
      createAdapter(pools[i]!, {
        channelPrefix: id,
        tableName: id,
        errorHandler: (error) => void errors.push(error),
      }),
    )
    closers.push(() => cluster.close())
    cluster.servers.forEach((server, i) =>
      server.io.on("ping", (ack: (answer: unknown) => void) => ack(`pong-${i}`)),
    )
    await clusterHasSize(cluster.servers, 2)
    const [io0, io1] = cluster.servers.map((server) => server.io)

    for (const round of [1, 2]) {
      // Every open connection: at least both LISTEN connections, which now carry the servers'
      // notifications both ways (a pool may hold no connection at that moment).
      expect(fault()).toBeGreaterThanOrEqual(2)
      const deadline = Date.now() + RECOVERY_BOUND
      const tag = (what: string) => `round ${round}: ${what}`
      // All five checked to the end, so that a failure says which came back and which did not.
      const results = await Promise.allSettled([
        deliveryBy(cluster, deadline, 0, 1, tag("cross-server delivery 0 -> 1")),
        deliveryBy(cluster, deadline, 1, 0, tag("cross-server delivery 1 -> 0")),
        comesBackBy(deadline, tag("serverSideEmitWithAck from 0"), async () =>
          ((await io0!.serverSideEmitWithAck("ping")) as Array<unknown>).includes("pong-1"),
        ),
        comesBackBy(deadline, tag("serverSideEmitWithAck from 1"), async () =>
          ((await io1!.serverSideEmitWithAck("ping")) as Array<unknown>).includes("pong-0"),
        ),
        comesBackBy(
          deadline,
          tag("fetchSockets from 0"),
          async () => (await io0!.fetchSockets()).length === 2,
        ),
      ])
      const notBack = results.flatMap((result) =>
        result.status === "rejected" ? [String((result.reason as Error)?.message)] : [],
      )
      expect(notBack).toEqual([])
    }

    // No slot leaked, and no dead connection kept: every black-holed one was let go (pg's
    // idleTimeoutMillis, 10 s by default, lets go of the idle ones never used again).
    await eventually(() => pools.every((pool) => poolIsSane(pool, POOL_MAX)), {
      timeout: defaults.publishTimeout + 5_000,
      message: "every pool: nothing checked out, nobody waiting",
    })
    await eventually(() => deadConnectionsKept().length === 0, {
      timeout: defaults.publishTimeout + 5_000,
      message: "every black-holed connection let go by its owner",
    })
    expect(watcher.faults).toEqual([])
  }

  const SURVIVES = "cross-server delivery, acks and fetchSockets come back by themselves"
  const TIMEOUT = { timeout: 4 * RECOVERY_BOUND + 30_000 }

  it(
    // Issue 11 items 1 (LISTEN liveness) and 2 (dead pool connections).
    `black hole of every open connection, twice in a row: ${SURVIVES} within heartbeatTimeout + 5 s`,
    TIMEOUT,
    () => survivesTwice(() => proxy.blackHole()),
  )

  // The same checks under the faults the adapter survives today: the harness can pass.
  it(`reset (RST) of every open connection, twice in a row: ${SURVIVES}`, TIMEOUT, () =>
    survivesTwice(() => proxy.reset()),
  )

  it(`200 ms of latency with 50 ms of jitter, twice in a row: ${SURVIVES}`, TIMEOUT, async () => {
    await survivesTwice(() => {
      proxy.latency({ delayMs: 200, jitterMs: 50 })
      return proxy.connections().length
    })
    expect(proxy.stats().delayed).toBeGreaterThan(0)
  })

  it(`10 % packet loss (retransmission stalls), twice in a row: ${SURVIVES}`, TIMEOUT, async () => {
    await survivesTwice(() => {
      proxy.drop({ rate: 0.1 })
      return proxy.connections().length
    })
    // Seeded: the first chunk after drop() is surely lost (see beforeEach).
    expect(proxy.stats().stalls).toBeGreaterThan(0)
  })

  describe("a publish on a dead pool connection", () => {
    /**
     * Checks what must hold once a publish timed out on the pool's only connection, dead: the
     * pool let go of it and the next statement gets a fresh one. `accepted` is the proxy's count
     * at the fault: the server's own publishes (heartbeats, what was queued) may take the fresh
     * connection first.
     */
    const poolRecovers = async (
      pool: pg.Pool,
      accepted: number,
      publishAgain: () => Promise<unknown>,
    ) => {
      await eventually(() => deadConnectionsKept().length === 0, {
        timeout: PUBLISH_TIMEOUT + 5_000,
        message: "the pool let go of the dead connection",
      })
      const again = await settleWithin(publishAgain(), PUBLISH_TIMEOUT + 5_000, "the next publish")
      expect(again.status).toBe("fulfilled")
      expect(proxy.stats().accepted).toBeGreaterThan(accepted)
      await eventually(() => poolIsSane(pool, 1), {
        message: "the pool: nothing checked out, nobody waiting",
      })
      expect(watcher.faults).toEqual([])
    }

    it(
      // Issue 11 item 2: a statement past its deadline destroys its connection.
      "from the emitter: after publishTimeout the pool keeps no dead connection",
      { timeout: 60_000 },
      async () => {
        const pool = proxiedPool(1)
        const emitter = new Emitter(pool, "/", {
          channelPrefix: id,
          tableName: id,
          publishTimeout: PUBLISH_TIMEOUT,
          errorHandler: (error) => void errors.push(error),
        })
        closers.push(() => emitter.close())
        await emitter.emit("warm-up")
        expect(pool.totalCount).toBe(1)
        expect(proxy.blackHole()).toBe(1)
        const accepted = proxy.stats().accepted
        const lost = await settleWithin(
          emitter.emit("into the black hole"),
          PUBLISH_TIMEOUT + 5_000,
          "a publish on the dead connection",
        )
        expect(lost.status).toBe("rejected")
        expect((lost as { reason: unknown }).reason).toBeInstanceOf(PublishError)
        expect((lost as { reason: PublishError }).reason.reason).toBe("Timeout")
        await poolRecovers(pool, accepted, () => emitter.emit("after the black hole"))
      },
    )

    it(
      // Issue 11 item 2: idle connections share the dead path; each would cost a deadline.
      "from the emitter: idle connections as old as the timed-out one are not tried one deadline after another",
      { timeout: 60_000 },
      async () => {
        // No idle timeout: only the adapter may let go of the dead idle connections.
        const pool = makePool({ connectionString: proxy.url, max: 3, idleTimeoutMillis: 0 })
        pools.push(pool)
        const emitter = new Emitter(pool, "/", {
          channelPrefix: id,
          tableName: id,
          publishTimeout: PUBLISH_TIMEOUT,
          errorHandler: (error) => void errors.push(error),
        })
        closers.push(() => emitter.close())
        await emitter.emit("warm-up")
        // Three connections, idle.
        await Promise.all([1, 2, 3].map(() => pool.query("SELECT pg_sleep(0.05)")))
        expect(pool.idleCount).toBe(3)
        expect(proxy.blackHole()).toBe(3)
        const accepted = proxy.stats().accepted
        const lost = await settleWithin(
          emitter.emit("into the black hole"),
          PUBLISH_TIMEOUT + 5_000,
          "a publish on the dead connection",
        )
        expect((lost as { reason: PublishError }).reason.reason).toBe("Timeout")
        // The next publish gets a fresh connection at once: another dead one would cost it its
        // own publishTimeout, and a Timeout.
        const again = await settleWithin(
          emitter.emit("after the black hole"),
          PUBLISH_TIMEOUT + 5_000,
          "the next publish",
        )
        expect(again.status).toBe("fulfilled")
        expect(proxy.stats().accepted).toBeGreaterThan(accepted)
        await eventually(() => deadConnectionsKept().length === 0, {
          message: "the pool let go of every dead connection",
        })
        await eventually(() => poolIsSane(pool, 3), {
          message: "the pool: nothing checked out, nobody waiting",
        })
        expect(watcher.faults).toEqual([])
      },
    )

    it(
      // Issue 11 item 2: the same for the servers' publishes.
      "from a server: after publishTimeout the pool keeps no dead connection",
      { timeout: 60_000 },
      async () => {
        const pool = proxiedPool(1)
        const cluster = await startCluster(1, () =>
          createAdapter(pool, {
            channelPrefix: id,
            tableName: id,
            publishTimeout: PUBLISH_TIMEOUT,
            errorHandler: (error) => void errors.push(error),
          }),
        )
        closers.push(() => cluster.close())
        const io = cluster.servers[0]!.io
        // The adapter has published (its heartbeat) and its connection is back in the pool.
        await eventually(() => pool.totalCount === 1 && pool.idleCount === 1, {
          message: "the server's pool holds one idle connection",
        })
        // Only the pool's connection: the Listener's is not what this test is about.
        const port = (pool as unknown as { _clients: Array<{ connection: { stream: any } }> })
          ._clients[0]!.connection.stream.localPort as number
        expect(proxy.blackHole({ only: (connection) => connection.clientPort === port })).toBe(1)
        const accepted = proxy.stats().accepted
        // A server's notify-only statements go on its LISTEN connection while it is up: this one
        // takes the pool, an attachment (more than the packed wire's 1,024 parts, incompressible).
        io.emit("into the black hole", randomBytes(7_000_000).toString("base64"))
        await eventually(
          () =>
            errors.some((error) => {
              const tagged = error as { _tag?: string; reason?: string }
              return tagged._tag === "PublishError" && tagged.reason === "Timeout"
            }),
          {
            timeout: PUBLISH_TIMEOUT + 5_000,
            message: "a publish timeout reached the errorHandler",
          },
        )
        await poolRecovers(pool, accepted, () => pool.query("SELECT 1"))
      },
    )
  })
})
