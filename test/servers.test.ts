/**
 * Several PostgreSQL servers under one cluster (issue 14): 3 Socket.IO servers, each given the
 * pools of the same two (then three) embedded PostgreSQL servers. Each namespace lives on one of
 * them (placed by rendezvous hashing of its channel's name), with its rooms, attachments and
 * recovery rows; a PostgreSQL server stopped or frozen stops only its namespaces.
 */
import pg from "pg"
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { channelName } from "../src/Channel.js"
import * as Effect from "effect/Effect"
import * as Tracer from "effect/Tracer"
import { makeAdapterFactoryPools } from "../src/effect.js"
import { createAdapter, Emitter } from "../src/index.js"
import * as Placement from "../src/Placement.js"
import {
  collect,
  connectClient,
  eventually,
  startServer,
  type TestServer,
} from "./utils/cluster.js"
import {
  startPrivatePostgres,
  type PrivatePostgres,
  openPools,
  listenOn,
} from "./utils/privatePostgres.js"
import { dropTransport, resume } from "./utils/recovery.js"

const NAMESPACES = Array.from({ length: 16 }, (_, i) => `/n${i}`)

// Two servers named from their settings (host:port/database), three named by the caller.
describe.each([
  { count: 2, named: false },
  { count: 3, named: true },
])("$count PostgreSQL servers", ({ count, named }) => {
  const PREFIX = `servers${count}`
  let databases: Array<PrivatePostgres>
  let nodes: Array<TestServer>
  const pools: Array<pg.Pool> = []
  const clients: Array<ClientSocket> = []
  /** Where each namespace lives: index into `databases`. */
  let home: (nsp: string) => number

  const poolsOf = () =>
    openPools(databases, pools).map((pool, i) => (named ? { pool, name: `pg-${"abc"[i]}` } : pool))

  beforeAll(async () => {
    databases = await Promise.all(Array.from({ length: count }, () => startPrivatePostgres()))
    const names = Placement.decodeServersSync(poolsOf(), Placement.poolSettings).map((s) => s.name)
    const placement = Placement.make(names)
    home = (nsp) => placement.indexOf(channelName(PREFIX, nsp))
    nodes = await Promise.all(
      [0, 1, 2].map(() =>
        startServer({
          adapter: createAdapter(poolsOf(), {
            channelPrefix: PREFIX,
            heartbeatInterval: 300,
            heartbeatTimeout: 2000,
            requestsTimeout: 3000,
            publishTimeout: 1000,
            reconnectMaxDelay: 300,
            errorHandler: () => {},
          }),
          serverOptions: { connectionStateRecovery: { maxDisconnectionDuration: 60_000 } },
        }),
      ),
    )
    for (const node of nodes) {
      for (const nsp of NAMESPACES)
        node.io.of(nsp).on("ping", (ack: (n: string) => void) => ack(nsp))
    }
    await waitForMembers(NAMESPACES)
  }, 60_000)

  afterEach(() => {
    for (const client of clients.splice(0)) client.disconnect()
  })

  afterAll(async () => {
    await Promise.all((nodes ?? []).map((node) => node.close()))
    await Promise.all(pools.map((pool) => pool.end()))
    await Promise.all((databases ?? []).map((db) => db.destroy()))
  })

  const waitForMembers = (namespaces: ReadonlyArray<string>) =>
    eventually(
      async () => {
        const counts = await Promise.all(
          nodes.flatMap((node) => namespaces.map((nsp) => node.io.of(nsp).adapter.serverCount())),
        )
        return counts.every((count) => count === 3)
      },
      { timeout: 15_000, message: "every node counts 3 servers in every namespace" },
    )

  /** One client per node in `nsp`. */
  const connectEach = async (nsp: string) => {
    const each = await Promise.all(nodes.map((node) => connectClient(node.url, { nsp })))
    clients.push(...each)
    return each
  }

  it("places namespaces on every server, and every node agrees: a broadcast travels on its namespace's server", async () => {
    const homes = NAMESPACES.map(home)
    expect(new Set(homes).size).toBe(count)
    const channels = NAMESPACES.map((nsp) => channelName(PREFIX, nsp))
    const listeners = await Promise.all(databases.map((db) => listenOn(db, channels)))
    try {
      for (const nsp of NAMESPACES) {
        const each = await connectEach(nsp)
        const got = collect(each[2]!, "hello", 1)
        nodes[0]!.io.of(nsp).emit("hello", nsp)
        expect((await got)[0]![0]).toBe(nsp)
      }
      // Our own LISTEN hears each namespace's broadcast on its server (a connection of its own:
      // it may lag the clients), and never on another server.
      const heardOn = (s: number, nsp: string) =>
        listeners[s]!.heard.includes(channelName(PREFIX, nsp))
      await eventually(() => NAMESPACES.every((nsp) => heardOn(home(nsp), nsp)), {
        message: "every broadcast heard on its namespace's server",
      })
      for (const nsp of NAMESPACES) {
        expect(databases.map((_, s) => heardOn(s, nsp))).toEqual(
          databases.map((_, s) => home(nsp) === s),
        )
      }
    } finally {
      await Promise.all(listeners.map(({ client }) => client.end()))
    }
  })

  it("runs every namespace's requests on its own server: fetchSockets, serverSideEmitWithAck, binary", async () => {
    for (const nsp of NAMESPACES) {
      const each = await connectEach(nsp)
      const sockets = await nodes[1]!.io.of(nsp).fetchSockets()
      expect(sockets.map((s) => s.id).sort()).toEqual(each.map((c) => c.id).sort())
      const answers = await nodes[2]!.io.of(nsp).serverSideEmitWithAck("ping")
      expect(answers).toEqual([nsp, nsp])
      // Attachments (0.5.0's wire for binary in a mixed cluster; packed here) on its server too.
      const got = collect(each[0]!, "bin", 1)
      nodes[1]!.io.of(nsp).emit("bin", Buffer.alloc(20_000, 7))
      expect(Buffer.from((await got)[0]![0] as ArrayBuffer).length).toBe(20_000)
    }
  })

  it("an emitter given the same pools reaches the namespaces of every server", async () => {
    const emitterPools = poolsOf()
    const emitter = new Emitter(emitterPools, "/", { channelPrefix: PREFIX })
    try {
      for (const nsp of NAMESPACES) {
        const each = await connectEach(nsp)
        const got = collect(each[1]!, "from-emitter", 1)
        await emitter.of(nsp).emit("from-emitter", nsp)
        expect((await got)[0]![0]).toBe(nsp)
      }
    } finally {
      await emitter.close()
    }
  })

  it("recovers a client in a namespace of each server from another node", async () => {
    for (const nsp of [
      NAMESPACES.find((n) => home(n) === 0)!,
      NAMESPACES.find((n) => home(n) === 1)!,
    ]) {
      const [client] = await connectEach(nsp)
      const received: Array<unknown> = []
      client!.on("news", (n: unknown) => received.push(n))
      nodes[1]!.io.of(nsp).emit("news", 1)
      await eventually(() => received.length === 1)
      const pool = pools[home(nsp)]!
      const prefix = "socket_io_recovery"
      await dropTransport(client!, pool, prefix)
      nodes[1]!.io.of(nsp).emit("news", 2)
      const back = await resume(client!, nodes[2]!.url, {
        nsp,
        attach: (c) => c.on("news", (n: unknown) => received.push(n)),
        track: clients,
      })
      expect(back.recovered).toBe(true)
      await eventually(() => received.length === 2)
      expect(received).toEqual([1, 2])
    }
  })

  it("keeps the namespaces of the other servers working while one is frozen, and its own after", async () => {
    const frozen = count - 1
    const upNsp = NAMESPACES.filter((n) => home(n) !== frozen)
    const frozenNsp = NAMESPACES.filter((n) => home(n) === frozen)
    await databases[frozen]!.pause()
    try {
      // A frozen server answers nothing and reports nothing: its namespaces' publishes hang until
      // publishTimeout, the others go on.
      frozenNsp.forEach((nsp) => nodes[0]!.io.of(nsp).emit("lost", nsp))
      for (const nsp of upNsp) {
        const each = await connectEach(nsp)
        const got = collect(each[2]!, "still", 1)
        nodes[0]!.io.of(nsp).emit("still", nsp)
        expect((await got)[0]![0]).toBe(nsp)
      }
    } finally {
      await databases[frozen]!.resume()
    }
    await waitForMembers(frozenNsp)
    for (const nsp of frozenNsp) {
      const each = await connectEach(nsp)
      const got = collect(each[1]!, "thawed", 1, 10_000)
      nodes[2]!.io.of(nsp).emit("thawed", nsp)
      expect((await got)[0]![0]).toBe(nsp)
    }
  }, 60_000)

  it("keeps the namespaces of the other servers working while one is stopped, and its own after its restart", async () => {
    const down = 0
    const upNsp = NAMESPACES.filter((n) => home(n) !== down)
    const downNsp = NAMESPACES.filter((n) => home(n) === down)
    await databases[down]!.stop()
    try {
      for (const nsp of upNsp) {
        const each = await connectEach(nsp)
        const got = collect(each[2]!, "still", 1)
        nodes[0]!.io.of(nsp).emit("still", nsp)
        expect((await got)[0]![0]).toBe(nsp)
        expect(await nodes[1]!.io.of(nsp).serverSideEmitWithAck("ping")).toEqual([nsp, nsp])
      }
    } finally {
      await databases[down]!.start()
    }
    // Its namespaces come back by themselves: LISTEN again, members again, broadcasts again.
    await waitForMembers(downNsp)
    for (const nsp of downNsp) {
      const each = await connectEach(nsp)
      await eventually(
        async () => {
          const got = collect(each[2]!, "back", 1, 500).then(
            () => true,
            () => false,
          )
          nodes[0]!.io.of(nsp).emit("back", nsp)
          return got
        },
        { timeout: 15_000, message: `a broadcast in ${nsp} after the restart` },
      )
    }
  }, 60_000)
})

