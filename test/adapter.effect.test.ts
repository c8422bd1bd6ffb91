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
import { channelName } from "../src/Channel.js"
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
})
