/**
 * Option validation: defaults are resolved, and every bad option fails with an error that names it,
 * from `AdapterConfig.decode` and from `createAdapter` alike.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Result from "effect/Result"
import * as fc from "fast-check"
import pg from "pg"
import * as AdapterConfig from "../src/AdapterConfig.js"
import { ConfigError } from "../src/Errors.js"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import { Cluster } from "../src/effect.js"
import { createAdapter, Emitter, setupPrimary } from "../src/index.js"

const decodeRight = (input: unknown): AdapterConfig.ClusterConfig => {
  const result = AdapterConfig.decode(input)
  if (Result.isFailure(result)) {
    return assert.fail(`expected valid options, got: ${result.failure.message}`)
  }
  return result.success
}

const decodeLeft = (input: unknown): ConfigError => {
  const result = AdapterConfig.decode(input)
  if (Result.isSuccess(result)) return assert.fail(`expected a ConfigError for ${String(input)}`)
  const error = result.failure
  assert.instanceOf(error, ConfigError)
  return error
}

const millis = (d: Duration.Duration) => Duration.toMillis(d)

describe("AdapterConfig.decode with valid options", () => {
  it("resolves every default for undefined and for {}", () => {
    for (const input of [undefined, {}]) {
      const config = decodeRight(input)
      assert.strictEqual(config.channelPrefix, "socket.io")
      assert.strictEqual(config.tableName, "socket_io_attachments")
      assert.strictEqual(config.payloadThreshold, 7999)
      assert.strictEqual(millis(config.cleanupInterval), 30_000)
      assert.strictEqual(millis(config.heartbeatInterval), 5_000)
      assert.strictEqual(millis(config.heartbeatTimeout), 10_000)
      assert.strictEqual(millis(config.requestsTimeout), 5_000)
      assert.strictEqual(config.createTable, true)
      assert.strictEqual(millis(config.publishTimeout), 10_000)
      assert.strictEqual(config.maxPendingPublishes, 65_536)
      assert.strictEqual(millis(config.reconnectMaxDelay), 5_000)
      assert.strictEqual(millis(config.livenessInterval), 2_500)
      assert.strictEqual(millis(config.livenessTimeout), 5_000)
      assert.strictEqual(millis(config.livenessInterval), AdapterConfig.defaults.livenessInterval)
      assert.strictEqual(millis(config.livenessTimeout), AdapterConfig.defaults.livenessTimeout)
      assert.strictEqual(config.membership, "auto")
    }
  })

  it("keeps every valid option it is given", () => {
    const config = decodeRight({
      channelPrefix: "app",
      tableName: "myschema.attachments",
      payloadThreshold: 1000,
      cleanupInterval: 60_000,
      heartbeatInterval: 1000,
      heartbeatTimeout: 3000,
      requestsTimeout: 2000,
      createTable: false,
      publishTimeout: 4000,
      maxPendingPublishes: 10,
      reconnectMaxDelay: 250,
      livenessInterval: 700,
      livenessTimeout: 900,
      membership: "namespace",
      errorHandler: () => {},
    })
    assert.strictEqual(config.channelPrefix, "app")
    assert.strictEqual(config.tableName, "myschema.attachments")
    assert.strictEqual(config.payloadThreshold, 1000)
    assert.strictEqual(millis(config.cleanupInterval), 60_000)
    assert.strictEqual(millis(config.heartbeatInterval), 1000)
    assert.strictEqual(millis(config.heartbeatTimeout), 3000)
    assert.strictEqual(millis(config.requestsTimeout), 2000)
    assert.strictEqual(config.createTable, false)
    assert.strictEqual(millis(config.publishTimeout), 4000)
    assert.strictEqual(config.maxPendingPublishes, 10)
    assert.strictEqual(millis(config.reconnectMaxDelay), 250)
    assert.strictEqual(millis(config.livenessInterval), 700)
    assert.strictEqual(millis(config.livenessTimeout), 900)
    assert.strictEqual(config.membership, "namespace")
  })

  it("caps payloadThreshold at 7999 bytes, the largest NOTIFY payload, and accepts 0", () => {
    assert.strictEqual(decodeRight({ payloadThreshold: 8000 }).payloadThreshold, 7999)
    assert.strictEqual(decodeRight({ payloadThreshold: 1_000_000 }).payloadThreshold, 7999)
    assert.strictEqual(decodeRight({ payloadThreshold: 7999 }).payloadThreshold, 7999)
    assert.strictEqual(decodeRight({ payloadThreshold: 0 }).payloadThreshold, 0)
  })

  it("defaults heartbeatTimeout to at least twice the heartbeatInterval", () => {
    assert.strictEqual(millis(decodeRight({ heartbeatInterval: 200 }).heartbeatTimeout), 10_000)
    assert.strictEqual(millis(decodeRight({ heartbeatInterval: 8000 }).heartbeatTimeout), 16_000)
  })

  it("notices a silent LISTEN connection within heartbeatTimeout by default, whatever it is", () => {
    for (const heartbeatTimeout of [3, 1000, 10_000, 30_001]) {
      const config = decodeRight({ heartbeatInterval: 1, heartbeatTimeout })
      const noticedWithin = millis(config.livenessInterval) + millis(config.livenessTimeout)
      assert.isAtMost(noticedWithin, heartbeatTimeout)
      assert.isAtLeast(millis(config.livenessInterval), 1)
    }
    // Derived from the default heartbeatTimeout of a slow heartbeat too.
    const slow = decodeRight({ heartbeatInterval: 8000 })
    assert.strictEqual(millis(slow.livenessTimeout), 8000)
  })

  it("accepts a 40-byte channel prefix and 63-byte table name parts", () => {
    assert.strictEqual(decodeRight({ channelPrefix: "p".repeat(40) }).channelPrefix, "p".repeat(40))
    const part = "t".repeat(63)
    assert.strictEqual(decodeRight({ tableName: `${part}.${part}` }).tableName, `${part}.${part}`)
  })

  it("refuses an option it does not know, naming it and the nearest known one", () => {
    const misspelled = decodeLeft({ heartbeatTimout: 20_000 })
    assert.strictEqual(misspelled.option, "heartbeatTimout")
    assert.strictEqual(
      misspelled.message,
      'unknown option "heartbeatTimout" (did you mean "heartbeatTimeout"?)',
    )
    assert.strictEqual(
      decodeLeft({ heartbeatIntervall: 1000 }).message,
      'unknown option "heartbeatIntervall" (did you mean "heartbeatInterval"?)',
    )
    assert.strictEqual(
      decodeLeft({ channelprefix: "app" }).message,
      'unknown option "channelprefix" (did you mean "channelPrefix"?)',
    )
    // Nothing near: no guess.
    assert.strictEqual(decodeLeft({ somethingElse: 1 }).message, 'unknown option "somethingElse"')
    // Undefined counts: the name is still wrong.
    assert.strictEqual(decodeLeft({ tableNme: undefined }).option, "tableNme")
  })
})

describe("AdapterConfig.decode with invalid options", () => {
  const cases: ReadonlyArray<readonly [string, Record<string, unknown>]> = [
    ["channelPrefix", { channelPrefix: 42 }],
    ["channelPrefix", { channelPrefix: "" }],
    ["channelPrefix", { channelPrefix: "p".repeat(41) }],
    ["channelPrefix", { channelPrefix: "é".repeat(21) }],
    ["channelPrefix", { channelPrefix: "a\u0000b" }],
    ["tableName", { tableName: 1 }],
    ["tableName", { tableName: "" }],
    ["tableName", { tableName: "a.b.c" }],
    ["tableName", { tableName: "a." }],
    ["tableName", { tableName: ".b" }],
    ["tableName", { tableName: "t".repeat(64) }],
    ["payloadThreshold", { payloadThreshold: "8000" }],
    ["payloadThreshold", { payloadThreshold: -1 }],
    ["payloadThreshold", { payloadThreshold: 1.5 }],
    ["payloadThreshold", { payloadThreshold: Number.NaN }],
    ["payloadThreshold", { payloadThreshold: Number.POSITIVE_INFINITY }],
    ["cleanupInterval", { cleanupInterval: 0 }],
    ["cleanupInterval", { cleanupInterval: -1000 }],
    ["cleanupInterval", { cleanupInterval: 2 ** 31 }],
    ["heartbeatInterval", { heartbeatInterval: 0 }],
    ["heartbeatInterval", { heartbeatInterval: 0.5 }],
    ["heartbeatInterval", { heartbeatInterval: Number.NaN }],
    ["heartbeatTimeout", { heartbeatTimeout: Number.POSITIVE_INFINITY }],
    ["heartbeatTimeout", { heartbeatTimeout: null }],
    ["heartbeatTimeout", { heartbeatInterval: 5000, heartbeatTimeout: 5000 }],
    ["heartbeatTimeout", { heartbeatInterval: 5000, heartbeatTimeout: 4000 }],
    ["heartbeatTimeout", { heartbeatInterval: 20_000, heartbeatTimeout: 10_000 }],
    ["requestsTimeout", { requestsTimeout: "5s" }],
    ["requestsTimeout", { requestsTimeout: -5 }],
    ["createTable", { createTable: "yes" }],
    ["createTable", { createTable: 1 }],
    ["publishTimeout", { publishTimeout: 0 }],
    ["publishTimeout", { publishTimeout: Number.NEGATIVE_INFINITY }],
    ["maxPendingPublishes", { maxPendingPublishes: 0 }],
    ["maxPendingPublishes", { maxPendingPublishes: 2.5 }],
    ["maxPendingPublishes", { maxPendingPublishes: Number.POSITIVE_INFINITY }],
    ["reconnectMaxDelay", { reconnectMaxDelay: -1 }],
    ["reconnectMaxDelay", { reconnectMaxDelay: [] }],
    ["livenessInterval", { livenessInterval: 0 }],
    ["livenessInterval", { livenessInterval: "2s" }],
    ["livenessTimeout", { livenessTimeout: -1 }],
    ["livenessTimeout", { livenessTimeout: 2 ** 31 }],
    ["errorHandler", { errorHandler: "log" }],
    ["errorHandler", { errorHandler: {} }],
    ["membership", { membership: "server" }],
    ["membership", { membership: true }],
  ]

  it("rejects each invalid option with a ConfigError that names it", () => {
    for (const [option, input] of cases) {
      const error = decodeLeft(input)
      assert.strictEqual(error.option, option, JSON.stringify(input))
      assert.include(error.message, option, JSON.stringify(input))
    }
  })

  it("rejects options that are not an object", () => {
    for (const input of [42, "options", true, [], [{ channelPrefix: "x" }]]) {
      const error = decodeLeft(input)
      assert.strictEqual(error.option, "options")
    }
  })

  it("says why heartbeatTimeout is rejected when it does not exceed heartbeatInterval", () => {
    const error = decodeLeft({ heartbeatInterval: 5000, heartbeatTimeout: 5000 })
    assert.include(error.message, "greater than heartbeatInterval")
  })

  /** Values of every JSON-ish kind but one, for each option. */
  const anyValue = fc.oneof(
    fc.string(),
    fc.double(),
    fc.integer(),
    fc.boolean(),
    fc.constant(null),
    fc.array(fc.anything(), { maxLength: 3 }),
    fc.object({ maxDepth: 1 }),
  )
  const wrongTyped: Record<string, fc.Arbitrary<unknown>> = {
    channelPrefix: anyValue.filter((v) => typeof v !== "string"),
    tableName: anyValue.filter((v) => typeof v !== "string"),
    payloadThreshold: anyValue.filter((v) => typeof v !== "number"),
    cleanupInterval: anyValue.filter((v) => typeof v !== "number"),
    heartbeatInterval: anyValue.filter((v) => typeof v !== "number"),
    heartbeatTimeout: anyValue.filter((v) => typeof v !== "number"),
    requestsTimeout: anyValue.filter((v) => typeof v !== "number"),
    createTable: anyValue.filter((v) => typeof v !== "boolean"),
    publishTimeout: anyValue.filter((v) => typeof v !== "number"),
    maxPendingPublishes: anyValue.filter((v) => typeof v !== "number"),
    reconnectMaxDelay: anyValue.filter((v) => typeof v !== "number"),
    livenessInterval: anyValue.filter((v) => typeof v !== "number"),
    livenessTimeout: anyValue.filter((v) => typeof v !== "number"),
    errorHandler: anyValue,
  }

  it("names the option whatever wrong-typed value it is given", () => {
    fc.assert(
      fc.property(
        fc
          .constantFrom(...Object.keys(wrongTyped))
          .chain((key) => fc.tuple(fc.constant(key), wrongTyped[key]!)),
        ([key, value]) => {
          const error = decodeLeft({ [key]: value })
          assert.strictEqual(error.option, key)
          assert.include(error.message, key)
        },
      ),
    )
  })

  it("rejects any millisecond option that is not a positive integer", () => {
    fc.assert(
      fc.property(
        fc.constantFrom(
          "cleanupInterval",
          "heartbeatInterval",
          "heartbeatTimeout",
          "requestsTimeout",
          "publishTimeout",
          "reconnectMaxDelay",
          "livenessInterval",
          "livenessTimeout",
        ),
        fc.oneof(
          fc.integer({ max: 0 }),
          fc.double({ noInteger: true }),
          fc.constantFrom(Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, -0),
        ),
        (key, value) => {
          const error = decodeLeft({ [key]: value })
          assert.strictEqual(error.option, key)
          assert.include(error.message, key)
        },
      ),
    )
  })

  it("decodeSync throws the ConfigError", () => {
    assert.throws(() => AdapterConfig.decodeSync({ heartbeatInterval: -1 }), /heartbeatInterval/)
  })
})