describe("createAdapter(pools) and new Emitter(pools), bad input", () => {
  it("refuses an empty list, one server listed twice, and what is not a pool, naming the option", async () => {
    const a = new pg.Pool({ connectionString: "postgres://u@db1:5432/app" })
    const b = new pg.Pool({ connectionString: "postgres://u@db1/app" })
    try {
      expect(() => createAdapter([])).toThrow(/Invalid option pools: the list of pools is empty/)
      expect(() => new Emitter([], "/")).toThrow(/Invalid option pools/)
      // Same host, port (5432 by default) and database: the same server, twice.
      expect(() => createAdapter([a, b])).toThrow(
        /pools\[0\] and pools\[1\] are both named "db1:5432\/app"/,
      )
      expect(() =>
        createAdapter([
          { pool: a, name: "x" },
          { pool: b, name: "y" },
        ]),
      ).not.toThrow()
      expect(() => createAdapter([a, {} as pg.Pool])).toThrow(/pool must be a pg.Pool/)
      expect(() => new Emitter([a, null as never])).toThrow(/pool must be a pg.Pool/)
    } finally {
      await Promise.all([a.end(), b.end()])
    }
  })
})

describe("makeAdapterFactoryPools (the Effect way)", () => {
  it("places namespaces over the servers like createAdapter(pools), on the application's context", async () => {
    const databases = await Promise.all([startPrivatePostgres(), startPrivatePostgres()])
    const pools = openPools(databases)
    const spans: Array<string> = []
    const tracer = Tracer.make({
      span(options) {
        spans.push(options.name)
        return new Tracer.NativeSpan(options)
      },
    })
    try {
      const program = Effect.gen(function* () {
        const adapter = yield* makeAdapterFactoryPools(pools, { channelPrefix: "fxp" })
        const servers = yield* Effect.acquireRelease(
          Effect.promise(() => Promise.all([startServer({ adapter }), startServer({ adapter })])),
          (servers) => Effect.promise(() => Promise.all(servers.map((s) => s.close()))),
        )
        const names = Placement.decodeServersSync(pools, Placement.poolSettings).map((s) => s.name)
        const placement = Placement.make(names)
        const nsps = NAMESPACES.slice(0, 8)
        expect(new Set(nsps.map((n) => placement.indexOf(channelName("fxp", n)))).size).toBe(2)
        for (const nsp of nsps) {
          yield* Effect.promise(async () => {
            servers.forEach((server) => server.io.of(nsp))
            const client = await connectClient(servers[1]!.url, { nsp })
            try {
              await eventually(
                async () => (await servers[0]!.io.of(nsp).adapter.serverCount()) === 2,
              )
              const got = collect(client, "hello", 1)
              servers[0]!.io.of(nsp).emit("hello", nsp)
              expect((await got)[0]![0]).toBe(nsp)
            } finally {
              client.disconnect()
            }
          })
        }
        // The namespaces' work runs on the application's context: its tracer sees their spans.
        expect(spans).toContain("PostgresAdapter.broadcast")
      })
      await Effect.runPromise(program.pipe(Effect.scoped, Effect.withTracer(tracer)))
      const bad = await Effect.runPromise(
        Effect.flip(makeAdapterFactoryPools([], {}).pipe(Effect.scoped)),
      )
      expect(bad.message).toMatch(/Invalid option pools/)
    } finally {
      await Promise.all(pools.map((pool) => pool.end()))
      await Promise.all(databases.map((db) => db.destroy()))
    }
  }, 60_000)
})
