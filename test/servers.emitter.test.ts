/**
 * The Effect emitter over several PostgreSQL servers (issue 14): `ClusterEmitter.layerPools(pools)`
 * against 3 Socket.IO servers given the same two embedded PostgreSQL servers
 * (`createAdapter(pools)`), real clients. Each namespace's broadcasts and questions go to the
 * server that holds its channel, as the adapters place it.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import pg from "pg"
import type { Socket as ClientSocket } from "socket.io-client"
import { roomChannelName } from "../src/Channel.js"
import { ClusterEmitter, Codec, type PostgresAdapter } from "../src/effect.js"
import * as Placement from "../src/Placement.js"
import { ConfigError } from "../src/Errors.js"
import { createAdapter } from "../src/index.js"
import {
  connectClient,
  eventually,
  startServer,
  type TestServer,
  waitFor,
} from "./utils/cluster.js"
import {
  namespaceHome,
  startPrivatePostgres,
  type PrivatePostgres,
  openPools,
} from "./utils/privatePostgres.js"

const PREFIX = "serversfx"
const NAMESPACES = Array.from({ length: 8 }, (_, i) => `/fx${i}`)
const everyone: ClusterEmitter.Target = { rooms: [], except: [], flags: {} }

const fromPromise = <A>(promise: () => Promise<A>) =>
  Effect.tryPromise({ try: promise, catch: (error) => error as Error })

describe("ClusterEmitter.layerPools over 2 PostgreSQL servers", () => {
  let databases: Array<PrivatePostgres>
  let nodes: Array<TestServer>
  const pools: Array<pg.Pool> = []
  /** clients.get(nsp)[i] is connected to node i in `nsp`. */
  const clients = new Map<string, Array<ClientSocket>>()
  let home: (nsp: string) => number

  const poolsOf = () => openPools(databases, pools)

  beforeAll(async () => {
    databases = await Promise.all([startPrivatePostgres(), startPrivatePostgres()])
    home = namespaceHome(poolsOf(), PREFIX)
    nodes = await Promise.all(
      [0, 1, 2].map(() =>
        startServer({
          adapter: createAdapter(poolsOf(), {
            channelPrefix: PREFIX,
            heartbeatInterval: 300,
            requestsTimeout: 3000,
            errorHandler: () => {},
          }),
        }),
      ),
    )
    for (const [i, node] of nodes.entries()) {
      for (const nsp of NAMESPACES)
        node.io.of(nsp).on("fx-ask", (ack: (n: number) => void) => ack(i))
    }
    for (const nsp of NAMESPACES) {
      clients.set(nsp, await Promise.all(nodes.map((node) => connectClient(node.url, { nsp }))))
    }
    await eventually(
      async () => {
        const counts = await Promise.all(
          nodes.flatMap((node) => NAMESPACES.map((nsp) => node.io.of(nsp).adapter.serverCount())),
        )
        return counts.every((count) => count === 3)
      },
      { timeout: 15_000, message: "every node counts 3 servers in every namespace" },
    )
  }, 60_000)

  afterAll(async () => {
    for (const each of clients.values()) for (const client of each) client.disconnect()
    await Promise.all((nodes ?? []).map((node) => node.close()))
    await Promise.all(pools.map((pool) => pool.end()))
    await Promise.all((databases ?? []).map((db) => db.destroy()))
  })

  const emitterLayer = () => ClusterEmitter.layerPools(poolsOf(), { channelPrefix: PREFIX })

  const broadcast = (nsp: string, event: string, args: ReadonlyArray<unknown>) => ({
    type: Codec.MessageType.BROADCAST,
    data: { packet: { type: 2, data: [event, ...args], nsp }, opts: everyone },
  })

  it.live("sends each namespace's broadcasts and questions to the server that holds it", () =>
    Effect.gen(function* () {
      // The namespaces are on both servers: a layer that sent everything to one would fail here.
      assert.strictEqual(new Set(NAMESPACES.map(home)).size, 2)
      const emitter = Context.get(yield* Layer.build(emitterLayer()), ClusterEmitter.ClusterEmitter)
      for (const nsp of NAMESPACES) {
        const each = clients.get(nsp)!
        const received = Promise.all(each.map((client) => waitFor(client, "fx")))
        yield* emitter.publish(nsp, broadcast(nsp, "fx", [nsp, Buffer.from([1, 2])]))
        for (const [said] of yield* fromPromise(() => received)) assert.strictEqual(said, nsp)

        const sockets = yield* emitter.fetchSockets(nsp, everyone)
        assert.strictEqual(sockets.missing, 0)
        assert.deepStrictEqual(
          sockets.responses.map((s) => s.id).sort(),
          each.map((client) => client.id!).sort(),
        )
        const answers = yield* emitter.serverSideEmitWithAck(nsp, ["fx-ask"])
        assert.strictEqual(answers.missing, 0)
        assert.deepStrictEqual([...answers.responses].sort(), [0, 1, 2])
      }
    }).pipe(Effect.scoped),
  )

  it.live("fails with a ConfigError naming the pools or the option", () =>
    Effect.gen(function* () {
      const [pool] = poolsOf()
      const errorOf = (layer: Layer.Layer<ClusterEmitter.ClusterEmitter, ConfigError>) =>
        Layer.build(layer).pipe(
          Effect.exit,
          Effect.map((exit) => (Exit.isFailure(exit) ? Cause.squash(exit.cause) : undefined)),
        )
      const twice = yield* errorOf(
        ClusterEmitter.layerPools([
          { pool: pool!, name: "same" },
          { pool: pool!, name: "same" },
        ]),
      )
      assert.instanceOf(twice, ConfigError)
      assert.strictEqual((twice as ConfigError).option, "pools")
      const bad = yield* errorOf(ClusterEmitter.layerPools([pool!], { requestsTimeout: -1 }))
      assert.instanceOf(bad, ConfigError)
      assert.strictEqual((bad as ConfigError).option, "requestsTimeout")
    }).pipe(Effect.scoped),
  )
})

