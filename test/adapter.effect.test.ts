/**
 * The adapter as an Effect application makes it: `makeAdapterFactory` over `Cluster.layerPool`,
 * with nothing else provided. Its work runs in the application's context: log lines reach the
 * application's logger, and broadcasts, `fetchSockets` and `serverSideEmitWithAck` are spans of the
 * application's tracer.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Logger from "effect/Logger"
import * as Tracer from "effect/Tracer"
import { channelName, roomChannelName } from "../src/Channel.js"
import { Cluster, makeAdapterFactory } from "../src/effect.js"
import { connectClient, eventually, startServer, waitFor } from "./utils/cluster.js"
import { dropTable, makePool, suiteId } from "./utils/postgres.js"

const promise = <A>(f: () => Promise<A>) => Effect.promise(f)

describe("makeAdapterFactory", () => {
  it.live(
    "runs on the cluster layers alone, logs through the application's logger and traces its public boundaries",
    () =>
      Effect.gen(function* () {
        const id = suiteId("adapter_effect")
        const pool = yield* Effect.acquireRelease(
          Effect.sync(() => makePool({ max: 4 })),
          (pool) => promise(() => dropTable(pool, id).finally(() => pool.end())),
        )
        const spans: Array<string> = []
        const tracer = Tracer.make({
          span(options) {
            spans.push(options.name)
            return new Tracer.NativeSpan(options)
          },
        })
        const lines: Array<string> = []
        const logger = Logger.make(({ message }) => {
          lines.push(Array.isArray(message) ? message.join(" ") : String(message))
        })

        yield* Effect.gen(function* () {
          const adapter = yield* makeAdapterFactory
          const cluster = yield* Effect.acquireRelease(
            promise(async () => {
              const servers = [await startServer({ adapter }), await startServer({ adapter })]
              const clients = await Promise.all(servers.map((s) => connectClient(s.url)))
              return { servers, clients }
            }),
            ({ servers, clients }) =>
              promise(async () => {
                for (const client of clients) client.disconnect()
                await Promise.all(servers.map((server) => server.close()))
              }),
          )
          const [one, two] = cluster.servers
          yield* promise(() =>
            eventually(async () => (await one!.io.of("/").adapter.serverCount()) === 2),
          )

          const received = waitFor(cluster.clients[1]!, "hello")
          one!.io.emit("hello", "world")
          assert.deepStrictEqual(yield* promise(() => received), ["world"])
          const sockets = yield* promise(() => one!.io.fetchSockets())
          assert.strictEqual(sockets.length, 2)
          two!.io.on("question", (answer: (value: string) => void) => answer("yes"))
          const answers = yield* promise(() => one!.io.serverSideEmitWithAck("question"))
          assert.deepStrictEqual(answers, ["yes"])
          for (const name of [
            "PostgresAdapter.broadcast",
            "PostgresAdapter.fetchSockets",
            "PostgresAdapter.serverSideEmitWithAck",
          ]) {
            assert.include(spans, name)
          }

          // A malformed notification is worth a warning, in the application's log.
          yield* promise(() =>
            pool.query("SELECT pg_notify($1, 'not json')", [channelName(id, "/")]),
          )
          yield* promise(() =>
            eventually(() => lines.some((line) => /skipped 1 malformed notification/.test(line))),
          )
        }).pipe(
          Effect.scoped,
          Effect.provide(Cluster.layerPool(pool, { channelPrefix: id, tableName: id })),
          Effect.provide(Logger.layer([logger])),
          Effect.withTracer(tracer),
        )
      }).pipe(Effect.scoped),
  )

  it.live(
    "takes subscriptionMode from the cluster layer's options: rooms get channels of their own",
    () =>
      Effect.gen(function* () {
        const id = suiteId("adapter_effect_dyn")
        const pool = yield* Effect.acquireRelease(
          Effect.sync(() => makePool({ max: 4 })),
          (pool) => promise(() => dropTable(pool, id).finally(() => pool.end())),
        )
        yield* Effect.gen(function* () {
          const adapter = yield* makeAdapterFactory
          const { servers, clients } = yield* Effect.acquireRelease(
            promise(async () => {
              const servers = [await startServer({ adapter }), await startServer({ adapter })]
              const clients = [await connectClient(servers[1]!.url)]
              return { servers, clients }
            }),
            ({ servers, clients }) =>
              promise(async () => {
                for (const client of clients) client.disconnect()
                await Promise.all(servers.map((server) => server.close()))
              }),
          )
          const [one, two] = servers
          yield* promise(() =>
            eventually(async () => (await one!.io.of("/").adapter.serverCount()) === 2),
          )
          // Both servers share the factory's services, so its gate: server one's publish follows the
          // LISTEN that server two's join started.
          const received = waitFor(clients[0]!, "in-room")
          two!.io.of("/").sockets.get(clients[0]!.id!)!.join("effect-room")
          one!.io.to("effect-room").emit("in-room", 1)
          assert.deepStrictEqual(yield* promise(() => received), [1])
          const status = (two!.io.of("/").adapter as any).listenStatus()
          assert.deepStrictEqual(status.roomChannels, [roomChannelName(id, "/", "effect-room")])
        }).pipe(
          Effect.scoped,
          Effect.provide(
            Cluster.layerPool(pool, {
              channelPrefix: id,
              tableName: id,
              subscriptionMode: "dynamic",
            }),
          ),
        )
      }).pipe(Effect.scoped),
  )
})