describe("createAdapter option checks", () => {
  it("throws synchronously, naming the option, before touching the pool", async () => {
    // A pool that is never queried: it opens no connection, so it needs no database.
    const pool = new pg.Pool({ host: "127.0.0.1", port: 1 })
    try {
      assert.throws(() => createAdapter(pool, { heartbeatInterval: -1 }), /heartbeatInterval/)
      assert.throws(() => createAdapter(pool, { tableName: "a.b.c" }), /tableName/)
      assert.throws(
        () => createAdapter(pool, { errorHandler: "nope" as unknown as () => void }),
        /errorHandler/,
      )
      assert.strictEqual(pool.totalCount, 0)
    } finally {
      await pool.end()
    }
  })

  it("throws a TypeError when the pool is missing", () => {
    assert.throws(() => createAdapter(null as any), TypeError)
    assert.throws(() => createAdapter(undefined as any), TypeError)
    assert.throws(() => createAdapter({} as any), TypeError)
  })
})

describe("every face refuses a misspelled option, with the nearest name", () => {
  const misspelled = /unknown option "heartbeatTimout" \(did you mean "heartbeatTimeout"\?\)/
  // Never queried: it opens no connection.
  const pool = new pg.Pool({ host: "127.0.0.1", port: 1 })

  it("createAdapter and setupPrimary throw at once", () => {
    assert.throws(() => createAdapter(pool, { heartbeatTimout: 1 } as any), misspelled)
    assert.throws(() => setupPrimary(pool, { heartbeatTimout: 1 } as any), misspelled)
  })

  it("the emitter throws, on its own names, and says which adapter options do not apply", () => {
    assert.throws(() => new Emitter(pool, "/", { heartbeatTimout: 1 } as any), misspelled)
    assert.throws(
      () => new Emitter(pool, "/", { connectionStateRecovry: true } as any),
      /unknown option "connectionStateRecovry" \(did you mean "connectionStateRecovery"\?\)/,
    )
    assert.throws(
      () => new Emitter(pool, "/", { createTable: false } as any),
      /option "createTable" does not apply to the emitter/,
    )
    // The servers' heartbeat settings are the emitter's too (which servers to wait for).
    new Emitter(pool, "/", { heartbeatInterval: 300, heartbeatTimeout: 1500 })
  })

  it("the Effect layers fail with the ConfigError", () => {
    const exit = Effect.runSyncExit(
      Layer.build(Cluster.layerPool(pool, { heartbeatTimout: 1 } as any)).pipe(Effect.scoped),
    )
    assert.isTrue(Exit.isFailure(exit))
    const error = Exit.isFailure(exit) ? exit.cause.reasons[0] : undefined
    assert.match(String((error as any)?.error?.message), misspelled)
    assert.strictEqual((error as any)?.error?.option, "heartbeatTimout")
  })
})

