/**
 * Where each channel lives over several PostgreSQL servers: server names every node derives alike,
 * and rendezvous hashing of channel names over them.
 */
import { createHash } from "node:crypto"
import { createRequire } from "node:module"
import { assert, describe, it } from "@effect/vitest"
import * as Result from "effect/Result"
import * as fc from "fast-check"
import pg from "pg"
import { channelName, roomChannelName, shortIdentifier } from "../src/Channel.js"
import * as Placement from "../src/Placement.js"

// pg-connection-string is pg's dependency, not ours: reach it from pg, wherever npm put it.
const requireFromPg = createRequire(createRequire(import.meta.url).resolve("pg"))
const reference = requireFromPg("pg-connection-string") as {
  parse: (s: string) => Record<string, unknown>
}

/** The server the rule says: the greatest weight. */
const bruteForce = (names: ReadonlyArray<string>, channel: string): string =>
  names.reduce((best, name) =>
    Buffer.compare(Placement.weight(name, channel), Placement.weight(best, channel)) > 0
      ? name
      : best,
  )

const counts = (placement: Placement.Placement, channels: ReadonlyArray<string>) => {
  const byName = new Map(placement.names.map((name) => [name, 0]))
  for (const channel of channels) {
    const name = placement.nameOf(channel)
    byName.set(name, byName.get(name)! + 1)
  }
  return byName
}

/** The largest deviation of a server's count from the mean, as a fraction of the mean. */
const maxDeviation = (byName: Map<string, number>, total: number) => {
  const mean = total / byName.size
  return Math.max(...[...byName.values()].map((n) => Math.abs(n - mean) / mean))
}

const namespaces = (n: number, prefix = "socket.io") =>
  Array.from({ length: n }, (_, i) => channelName(prefix, `/tenant-${i}`))
const rooms = (n: number, prefix = "socket.io", nsp = "/") =>
  Array.from({ length: n }, (_, i) => roomChannelName(prefix, nsp, `room-${i}`))

const GOLDEN = ["pg-c:5432/app", "pg-a:5432/app", "pg-c:5432/app", "pg-b:5432/app"]

/** Server names as users would have them: derived, and explicit ones. */
const serverLists: ReadonlyArray<ReadonlyArray<string>> = [
  ["pg-a:5432/app", "pg-b:5432/app"],
  ["pg-a:5432/app", "pg-b:5432/app", "pg-c:5432/app"],
  ["eu-1", "eu-2", "us-1", "us-2", "ap-1"],
]

/** A server name: short, long, ASCII, unicode, with separators. */
const serverNameArb = fc.oneof(
  fc.string({ minLength: 1, maxLength: 30 }),
  fc.string({ unit: "grapheme", minLength: 1, maxLength: 20 }),
  fc.string({ unit: "binary", minLength: 1, maxLength: 200 }),
  fc
    .tuple(fc.domain(), fc.integer({ min: 1, max: 65535 }), fc.string({ maxLength: 10 }))
    .map(([host, port, db]) => `${host}:${port}/${db}`),
)
const serverNamesArb = (min: number, max: number) =>
  fc.uniqueArray(serverNameArb, { minLength: min, maxLength: max })

/** Channel names as Channel.ts makes them: namespace and room channels, short and hashed. */
const channelArb = fc.oneof(
  fc.string({ maxLength: 40 }).map((nsp) => channelName("socket.io", `/${nsp}`)),
  fc
    .tuple(fc.string({ maxLength: 20 }), fc.string({ unit: "grapheme", maxLength: 80 }))
    .map(([nsp, room]) => roomChannelName("socket.io", `/${nsp}`, room)),
  fc.string({ unit: "binary", minLength: 60, maxLength: 300 }).map(shortIdentifier),
)

/** Parts of connection strings, awkward ones included. */
const part = fc.oneof(
  fc.constantFrom("db", "db-2.example.com", "[::1]", "%2Ftmp%2Fpg", "", "10.0.0.5", "h%20x"),
  fc.webSegment(),
)
/** Connection strings of every form node-postgres reads. */
const connectionString = fc.oneof(
  fc
    .record({
      scheme: fc.constantFrom("postgres://", "postgresql://", "socket:", ""),
      auth: fc.constantFrom("", "u@", "u:p@", "u:p%40x@"),
      host: part,
      port: fc.constantFrom("", ":5432", ":6000", ":0"),
      path: fc.oneof(
        fc.constant(""),
        fc.webSegment().map((s) => `/${s}`),
        fc.constant("/a b"),
      ),
      query: fc.constantFrom(
        "",
        "?host=/tmp/s",
        "?port=7000",
        "?db=x",
        "?host=h2&port=1&port=2",
        "?sslmode=disable",
        "?host=",
      ),
    })
    .map((p) => `${p.scheme}${p.auth}${p.host}${p.port}${p.path}${p.query}`),
  fc.tuple(fc.webPath(), fc.webSegment()).map(([dir, db]) => `/${dir} ${db}`),
  fc.webUrl({ validSchemes: ["postgres"], withQueryParameters: true }),
)

