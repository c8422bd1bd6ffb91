/**
 * The emitter as an Effect service: `ClusterEmitter.layer` over a `pg.Pool`, against three real
 * Socket.IO servers on our adapter with real clients, through real PostgreSQL (live clock).
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type pg from "pg"
import type { Socket as ClientSocket } from "socket.io-client"
import { AdapterConfig, ClusterEmitter, Codec, Database } from "../src/effect.js"
import { startCluster, type Cluster } from "./utils/nodes.js"
import { waitFor } from "./utils/cluster.js"
import { makePool } from "./utils/postgres.js"

const everyone: ClusterEmitter.Target = { rooms: [], except: [], flags: {} }

const bytesOf = (value: unknown): Buffer => {
  if (Buffer.isBuffer(value)) return value
  if (value instanceof ArrayBuffer) return Buffer.from(value)
  if (ArrayBuffer.isView(value))
    return Buffer.from(value.buffer, value.byteOffset, value.byteLength)
  throw new Error(`not binary: ${typeof value}`)
}

/** A promise of the test harness as an Effect that fails (not dies) when it rejects. */
const fromPromise = <A>(promise: () => Promise<A>) =>
  Effect.tryPromise({ try: promise, catch: (error) => error as Error })

describe("ClusterEmitter service against 3 servers on our adapter", () => {
  let cluster: Cluster
  let pool: pg.Pool
  // clients[i] is connected to server i.
  let clients: Array<ClientSocket>

  beforeAll(async () => {
    cluster = await startCluster("emitter_effect")
    clients = await cluster.connectEach()
    await cluster.waitForMembers()
    pool = makePool({ max: 4 })
  })

  afterAll(async () => {
    await pool?.end()
    await cluster?.close()
  })

  /** The service as an application would build it: AdapterConfig and Database provided from outside. */
  const emitterLayer = () =>
    ClusterEmitter.layer.pipe(
      Layer.provide(
        Layer.succeed(
          AdapterConfig.AdapterConfig,
          AdapterConfig.decodeSync({ channelPrefix: cluster.id, tableName: cluster.id }),
        ),
      ),
      Layer.provide(Database.layerPool(pool)),
    )

  const broadcast = (event: string, args: ReadonlyArray<unknown>, target = everyone) => ({
    type: Codec.MessageType.BROADCAST,
    data: { packet: { type: 2, data: [event, ...args], nsp: "/" }, opts: target },
  })

  it.live("publish sends a broadcast that the clients of every server receive", () =>
    Effect.gen(function* () {
      const emitter = yield* ClusterEmitter.ClusterEmitter
      const bin = Buffer.from([1, 2, 3, 255])
      const received = Promise.all(clients.map((client) => waitFor(client, "fx")))
      yield* emitter.publish("/", broadcast("fx", ["hello", { bin }]))
      const got = yield* fromPromise(() => received)
      for (const [hello, nested] of got) {
        assert.strictEqual(hello, "hello")
        assert.isTrue(bytesOf((nested as { bin: unknown }).bin).equals(bin))
      }
    }).pipe(Effect.provide(emitterLayer())),
  )

  it.live("fetchSockets returns every socket of the cluster, and a room's when targeted", () =>
    Effect.gen(function* () {
      // Built in the test's scope: released when the test ends.
      const context = yield* Layer.build(emitterLayer())
      const emitter = Context.get(context, ClusterEmitter.ClusterEmitter)
      const socket = cluster.nodes[1]!.io.of("/").sockets.get(clients[1]!.id!)!
      socket.join("fx-room")
      socket.data = { name: "one" }

      const all = yield* emitter.fetchSockets("/", everyone)
      assert.strictEqual(all.missing, 0)
      assert.deepStrictEqual(
        all.responses.map((s) => s.id).sort(),
        clients.map((client) => client.id!).sort(),
      )
      const described = all.responses.find((s) => s.id === clients[1]!.id)!
      assert.deepStrictEqual(described.data, { name: "one" })
      assert.include(described.rooms, "fx-room")

      const inRoom = yield* emitter.fetchSockets("/", { ...everyone, rooms: ["fx-room"] })
      assert.deepStrictEqual(
        inRoom.responses.map((s) => s.id),
        [clients[1]!.id],
      )
      assert.strictEqual(inRoom.missing, 0)
    }),
  )

  it.live("serverSideEmitWithAck collects one answer per server", () =>
    Effect.gen(function* () {
      const emitter = yield* ClusterEmitter.ClusterEmitter
      const offs = cluster.nodes.map(({ io }, i) => {
        const handler = (ack: (answer: number) => void) => ack(i)
        io.on("fx-ask", handler)
        return () => io.off("fx-ask", handler)
      })
      yield* Effect.addFinalizer(() => Effect.sync(() => offs.forEach((off) => off())))
      const result = yield* emitter.serverSideEmitWithAck("/", ["fx-ask"])
      assert.strictEqual(result.missing, 0)
      assert.deepStrictEqual([...result.responses].sort(), [0, 1, 2])
    }).pipe(Effect.provide(emitterLayer()), Effect.scoped),
  )
})