describe("Config recoveryTablePrefix", () => {
  it("defaults to socket_io_recovery", () => {
    assert.strictEqual(decodeRight({}).recoveryTablePrefix, "socket_io_recovery")
    assert.strictEqual(AdapterConfig.defaults.recoveryTablePrefix, "socket_io_recovery")
  })

  it("accepts a schema-qualified prefix and parts of up to 54 bytes, multi-byte included", () => {
    for (const prefix of [
      "app.recovery",
      "Mixed Case.with spaces",
      'quote".x',
      "p".repeat(54),
      `${"s".repeat(54)}.${"p".repeat(54)}`,
      "€".repeat(18),
      `${"é".repeat(27)}.${"😀".repeat(13)}aa`,
    ]) {
      assert.strictEqual(decodeRight({ recoveryTablePrefix: prefix }).recoveryTablePrefix, prefix)
    }
  })

  it("rejects a part over 54 bytes, since `_sessions` must still fit in 63, naming the option", () => {
    for (const prefix of [
      "p".repeat(55),
      `app.${"p".repeat(55)}`,
      `${"s".repeat(55)}.p`,
      "€".repeat(19),
      `${"😀".repeat(13)}abc`,
    ]) {
      const error = decodeLeft({ recoveryTablePrefix: prefix })
      assert.strictEqual(error.option, "recoveryTablePrefix", prefix)
      assert.include(error.message, "recoveryTablePrefix", prefix)
      assert.include(error.message, "54 bytes", prefix)
    }
  })

  it("rejects empty, three-part, empty-part, NUL and non-string prefixes, naming the option", () => {
    for (const prefix of ["", "a.b.c", "a.", ".b", "a\u0000b", 42, null, ["x"], {}]) {
      const error = decodeLeft({ recoveryTablePrefix: prefix })
      assert.strictEqual(error.option, "recoveryTablePrefix", JSON.stringify(prefix))
      assert.include(error.message, "recoveryTablePrefix", JSON.stringify(prefix))
    }
  })

  it("accepts a prefix iff it has one or two non-empty parts without NUL, each at most 54 bytes", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string({ unit: "binary", maxLength: 60 }),
          fc
            .tuple(
              fc.string({ unit: "binary", maxLength: 60 }),
              fc.string({ unit: "binary", maxLength: 60 }),
            )
            .map(([a, b]) => `${a}.${b}`),
          fc.string({ unit: fc.constantFrom("a", "é", "€", "😀", ".", "\u0000"), maxLength: 70 }),
        ),
        (prefix) => {
          const parts = prefix.split(".")
          const valid =
            parts.length <= 2 &&
            !prefix.includes("\u0000") &&
            parts.every((part) => part.length > 0 && Buffer.byteLength(part) <= 54)
          const result = AdapterConfig.decode({ recoveryTablePrefix: prefix })
          assert.strictEqual(Result.isSuccess(result), valid, JSON.stringify(prefix))
          if (Result.isFailure(result))
            assert.strictEqual(result.failure.option, "recoveryTablePrefix")
        },
      ),
    )
  })

  it("makes createAdapter throw synchronously for a bad prefix, before touching the pool", async () => {
    const pool = new pg.Pool({ host: "127.0.0.1", port: 1 })
    try {
      assert.throws(
        () => createAdapter(pool, { recoveryTablePrefix: "p".repeat(55) }),
        /recoveryTablePrefix/,
      )
      assert.strictEqual(pool.totalCount, 0)
    } finally {
      await pool.end()
    }
  })
})