describe("serverName", () => {
  it("is host:port/database from separate settings, with node-postgres's defaults", () => {
    assert.strictEqual(
      Placement.serverName({ host: "db1", port: 5433, database: "app" }),
      "db1:5433/app",
    )
    assert.strictEqual(Placement.serverName({ host: "db1", port: "5433" }), "db1:5433")
    assert.strictEqual(Placement.serverName({}), "localhost:5432")
    assert.strictEqual(Placement.serverName(undefined), "localhost:5432")
    assert.strictEqual(Placement.serverName({ database: "app" }), "localhost:5432/app")
  })

  it("takes host, port and database from a connection string, which wins as in node-postgres", () => {
    const name = (connectionString: string, rest: Placement.ConnectionSettings = {}) =>
      Placement.serverName({ ...rest, connectionString })
    assert.strictEqual(name("postgres://u:secret@db2:6000/chat"), "db2:6000/chat")
    assert.strictEqual(name("postgresql://db2/chat", { port: 7000, host: "x" }), "db2:5432/chat")
    assert.strictEqual(name("postgres://[::1]:5433/chat"), "[::1]:5433/chat")
    assert.strictEqual(name("postgres://u@/chat?host=/tmp/pg"), "/tmp/pg:5432/chat")
    assert.strictEqual(
      name("postgres://%2Fvar%2Frun%2Fpostgresql/chat"),
      "/var/run/postgresql:5432/chat",
    )
    assert.strictEqual(name("/var/run/postgresql chat"), "/var/run/postgresql:5432/chat")
    assert.strictEqual(name("/var/run/postgresql", { port: 5433 }), "/var/run/postgresql:5433")
    assert.strictEqual(name("socket:/tmp/pg?db=chat&port=5433"), "/tmp/pg:5433/chat")
    assert.strictEqual(name("postgres://db2:6000/chat?port=6001"), "db2:6001/chat")
  })

  it("never puts credentials in the name", () => {
    const name = Placement.serverName({
      connectionString: "postgres://alice:s3cr3t@db2:6000/chat?password=other",
    })
    assert.notInclude(name, "s3cr3t")
    assert.notInclude(name, "alice")
  })

  it("reads connection strings as pg-connection-string does (host, port, database)", () => {
    fc.assert(
      fc.property(connectionString, (s) => {
        let expected: Record<string, unknown>
        try {
          expected = reference.parse(s)
        } catch {
          return // pg cannot use it: ours returns what it can, checked nowhere
        }
        const ours = Placement.parseConnectionString(s)
        for (const key of ["host", "port", "database"] as const) {
          assert.strictEqual(key in ours, key in expected, `${key} present for ${s}`)
          assert.strictEqual(ours[key], expected[key] as any, `${key} of ${s}`)
        }
      }),
      { numRuns: 2000 },
    )
  })

  it("names the server node-postgres connects to (its ConnectionParameters)", () => {
    const ConnectionParameters = requireFromPg("./connection-parameters.js") as new (
      config: object,
    ) => { host: string; port: number; database: string | undefined; user: string | undefined }
    const saved = { ...process.env }
    // The name ignores the environment: compare with pg where it has none.
    for (const key of ["PGHOST", "PGPORT", "PGDATABASE", "PGUSER"]) delete process.env[key]
    try {
      const settings = fc.record(
        {
          host: fc.constantFrom("db", "10.0.0.5", "/tmp/sock", "::1", ""),
          port: fc.oneof(fc.integer({ min: 1, max: 65535 }), fc.constantFrom("6000", "")),
          database: fc.oneof(fc.webSegment(), fc.constant("")),
          connectionString: connectionString,
        },
        { requiredKeys: [] },
      )
      fc.assert(
        fc.property(settings, (s) => {
          if (s.connectionString !== undefined) {
            try {
              reference.parse(s.connectionString)
            } catch {
              return // pg cannot connect with it
            }
          }
          const pg = new ConnectionParameters({ ...s, user: "zz-user" })
          const host = pg.host.includes(":") && !pg.host.startsWith("/") ? `[${pg.host}]` : pg.host
          const name = Placement.serverName(s)
          const where = JSON.stringify(s)
          // Without a database pg connects to the user's: the name says none.
          if (name === `${host}:${pg.port}`) {
            assert.oneOf(pg.database, [undefined, pg.user], where)
          } else {
            assert.strictEqual(name, `${host}:${pg.port}/${pg.database}`, where)
          }
        }),
        { numRuns: 1000 },
      )
    } finally {
      process.env = saved
    }
  })

  it("names a pg.Pool from its options, without connecting", async () => {
    const pool = new pg.Pool({ connectionString: "postgres://u:p@pg-b.internal:6543/app" })
    try {
      assert.strictEqual(
        Placement.serverName(Placement.poolSettings(pool)),
        "pg-b.internal:6543/app",
      )
    } finally {
      await pool.end()
    }
  })
})

