/**
 * Channel names and SQL identifiers: `${prefix}#${nsp}` when PostgreSQL can take it, else a stable
 * shortened form that is still valid UTF-8 and at most 63 bytes.
 */
import { assert, describe, it } from "@effect/vitest"
import * as fc from "fast-check"
import {
  broadcastChannel,
  channelName,
  hasRoomChannel,
  looksLikeSocketId,
  MAX_IDENTIFIER_BYTES,
  roomChannelName,
  quoteIdentifier,
  quoteTableName,
  shortIdentifier,
  truncateUtf8,
} from "../src/Channel.js"

const bytes = (s: string) => Buffer.byteLength(s)

/** Any UTF-16 code unit, lone surrogates included (fast-check 3's `char16bits`). */
const char16bits = fc.nat({ max: 0xffff }).map((n) => String.fromCharCode(n))

/** Any code point of the Basic Multilingual Plane but the surrogates (fast-check 3's `unicode`). */
const unicodeChar = fc
  .nat({ max: 0xffff - 0x800 })
  .map((n) => String.fromCharCode(n < 0xd800 ? n : n + 0x800))

/** True when `s` has no lone surrogate, i.e. it survives UTF-8 unchanged. */
const isWellFormed = (s: string) => Buffer.from(s).toString() === s

/** A channel prefix as Config allows it: non-empty, no NUL, at most 40 bytes. */
const prefix = fc
  .oneof(
    fc.constant("socket.io"),
    fc.string({ minLength: 1, maxLength: 40 }),
    fc.string({ unit: "binary", minLength: 1, maxLength: 15 }),
  )
  .filter((p) => bytes(p) <= 40 && !p.includes("\u0000"))

/**
 * Namespace names of every kind: short and long, ASCII and astral, with quotes, NULs and (from
 * `char16bits`) lone surrogates.
 */
const namespace = fc.oneof(
  fc.string({ maxLength: 80 }),
  fc.string({ unit: unicodeChar, maxLength: 80 }),
  fc.string({ unit: "binary", maxLength: 80 }),
  fc.string({ unit: "binary", minLength: 40, maxLength: 500 }),
  fc.string({ unit: char16bits, maxLength: 80 }),
  fc.string({
    unit: fc.constantFrom("a", "é", "€", "😀", '"', "\u0000", "/", "#"),
    maxLength: 200,
  }),
  fc.string({ maxLength: 60 }).map((s) => `/${s}`),
)