describe("AdapterConfig.decode: subscriptionMode", () => {
  it('is "static" by default and takes the three modes', () => {
    assert.strictEqual(decodeRight({}).subscriptionMode, "static")
    for (const mode of ["static", "dynamic", "dynamic-private"] as const) {
      assert.strictEqual(decodeRight({ subscriptionMode: mode }).subscriptionMode, mode)
    }
  })

  it("refuses anything else, naming the option", () => {
    for (const mode of ["sharded", "Dynamic", "", 1, null]) {
      const error = decodeLeft({ subscriptionMode: mode })
      assert.strictEqual(error.option, "subscriptionMode")
      assert.include(error.message, "subscriptionMode")
    }
  })

  it("is an option of the emitter and of the Effect layer's AdapterConfig", async () => {
    const config = await Effect.runPromise(
      Effect.provide(
        Effect.gen(function* () {
          return yield* AdapterConfig.AdapterConfig
        }),
        AdapterConfig.layer({ subscriptionMode: "dynamic" }),
      ),
    )
    assert.strictEqual(config.subscriptionMode, "dynamic")
    const pool = new pg.Pool()
    try {
      assert.throws(
        () => new Emitter(pool, "/", { subscriptionMode: "no" as any }),
        /subscriptionMode/,
      )
    } finally {
      await pool.end()
    }
  })
})

describe("AdapterConfig.decode: roomPlacement", () => {
  it('is "room" by default and takes "room" and "namespace"', () => {
    assert.strictEqual(decodeRight({}).roomPlacement, "room")
    for (const placement of ["room", "namespace"] as const) {
      assert.strictEqual(decodeRight({ roomPlacement: placement }).roomPlacement, placement)
    }
  })

  it("refuses anything else, naming the option, in the adapter and the emitter", async () => {
    for (const placement of ["rooms", "Namespace", "", 1, null]) {
      const error = decodeLeft({ roomPlacement: placement })
      assert.strictEqual(error.option, "roomPlacement")
      assert.include(error.message, "roomPlacement")
    }
    const pool = new pg.Pool()
    try {
      assert.throws(() => new Emitter(pool, "/", { roomPlacement: "x" as any }), /roomPlacement/)
    } finally {
      await pool.end()
    }
  })
})