describe("decodeServers", () => {
  const pool = (settings: Placement.ConnectionSettings) => ({ options: settings })
  const decode = (pools: any) => Placement.decodeServers(pools, Placement.poolSettings)

  it("names one pool, a list of pools and named entries", () => {
    const a = pool({ host: "a" })
    const b = pool({ host: "b", database: "x" })
    assert.deepStrictEqual(Result.getOrThrow(decode(a)), [{ name: "a:5432", pool: a }])
    assert.deepStrictEqual(Result.getOrThrow(decode({ pool: a, name: "z" })), [
      { name: "z", pool: a },
    ])
    assert.deepStrictEqual(Result.getOrThrow(decode([a, { pool: b }, { pool: a, name: "z" }])), [
      { name: "a:5432", pool: a },
      { name: "b:5432/x", pool: b },
      { name: "z", pool: a },
    ])
  })

  it("rejects two entries with one name, naming the option and both entries", () => {
    const failure = (pools: any) => {
      const result = decode(pools)
      assert.isTrue(Result.isFailure(result))
      return (result as Result.Failure<never, any>).failure
    }
    const sameServer = failure([pool({ host: "a" }), pool({ host: "b" }), pool({ host: "a" })])
    assert.strictEqual(sameServer._tag, "ConfigError")
    assert.strictEqual(sameServer.option, "pools")
    assert.include(sameServer.message, "Invalid option pools")
    assert.include(sameServer.message, 'pools[0] and pools[2] are both named "a:5432"')
    assert.include(sameServer.message, "{ pool, name }")
    const explicit = failure([{ pool: pool({ host: "a" }), name: "b:5432" }, pool({ host: "b" })])
    assert.include(explicit.message, 'pools[0] and pools[1] are both named "b:5432"')
    assert.throws(
      () => Placement.decodeServersSync([pool({}), pool({})], Placement.poolSettings),
      /both named "localhost:5432"/,
    )
  })

  it("rejects an empty list and names that are not non-empty strings", () => {
    const message = (pools: any) =>
      (decode(pools) as Result.Failure<unknown, { message: string }>).failure.message
    assert.include(message([]), "the list of pools is empty")
    assert.include(message([pool({}), { pool: pool({}), name: "" }]), "pools[1].name")
    assert.include(message([{ pool: pool({}), name: 42 }]), "pools[0].name")
  })
})

describe("weight", () => {
  it("is SHA-256 of UTF-8(name, NUL, channel): the rule every node and emitter computes", () => {
    fc.assert(
      fc.property(serverNameArb, channelArb, (name, channel) => {
        const input = Buffer.concat([
          Buffer.from(name, "utf8"),
          Buffer.from([0]),
          Buffer.from(channel, "utf8"),
        ])
        assert.isTrue(
          Placement.weight(name, channel).equals(createHash("sha256").update(input).digest()),
        )
      }),
    )
  })

  it("places these channels where every release has placed them", () => {
    // Changing the rule moves channels between nodes of different releases: a wire change.
    const placement = Placement.make(["pg-a:5432/app", "pg-b:5432/app", "pg-c:5432/app"])
    const where = [
      "socket.io#/",
      "socket.io#/admin",
      "socket.io$/#room-1",
      "socket.io~servers",
    ].map(placement.nameOf)
    assert.deepStrictEqual(where, GOLDEN)
  })
})

