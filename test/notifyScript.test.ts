/**
 * The notify script (`internal/statements.ts`) on a real PostgreSQL: a statement that only
 * notifies is SQL text with every channel and payload quoted in it, so what listeners receive must
 * be exactly what was queued, whatever the text holds (quotes, backslashes, semicolons, dollar
 * quotes, any Unicode) and whatever `standard_conforming_strings` says. Nothing in a payload may
 * ever run as SQL.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import * as fc from "fast-check"
import pg from "pg"
import { ASYNC_COMMIT, notifyScript } from "../src/internal/statements.js"
import { eventually } from "./utils/cluster.js"
import { databaseUrl, suiteId } from "./utils/postgres.js"

const prefix = suiteId("notify_script")
const CHANNELS = [`${prefix}`, `${prefix}"q"`, `${prefix}'s`, `${prefix}\\b`, `${prefix};É`]

/** Text as a payload may hold it (no NUL, which PostgreSQL text cannot hold), SQL-like often. */
const payload = fc.oneof(
  fc.string({ unit: "binary", maxLength: 300 }).map((s) => s.replaceAll("\u0000", "")),
  fc
    .array(
      fc.constantFrom(
        "'",
        "''",
        '"',
        "\\",
        "\\'",
        "E'",
        "$$",
        ";",
        "--",
        "/*",
        "\n",
        "é",
        "😀",
        "x",
      ),
      {
        maxLength: 40,
      },
    )
    .map((parts) => parts.join("")),
)

describe.each([
  { name: "standard_conforming_strings on", options: "-c standard_conforming_strings=on" },
  { name: "standard_conforming_strings off", options: "-c standard_conforming_strings=off" },
])("notify script ($name)", ({ options }) => {
  let sender: pg.Client
  let listener: pg.Client
  const received: Array<{ channel: string; payload: string }> = []
  beforeAll(async () => {
    sender = new pg.Client({ connectionString: databaseUrl(), options })
    listener = new pg.Client({ connectionString: databaseUrl() })
    await Promise.all([sender.connect(), listener.connect()])
    // The connection's own setting, whatever the server's (an embedded one runs with it off).
    await sender.query("SET synchronous_commit = on")
    listener.on("notification", (n) =>
      received.push({ channel: n.channel, payload: n.payload ?? "" }),
    )
    for (const channel of CHANNELS)
      await listener.query(`LISTEN "${channel.replaceAll('"', '""')}"`)
  })
  afterAll(async () => {
    await Promise.all([sender?.end(), listener?.end()])
  })

  it("delivers exactly the queued notifications, in order, and runs nothing else", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.constantFrom(...CHANNELS), payload), { minLength: 1, maxLength: 8 }),
        async (pairs) => {
          // One transaction folds identical pairs: keep them distinct, as the Publisher's runs do.
          const sent = pairs.map(([channel, text], i) => ({ channel, payload: `${i}:${text}` }))
          received.length = 0
          const results = await sender.query(
            notifyScript(sent.flatMap((n) => [n.channel, n.payload])),
          )
          // One result per statement: SET LOCAL and one NOTIFY each; no more ran.
          assert.strictEqual([results].flat().length, sent.length + 1)
          await eventually(() => received.length >= sent.length, { message: "all delivered" })
          assert.deepStrictEqual(received, sent)
        },
      ),
      { numRuns: 60 },
    )
    // The transaction's commit did not wait for the WAL flush, and the setting did not outlive it.
    const [, setting] = (await sender.query(
      `${ASYNC_COMMIT}; SELECT current_setting('synchronous_commit') AS s`,
    )) as unknown as Array<pg.QueryResult<{ s: string }>>
    assert.strictEqual(setting!.rows[0]!.s, "off")
    const after = await sender.query<{ s: string }>(
      "SELECT current_setting('synchronous_commit') AS s",
    )
    assert.strictEqual(after.rows[0]!.s, "on")
  })

  it("refuses a channel or payload with NUL before anything is sent", () => {
    assert.throws(() => notifyScript([CHANNELS[0]!, "a\u0000b"]), /NUL/)
    assert.throws(() => notifyScript(["a\u0000b", "x"]), /NUL/)
  })
})