describe("channelName", () => {
  it("is `${prefix}#${nsp}` for the names of @socket.io/postgres-adapter", () => {
    assert.strictEqual(channelName("socket.io", "/"), "socket.io#/")
    assert.strictEqual(channelName("socket.io", "/admin"), "socket.io#/admin")
    assert.strictEqual(channelName("app", '/a"; DROP TABLE x; --'), 'app#/a"; DROP TABLE x; --')
  })

  it("keeps a 63-byte name and shortens a 64-byte one", () => {
    const fits = `/${"x".repeat(63 - "socket.io#/".length)}`
    assert.strictEqual(bytes(channelName("socket.io", fits)), 63)
    assert.strictEqual(channelName("socket.io", fits), `socket.io#${fits}`)
    const over = `${fits}x`
    const shortened = channelName("socket.io", over)
    assert.notStrictEqual(shortened, `socket.io#${over}`)
    assert.isAtMost(bytes(shortened), MAX_IDENTIFIER_BYTES)
    assert.match(shortened, /^socket\.io#\/x+~[0-9a-f]{16}$/)
  })

  it("never splits a multi-byte character when shortening", () => {
    for (const char of ["é", "€", "😀"]) {
      for (let n = 20; n < 40; n++) {
        const channel = channelName("socket.io", `/${char.repeat(n)}`)
        assert.isAtMost(bytes(channel), MAX_IDENTIFIER_BYTES)
        assert.isTrue(isWellFormed(channel), `${char} x ${n}`)
      }
    }
  })

  it("maps a name with NUL characters to one without", () => {
    const channel = channelName("socket.io", "/a\u0000b")
    assert.isFalse(channel.includes("\u0000"))
    assert.notStrictEqual(channel, channelName("socket.io", "/ab"))
  })

  it("is `${prefix}#${nsp}` whenever that fits in 63 bytes without NUL", () => {
    fc.assert(
      fc.property(prefix, namespace, (p, nsp) => {
        const full = `${p}#${nsp}`
        if (bytes(full) <= MAX_IDENTIFIER_BYTES && !full.includes("\u0000")) {
          assert.strictEqual(channelName(p, nsp), full)
        }
      }),
    )
  })

  it("is at most 63 bytes, has no NUL, is deterministic, and is valid UTF-8 when the name is", () => {
    fc.assert(
      fc.property(prefix, namespace, (p, nsp) => {
        const channel = channelName(p, nsp)
        assert.isAtMost(bytes(channel), MAX_IDENTIFIER_BYTES)
        assert.isFalse(channel.includes("\u0000"))
        assert.strictEqual(channelName(p, nsp), channel)
        if (isWellFormed(p) && isWellFormed(nsp)) assert.isTrue(isWellFormed(channel))
      }),
    )
  })

  it("gives distinct (well-formed) namespaces distinct channels, as PostgreSQL sees them", () => {
    fc.assert(
      fc.property(prefix, namespace, namespace, (p, a, b) => {
        fc.pre(a !== b && isWellFormed(a) && isWellFormed(b))
        assert.isFalse(Buffer.from(channelName(p, a)).equals(Buffer.from(channelName(p, b))))
      }),
    )
  })

  it("gives distinct long namespaces sharing a long common start distinct channels", () => {
    fc.assert(
      fc.property(
        prefix,
        fc.string({ unit: "binary", minLength: 60, maxLength: 200 }),
        fc.string({ unit: "binary", minLength: 1, maxLength: 20 }),
        fc.string({ unit: "binary", minLength: 1, maxLength: 20 }),
        (p, start, endA, endB) => {
          fc.pre(endA !== endB)
          const a = channelName(p, `/${start}${endA}`)
          const b = channelName(p, `/${start}${endB}`)
          assert.notStrictEqual(a, b)
          assert.isAtMost(bytes(a), MAX_IDENTIFIER_BYTES)
          assert.isAtMost(bytes(b), MAX_IDENTIFIER_BYTES)
        },
      ),
    )
  })
})

describe("truncateUtf8", () => {
  it("gives the longest prefix within the byte budget, on a character boundary", () => {
    fc.assert(
      fc.property(
        fc.string({ unit: "binary", maxLength: 100 }),
        fc.integer({ min: 0, max: 120 }),
        (s, max) => {
          const cut = truncateUtf8(s, max)
          assert.isTrue(s.startsWith(cut))
          assert.isAtMost(bytes(cut), max)
          assert.isTrue(isWellFormed(cut))
          if (cut.length < s.length) {
            const next = String.fromCodePoint(s.codePointAt(cut.length)!)
            assert.isAbove(bytes(cut) + bytes(next), max)
          }
        },
      ),
    )
  })
})

describe("quoteIdentifier and quoteTableName", () => {
  it("wraps an identifier in double quotes and doubles the quotes inside", () => {
    assert.strictEqual(quoteIdentifier("plain"), '"plain"')
    assert.strictEqual(quoteIdentifier('a"b'), '"a""b"')
    assert.strictEqual(quoteIdentifier('"; DROP TABLE x; --'), '"""; DROP TABLE x; --"')
    assert.strictEqual(quoteIdentifier("Mixed Case"), '"Mixed Case"')
  })

  it("rejects an identifier holding NUL", () => {
    assert.throws(() => quoteIdentifier("a\u0000b"), TypeError)
  })

  it("quotes each part of a schema-qualified table name", () => {
    assert.strictEqual(quoteTableName("a.b"), '"a"."b"')
    assert.strictEqual(quoteTableName("socket_io_attachments"), '"socket_io_attachments"')
    assert.strictEqual(quoteTableName('s"x.t'), '"s""x"."t"')
  })

  it("quotes any identifier so that unquoting gives it back", () => {
    fc.assert(
      fc.property(
        fc.string({ unit: "binary", maxLength: 40 }).filter((s) => !s.includes("\u0000")),
        (identifier) => {
          const quoted = quoteIdentifier(identifier)
          assert.isTrue(quoted.startsWith('"') && quoted.endsWith('"'))
          const inner = quoted.slice(1, -1)
          // Every quote inside comes in a pair, so none can end the identifier early.
          assert.notMatch(inner.replaceAll('""', ""), /"/)
          assert.strictEqual(inner.replaceAll('""', '"'), identifier)
        },
      ),
    )
  })
})

describe("shortIdentifier", () => {
  /** Identifiers of every kind, around the 63-byte limit and well past it. */
  const name = fc.oneof(
    fc.string({ minLength: 1, maxLength: 80 }),
    fc.string({ unit: "binary", minLength: 1, maxLength: 80 }),
    fc.string({ unit: "binary", minLength: 40, maxLength: 300 }),
    fc.string({ unit: char16bits, minLength: 1, maxLength: 80 }),
    fc.string({ unit: fc.constantFrom("a", "é", "€", "😀", '"', "\u0000", "_"), maxLength: 120 }),
    fc.integer({ min: 55, max: 75 }).map((n) => "x".repeat(n)),
  )

  it("keeps a name of up to 63 bytes, and shortens a longer one to prefix~16 hex digits", () => {
    assert.strictEqual(
      shortIdentifier("socket_io_recovery_packets_created_at"),
      "socket_io_recovery_packets_created_at",
    )
    assert.strictEqual(shortIdentifier("x".repeat(63)), "x".repeat(63))
    const shortened = shortIdentifier("x".repeat(64))
    assert.match(shortened, /^x{46}~[0-9a-f]{16}$/)
    assert.strictEqual(bytes(shortened), MAX_IDENTIFIER_BYTES)
  })

  it("is what channelName gives for `${prefix}#${nsp}`", () => {
    for (const nsp of ["/", "/admin", `/${"n".repeat(100)}`, "/😀".repeat(30)]) {
      assert.strictEqual(channelName("socket.io", nsp), shortIdentifier(`socket.io#${nsp}`))
    }
  })

  it("is the name itself whenever it fits in 63 bytes without NUL", () => {
    fc.assert(
      fc.property(name, (n) => {
        if (bytes(n) <= MAX_IDENTIFIER_BYTES && !n.includes("\u0000")) {
          assert.strictEqual(shortIdentifier(n), n)
        }
      }),
    )
  })

  it("is at most 63 bytes, has no NUL, is stable, and is valid UTF-8 when the name is", () => {
    fc.assert(
      fc.property(name, (n) => {
        const short = shortIdentifier(n)
        assert.isAtMost(bytes(short), MAX_IDENTIFIER_BYTES)
        assert.isFalse(short.includes("\u0000"))
        assert.strictEqual(shortIdentifier(n), short)
        if (isWellFormed(n)) assert.isTrue(isWellFormed(short))
      }),
    )
  })

  it("gives distinct (well-formed) names distinct identifiers, as PostgreSQL sees them", () => {
    fc.assert(
      fc.property(name, name, (a, b) => {
        fc.pre(a !== b && isWellFormed(a) && isWellFormed(b))
        assert.isFalse(Buffer.from(shortIdentifier(a)).equals(Buffer.from(shortIdentifier(b))))
      }),
    )
  })

  it("gives the recovery indexes of the longest prefixes distinct names", () => {
    const base = "p".repeat(54)
    const packets = shortIdentifier(`${base}_packets_created_at`)
    const sessions = shortIdentifier(`${base}_sessions_expires_at`)
    assert.notStrictEqual(packets, sessions)
    assert.isAtMost(bytes(packets), MAX_IDENTIFIER_BYTES)
    assert.isAtMost(bytes(sessions), MAX_IDENTIFIER_BYTES)
  })
})

describe("room channels (subscriptionMode)", () => {
  /** Room names of every kind, socket ids among them. */
  const room = fc.oneof(
    namespace,
    fc.stringMatching(/^[A-Za-z0-9_-]{20}$/),
    fc.constantFrom("room1", "", "#", "a".repeat(200)),
  )

  it("is `${prefix}$${nsp}#${room}` when it fits, else shortened like a namespace channel", () => {
    assert.strictEqual(roomChannelName("socket.io", "/", "room1"), "socket.io$/#room1")
    const long = roomChannelName("socket.io", "/chat", "r".repeat(80))
    assert.isAtMost(bytes(long), MAX_IDENTIFIER_BYTES)
    assert.match(long, /^socket\.io\$\/chat#r+~[0-9a-f]{16}$/)
  })

  it("is at most 63 bytes, without NUL, and never a namespace channel of the same prefix", () => {
    fc.assert(
      fc.property(prefix, namespace, room, namespace, (p, nsp, r, other) => {
        const channel = roomChannelName(p, nsp, r)
        assert.isAtMost(bytes(channel), MAX_IDENTIFIER_BYTES)
        assert.isFalse(channel.includes("\u0000"))
        assert.strictEqual(roomChannelName(p, nsp, r), channel)
        fc.pre(!p.includes("$") && !p.includes("#") && !p.includes("~"))
        assert.notStrictEqual(channel, channelName(p, other))
      }),
    )
  })

  it("takes Socket.IO's socket ids for socket-id rooms, and only strings of their shape", () => {
    assert.isTrue(looksLikeSocketId("AbCdEfGhIjKlMnOpQr_-"))
    assert.isFalse(looksLikeSocketId("AbCdEfGhIjKlMnOpQr_"))
    assert.isFalse(looksLikeSocketId("AbCdEfGhIjKlMnOpQr_-x"))
    assert.isFalse(looksLikeSocketId("AbCdEfGhIjKlMnOpQr/+"))
    assert.isFalse(looksLikeSocketId(12345678901234567890))
  })

  it("routes only a broadcast to exactly one room with a channel in the mode to that room", () => {
    fc.assert(
      fc.property(
        fc.constantFrom("static", "dynamic", "dynamic-private", undefined),
        fc.array(room, { maxLength: 3 }),
        (mode, rooms) => {
          const config = { channelPrefix: "p", subscriptionMode: mode }
          const routed = broadcastChannel(config, "/", new Set(rooms))
          const one = new Set(rooms).size === 1
          if (!one || mode === undefined || mode === "static") return assert.isUndefined(routed)
          const only = rooms[0]!
          assert.strictEqual(
            hasRoomChannel(mode, only),
            mode === "dynamic-private" || !looksLikeSocketId(only),
          )
          assert.strictEqual(
            routed,
            hasRoomChannel(mode, only) ? roomChannelName("p", "/", only) : undefined,
          )
        },
      ),
    )
  })
})