describe("make", () => {
  it("puts every channel on the one server without hashing", () => {
    const placement = Placement.make(["only"])
    fc.assert(
      fc.property(channelArb, (channel) => {
        assert.strictEqual(placement.indexOf(channel), 0)
        assert.strictEqual(placement.nameOf(channel), "only")
      }),
    )
  })

  it("places each channel on the server of greatest weight", () => {
    fc.assert(
      fc.property(serverNamesArb(2, 6), fc.array(channelArb, { maxLength: 30 }), (names, chs) => {
        const placement = Placement.make(names)
        for (const channel of chs) {
          assert.strictEqual(placement.nameOf(channel), bruteForce(names, channel))
          assert.strictEqual(names[placement.indexOf(channel)], placement.nameOf(channel))
        }
      }),
    )
  })

  it("gives every node the same placement, whatever the order of its list", () => {
    fc.assert(
      fc.property(
        serverNamesArb(2, 7).chain((names) =>
          fc.tuple(fc.constant(names), fc.shuffledSubarray(names, { minLength: names.length })),
        ),
        fc.array(channelArb, { minLength: 1, maxLength: 50 }),
        ([names, shuffled], chs) => {
          const here = Placement.make(names)
          const there = Placement.make(shuffled, { cacheSize: 0 })
          for (const channel of chs) assert.strictEqual(here.nameOf(channel), there.nameOf(channel))
        },
      ),
    )
  })

  it("moves onto an added server exactly the channels it wins, and nothing else", () => {
    const sample = namespaces(200)
    fc.assert(
      fc.property(
        serverNamesArb(2, 6),
        fc.nat(),
        fc.array(channelArb, { maxLength: 100 }),
        (all, at, chs) => {
          const added = all[at % all.length]!
          const before = Placement.make(all.filter((n) => n !== added))
          const after = Placement.make(all)
          for (const channel of [...chs, ...sample]) {
            const moved = before.nameOf(channel) !== after.nameOf(channel)
            assert.strictEqual(moved, after.nameOf(channel) === added, channel)
          }
        },
      ),
      { numRuns: 50 },
    )
  })

  it("moves only the channels of a removed server, wherever it was in the list", () => {
    const sample = [...namespaces(150), ...rooms(150)]
    fc.assert(
      fc.property(serverNamesArb(3, 7), fc.nat(), (all, at) => {
        const removed = all[at % all.length]!
        const before = Placement.make(all)
        const after = Placement.make(all.filter((n) => n !== removed))
        for (const channel of sample) {
          const was = before.nameOf(channel)
          if (was === removed) assert.notStrictEqual(after.nameOf(channel), removed)
          else assert.strictEqual(after.nameOf(channel), was, channel)
        }
      }),
      { numRuns: 50 },
    )
  })

  it("moves about 1/N of the channels when an N-th server is added", () => {
    const channels = [...namespaces(3000), ...rooms(3000)]
    for (const names of serverLists) {
      const before = Placement.make(names.slice(0, -1))
      const after = Placement.make(names)
      const moved = channels.filter((c) => before.nameOf(c) !== after.nameOf(c)).length
      const expected = channels.length / names.length
      assert.isBelow(Math.abs(moved - expected) / expected, 0.1, `${names.length} servers`)
    }
  })

  it("spreads namespace and room channels within ±20% of the mean over 2, 3 and 5 servers", () => {
    for (const names of serverLists) {
      for (const [kind, channels] of [
        ["namespaces", namespaces(1000)],
        ["rooms", rooms(10_000)],
        ["long namespaces", namespaces(1000, "p".repeat(60))],
        ["rooms of a long namespace", rooms(10_000, "socket.io", `/${"é".repeat(40)}`)],
      ] as const) {
        const byName = counts(Placement.make(names), channels)
        assert.isAtMost(
          maxDeviation(byName, channels.length),
          0.2,
          `${kind} over ${names.length}: ${JSON.stringify([...byName])}`,
        )
      }
    }
  })

  it("spreads within ±20% for any server names and channel prefix", () => {
    // 5,000 channels: ±20% of the mean is over 6 standard deviations for up to 5 servers.
    fc.assert(
      fc.property(
        serverNamesArb(2, 5),
        fc.string({ minLength: 1, maxLength: 20 }),
        fc.boolean(),
        (names, prefix, roomsOfOne) => {
          const channels = roomsOfOne ? rooms(5000, prefix, "/chat") : namespaces(5000, prefix)
          const byName = counts(Placement.make(names, { cacheSize: 0 }), channels)
          assert.isAtMost(maxDeviation(byName, channels.length), 0.2, JSON.stringify([...byName]))
        },
      ),
      { numRuns: 15 },
    )
  })

  it("places unicode, long and hashed names by their UTF-8 bytes", () => {
    const names = ["Zürich", "東京", "😀".repeat(50), "a\u0000b"]
    const placement = Placement.make(names)
    const channels = [
      channelName("socket.io", "/ünïcødé"),
      channelName("socket.io", `/${"😀".repeat(40)}`),
      roomChannelName("socket.io", "/", "x".repeat(500)),
      roomChannelName("socket.io", "/", "x".repeat(501)),
    ]
    for (const channel of channels)
      assert.strictEqual(placement.nameOf(channel), bruteForce(names, channel))
    // Composed and decomposed "é" are different names: nodes must spell them alike.
    assert.isFalse(Placement.weight("caf\u00e9", "c").equals(Placement.weight("cafe\u0301", "c")))
    // Names alike in UTF-8 (lone surrogates become U+FFFD) would tie everywhere: one name.
    assert.throws(() => Placement.make(["a\ud800", "a\udc00"]), /distinct/)
    const lone = Placement.decodeServers(
      [
        { pool: {}, name: "a\ud800" },
        { pool: {}, name: "a\udc00" },
      ],
      Placement.poolSettings,
    )
    assert.isTrue(Result.isFailure(lone))
  })

  it("answers the same from its bounded cache as without one", () => {
    fc.assert(
      fc.property(
        serverNamesArb(2, 4),
        fc.array(channelArb, { maxLength: 200 }),
        fc.integer({ min: 1, max: 20 }),
        (names, chs, cacheSize) => {
          const cached = Placement.make(names, { cacheSize })
          const uncached = Placement.make(names, { cacheSize: 0 })
          for (const channel of [...chs, ...chs]) {
            assert.strictEqual(cached.indexOf(channel), uncached.indexOf(channel))
            assert.isAtMost(cached.remembered(), cacheSize)
          }
          assert.strictEqual(uncached.remembered(), 0)
        },
      ),
    )
  })

  it("ids a list of servers whatever its order, and tells lists apart", () => {
    fc.assert(
      fc.property(
        serverNamesArb(1, 6).chain((names) =>
          fc.tuple(fc.constant(names), fc.shuffledSubarray(names, { minLength: names.length })),
        ),
        serverNameArb,
        ([names, shuffled], extra) => {
          assert.strictEqual(Placement.listId(names), Placement.listId(shuffled))
          assert.match(Placement.listId(names), /^[0-9a-f]{16}$/)
          if (!names.map(Placement.hashedForm).includes(Placement.hashedForm(extra))) {
            assert.notStrictEqual(Placement.listId(names), Placement.listId([...names, extra]))
          }
        },
      ),
    )
    assert.notStrictEqual(Placement.listId(["a\u0000b"]), Placement.listId(["a", "b"]))
  })

  it("folds where rooms live into the list's id: nodes that place rooms apart and nodes that do not are told apart", () => {
    fc.assert(
      fc.property(serverNamesArb(1, 6), (names) => {
        const apart = Placement.listId(names, { roomsApart: true })
        assert.match(apart, /^[0-9a-f]{16}$/)
        assert.notStrictEqual(apart, Placement.listId(names))
        assert.strictEqual(Placement.listId(names, { roomsApart: false }), Placement.listId(names))
        assert.strictEqual(apart, Placement.listId([...names].reverse(), { roomsApart: true }))
      }),
    )
  })

  it('places rooms apart only with several servers, a dynamic mode and roomPlacement not "namespace"', () => {
    assert.isTrue(Placement.roomsApart(2, { subscriptionMode: "dynamic" }))
    assert.isTrue(
      Placement.roomsApart(3, { subscriptionMode: "dynamic-private", roomPlacement: "room" }),
    )
    assert.isFalse(Placement.roomsApart(1, { subscriptionMode: "dynamic" }))
    assert.isFalse(Placement.roomsApart(2, { subscriptionMode: "static" }))
    assert.isFalse(Placement.roomsApart(2, {}))
    assert.isFalse(
      Placement.roomsApart(2, { subscriptionMode: "dynamic", roomPlacement: "namespace" }),
    )
  })

  it("refuses an empty list and repeated names", () => {
    assert.throws(() => Placement.make([]), /at least one server/)
    assert.throws(() => Placement.make(["a", "b", "a"]), /distinct/)
  })
})
