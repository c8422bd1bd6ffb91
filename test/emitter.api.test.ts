/**
 * The emitter as a new user meets it: send order kept from its very first call (calls made
 * while it sets itself up are not raced), failures as instances of exported tagged classes, and
 * generics that take what Socket.IO's take (event maps declared as interfaces;
 * `serverSideEmitWithAck` typed like `io.serverSideEmitWithAck`). The type tests are checked by
 * `tsc --noEmit` (the tests are part of the project), the rest against a real server.
 */
import type { Server } from "socket.io"
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, beforeAll, describe, expect, expectTypeOf, it } from "vitest"
import { Emitter, PublishError, RequestTimeoutError, type EventNamesWithAck } from "../src/index.js"
import { collect, eventually } from "./utils/cluster.js"
import { startCluster, type Cluster } from "./utils/nodes.js"
import { makePool } from "./utils/postgres.js"

interface EmitEvents {
  n: (n: number) => void
  hello: (to: string, times: number) => void
}

interface ServerSideEvents {
  health: (answer: (status: string) => void) => void
  load: (window: number, answer: (error: Error, load: number) => void) => void
  reload: (version: number) => void
}

describe("the emitter's types", () => {
  it("takes event maps declared as interfaces, as Socket.IO's Server does", () => {
    const emitter = new Emitter<EmitEvents, ServerSideEvents>(makePool())
    expectTypeOf(emitter.emit).toBeCallableWith("n", 1)
    expectTypeOf(emitter.to("room").emit).toBeCallableWith("hello", "you", 2)
    expectTypeOf(emitter.serverSideEmit).toBeCallableWith("reload", 2)
    // @ts-expect-error: not an event of EmitEvents
    void (() => emitter.emit("nope", 1))
    // @ts-expect-error: a number is expected
    void (() => emitter.emit("n", "1"))
    void emitter.close()
  })

  it("types serverSideEmitWithAck like io.serverSideEmitWithAck: no callback, answers typed", () => {
    const emitter = new Emitter<EmitEvents, ServerSideEvents>(makePool())
    const health = () => emitter.serverSideEmitWithAck("health")
    expectTypeOf(health).returns.toEqualTypeOf<Promise<Array<string>>>()
    // An (error, value) acknowledgement answers with its value.
    const load = () => emitter.serverSideEmitWithAck("load", 60)
    expectTypeOf(load).returns.toEqualTypeOf<Promise<Array<number>>>()
    expectTypeOf<EventNamesWithAck<ServerSideEvents>>().toEqualTypeOf<"health" | "load">()
    // @ts-expect-error: "reload" takes no acknowledgement
    void (() => emitter.serverSideEmitWithAck("reload", 1))
    // @ts-expect-error: the acknowledgement is the emitter's, not the caller's
    void (() => emitter.serverSideEmitWithAck("health", () => {}))
    // Untyped: anything goes, the answers are any.
    const untyped = new Emitter(makePool())
    expectTypeOf(untyped.serverSideEmitWithAck).toBeCallableWith("anything", 1, "two")
    void emitter.close()
    void untyped.close()
  })

  it("matches the signature of Socket.IO's own serverSideEmitWithAck", () => {
    type Theirs = Server<{}, EmitEvents, ServerSideEvents>["serverSideEmitWithAck"]
    type Ours = Emitter<EmitEvents, ServerSideEvents>["serverSideEmitWithAck"]
    expectTypeOf<Parameters<Ours>>().toEqualTypeOf<Parameters<Theirs>>()
  })
})

describe("the emitter against a server", () => {
  let cluster: Cluster
  let client: ClientSocket

  beforeAll(async () => {
    cluster = await startCluster("emitter_api", { nodes: 1 })
    await cluster.nodes[0]!.adapter().ready
    client = await cluster.connect(0)
  })

  afterAll(async () => {
    await cluster?.close()
  })

  const emitterOf = () => {
    const pool = makePool({ max: 4 })
    const errors: Array<Error> = []
    const emitter = new Emitter<EmitEvents, ServerSideEvents>(pool, "/", {
      channelPrefix: cluster.id,
      tableName: cluster.id,
      requestsTimeout: 1000,
      errorHandler: (error) => void errors.push(error),
    })
    return {
      emitter,
      errors,
      close: async () => {
        await emitter.close()
        await pool.end()
      },
    }
  }

  it("keeps send order from its first call, when calls are not awaited", async () => {
    for (let round = 0; round < 3; round++) {
      const { emitter, close } = emitterOf()
      try {
        const got = collect(client, "n", 20)
        const sent = Array.from({ length: 20 }, (_, n) => emitter.emit("n", n))
        expect(await got).toEqual(Array.from({ length: 20 }, (_, n) => [n]))
        await Promise.all(sent)
      } finally {
        await close()
      }
    }
  })

  it("rejects a request some server did not answer with an exported tagged error", async () => {
    const { emitter, close } = emitterOf()
    try {
      // The server has no "health" handler: it never answers. On a busy machine the emitter's first
      // request may end before it heard of the server (no server asked, no answer missing); its
      // heartbeats then make it known.
      let failure: any
      await eventually(
        async () => {
          failure = await emitter.serverSideEmitWithAck("health").catch((error) => error)
          return !Array.isArray(failure)
        },
        { timeout: 15_000, message: "the emitter asks the server" },
      )
      expect(failure).toBeInstanceOf(RequestTimeoutError)
      expect(failure._tag).toBe("RequestTimeoutError")
      expect(failure.missing).toBe(1)
      expect(failure.message).toBe("timeout reached: missing 1 responses")
    } finally {
      await close()
    }
  })

  it("rejects a publish PostgreSQL refused with a PublishError", async () => {
    const { emitter, errors, close } = emitterOf()
    await close()
    // Its pool ended: nothing can be sent.
    const failure = await emitter.emit("n", 1).catch((error) => error)
    expect(failure).toBeInstanceOf(PublishError)
    expect(failure._tag).toBe("PublishError")
    expect(failure.reason).toBe("Database")
    expect(errors).toEqual([failure])
  })
})