describe("ClusterEmitter.layerPools with rooms placed apart (dynamic mode, 2 PostgreSQL servers)", () => {
  const ROOMS_PREFIX = "serversfxr"
  const ROOMS = Array.from({ length: 8 }, (_, i) => `fx:${i}`)
  let databases: Array<PrivatePostgres>
  let nodes: Array<TestServer>
  const pools: Array<pg.Pool> = []
  const clients: Array<ClientSocket> = []
  const options = { channelPrefix: ROOMS_PREFIX, subscriptionMode: "dynamic" as const }

  const poolsOf = () => openPools(databases, pools)

  beforeAll(async () => {
    databases = await Promise.all([startPrivatePostgres(), startPrivatePostgres()])
    nodes = await Promise.all(
      [0, 1].map(() =>
        startServer({
          adapter: createAdapter(poolsOf(), { ...options, errorHandler: () => {} }),
        }),
      ),
    )
    for (const node of nodes) node.io.on("connection", (socket) => socket.join(ROOMS))
    for (const node of nodes) clients.push(await connectClient(node.url))
    // Each node LISTENs on every room (on the room's server) once its client joined them.
    await eventually(
      () =>
        nodes.every(
          (node) =>
            (
              (node.io.of("/").adapter as unknown as PostgresAdapter).listenStatus().roomChannels ??
              []
            ).length >= 8,
        ),
      { timeout: 15_000, message: "every node listens on the 8 rooms" },
    )
  }, 60_000)

  afterAll(async () => {
    for (const client of clients) client.disconnect()
    await Promise.all((nodes ?? []).map((node) => node.close()))
    await Promise.all(pools.map((pool) => pool.end()))
    await Promise.all((databases ?? []).map((db) => db.destroy()))
  })

  it.live("publishes a broadcast to one room on that room's server", () =>
    Effect.gen(function* () {
      const emitter = Context.get(
        yield* Layer.build(ClusterEmitter.layerPools(poolsOf(), options)),
        ClusterEmitter.ClusterEmitter,
      )
      // The rooms are on both servers: publishing them all on the namespace's would lose some.
      const names = Placement.decodeServersSync(poolsOf(), Placement.poolSettings)
      const placement = Placement.make(names.map((server) => server.name))
      const servers = ROOMS.map((room) =>
        placement.indexOf(roomChannelName(ROOMS_PREFIX, "/", room)),
      )
      assert.strictEqual(new Set(servers).size, 2)
      for (const room of ROOMS) {
        const received = Promise.all(clients.map((client) => waitFor(client, "fxr")))
        yield* emitter.publish("/", {
          type: Codec.MessageType.BROADCAST,
          data: {
            packet: { type: 2, data: ["fxr", room], nsp: "/" },
            opts: { ...everyone, rooms: [room] },
          },
        })
        for (const [said] of yield* fromPromise(() => received)) assert.strictEqual(said, room)
      }
    }).pipe(Effect.scoped),
  )
})
