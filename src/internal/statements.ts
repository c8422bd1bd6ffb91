/**
 * The Publisher's statements, as pure functions: how queued messages are split into runs (one
 * statement each) and the SQL text of a run. The stored packets' part of a statement (offsets and
 * rows of connection state recovery) is an input: it belongs to the packet store.
 */
import { quoteIdentifier, quoteLiteral } from "../Channel.js"
import * as Codec from "../Codec.js"

/** A broadcast packet kept for connection state recovery, its args msgpack-encoded. */
export interface StoredRow {
  readonly nsp: string
  readonly rooms: ReadonlyArray<string>
  readonly except: ReadonlyArray<string>
  readonly bytes: Uint8Array
}

/** One message on its way to PostgreSQL. */
export interface Outgoing {
  readonly channel: string
  /** `undefined`: stored only, nothing notified (a packet for one local socket). */
  readonly encoded: Codec.Encoded | undefined
  /** Set when the message is a stored packet: its payload then ends with the Codec's offset placeholder. */
  readonly stored: StoredRow | undefined
}

/** A run's stored packets (all of one namespace), as the stored-packets SQL takes them. */
export interface StoredRun {
  readonly nsp: string
  readonly rows: ReadonlyArray<StoredRow>
  /** Position (from 1) of the run's last notified packet among its rows; 0 when none is. */
  readonly lastNotified: number
}

/** What the stored-packets SQL adds to a statement. */
export interface StoredSql {
  /** CTEs (`name AS (...)`) that take the run's offsets and insert its rows. */
  readonly ctes: ReadonlyArray<string>
  /** The SQL (bigint) of the offset of the row at `position` (from 1). */
  readonly offset: (position: number) => string
  /** Selected before the notifications: `last` (the run's last offset) and `after`, as text. */
  readonly columns: ReadonlyArray<string>
  /** The FROM item that `offset` and `columns` read. */
  readonly from: string
}

/** Builds the SQL of a run's stored packets; `param` binds a value and returns its placeholder. */
export type StoredPacketsSql = (run: StoredRun, param: (value: unknown) => string) => StoredSql

/** A statement: its text and its bind parameters. */
export type Statement = readonly [sql: string, params: Array<unknown>]

/**
 * Stands for the row id in an attachment header: the largest bigint, so the header's length is
 * checked with the longest id; headers hold no other run of 19 digits after it.
 */
export const ID_MARKER = "9223372036854775807"

/**
 * Where the run that starts at `start` ends (exclusive). Within one transaction PostgreSQL folds
 * identical (channel, payload) pairs into one notification: a repeated pair starts a new run so
 * that none is lost (attachment headers hold their own row id, and stored payloads their offset,
 * so they never repeat). Stored packets of one namespace per run: one counter row per statement,
 * so writers never deadlock on lock order.
 */
export const runEnd = (items: ReadonlyArray<Outgoing>, start: number): number => {
  // Payloads seen per channel: the payload strings are keys as they are, hashed once each.
  const seen = new Map<string, Set<string>>()
  let nsp: string | undefined
  let end = start
  for (; end < items.length; end++) {
    const item = items[end]!
    if (item.stored !== undefined) {
      if (nsp !== undefined && nsp !== item.stored.nsp) break
      nsp = item.stored.nsp
      continue
    }
    if (item.encoded?._tag !== "Inline") continue
    let payloads = seen.get(item.channel)
    if (payloads === undefined) seen.set(item.channel, (payloads = new Set()))
    else if (payloads.has(item.encoded.payload)) break
    payloads.add(item.encoded.payload)
  }
  return end
}

/** Splits messages into runs, in order, each sent by one statement (see {@link runEnd}). */
export const splitRuns = <A extends Outgoing>(items: ReadonlyArray<A>): Array<ReadonlyArray<A>> => {
  const runs: Array<ReadonlyArray<A>> = []
  for (let start = 0; start < items.length;) {
    const end = runEnd(items, start)
    runs.push(items.slice(start, end))
    start = end
  }
  return runs
}

/** How a run's notifications are signed (see {@link sealRun}). */
export interface RunSealer {
  /** The most notifications one batch covers. */
  readonly max: number
  /** Signs consecutive payloads of one channel together: the same number of payloads back. */
  readonly batch: (channel: string, payloads: ReadonlyArray<string>) => ReadonlyArray<string>
  /** Signs an attachment (its header and row) alone. */
  readonly attachment: (
    channel: string,
    encoded: Codec.Encoded & { readonly _tag: "Attachment" },
  ) => Codec.Encoded
}

/**
 * A run with its notifications signed, in the order the statement sends them: each stretch of
 * consecutive inline payloads and parts on one channel (at most `max`) is one batch, an attachment
 * is signed alone. Consecutive only: a receiver LISTENing on several of the channels (a namespace
 * and its rooms) delivers what it gets in one order, and holding a batch while another channel's
 * notification of the same statement went ahead would break it. One statement is one transaction,
 * whose notifications PostgreSQL keeps together (see Signing.ts).
 */
export const sealRun = (run: ReadonlyArray<Outgoing>, sealer: RunSealer): Array<Outgoing> => {
  const out: Array<{
    channel: string
    encoded: Codec.Encoded | undefined
    stored: StoredRow | undefined
  }> = run.map(({ channel, encoded, stored }) => ({ channel, encoded, stored }))
  // The batch being gathered: where each payload goes back (item, part or -1 for inline).
  let channel = ""
  let payloads: Array<string> = []
  let places: Array<number> = []
  const parts = new Map<number, Array<string>>()
  const flush = () => {
    if (payloads.length === 0) return
    const sealed = sealer.batch(channel, payloads)
    for (let j = 0; j < places.length; j += 2) {
      const item = places[j]!
      const part = places[j + 1]!
      if (part === -1) out[item]!.encoded = { _tag: "Inline", payload: sealed[j / 2]! }
      else parts.get(item)![part] = sealed[j / 2]!
    }
    payloads = []
    places = []
  }
  for (let i = 0; i < out.length; i++) {
    const item = out[i]!
    const encoded = item.encoded
    if (encoded === undefined) continue
    if (encoded._tag === "Attachment") {
      flush()
      item.encoded = sealer.attachment(item.channel, encoded)
      continue
    }
    const texts = encoded._tag === "Inline" ? [encoded.payload] : encoded.payloads
    if (encoded._tag === "Parts") {
      const copy = [...encoded.payloads]
      parts.set(i, copy)
      item.encoded = { _tag: "Parts", payloads: copy }
    }
    for (let k = 0; k < texts.length; k++) {
      if (item.channel !== channel || payloads.length === sealer.max) flush()
      channel = item.channel
      payloads.push(texts[k]!)
      places.push(i, encoded._tag === "Inline" ? -1 : k)
    }
  }
  flush()
  return out
}

/** What a run sends, for the metrics: notifications, attachment rows and stored packets. */
export const runCounts = (run: ReadonlyArray<Outgoing>) => {
  let notified = 0
  let attachments = 0
  let stored = 0
  for (const item of run) {
    if (item.encoded !== undefined) notified++
    if (item.encoded?._tag === "Parts") notified += item.encoded.payloads.length - 1
    if (item.encoded?._tag === "Attachment") attachments++
    if (item.stored !== undefined) stored++
  }
  return { notified, attachments, stored }
}

/**
 * The offsets of a run's stored packets, in run order, from the offset of its last one (`last`,
 * what the statement returns): they are consecutive.
 */
export const storedOffsets = (storedCount: number, last: string): Array<string> => {
  const first = BigInt(last) - BigInt(storedCount) + 1n
  return Array.from({ length: storedCount }, (_, i) => String(first + BigInt(i)))
}

/**
 * Makes the statement builder. A run of inline notifications (or packed parts) is a
 * {@link notifyScript} with no parameters, or with `scripts` false (a database client that takes
 * one statement at a time) one `SELECT set_config(...), pg_notify($1, $2), ...` whose text depends
 * on its length only; both commit asynchronously. With attachments, the rows are inserted by a CTE
 * of one `SELECT pg_notify(...), ...`, so row and notification commit together, and each header is
 * the JSON text around its row id, joined in SQL. Stored packets take their offsets from
 * `storedPackets`' CTEs, spliced into their payloads the same way.
 */
export const makeStatement = (options: {
  /** Whether the database takes several statements in one query string (`Database.scripts`). */
  readonly scripts: boolean
  /** The attachments table, quoted. */
  readonly attachmentsTable: string
  readonly storedPackets: StoredPacketsSql
}) => {
  const { attachmentsTable, storedPackets, scripts } = options
  return (run: ReadonlyArray<Outgoing>): Statement => {
    if (run.every((item) => item.stored === undefined && item.encoded?._tag !== "Attachment")) {
      const notifications: Array<string> = []
      for (const item of run) {
        const encoded = item.encoded as Codec.Encoded & { _tag: "Inline" | "Parts" }
        if (encoded._tag === "Inline") notifications.push(item.channel, encoded.payload)
        else for (const payload of encoded.payloads) notifications.push(item.channel, payload)
      }
      if (scripts) return [notifyScript(notifications), []]
      return [notifyStatement(notifications.length / 2), notifications]
    }
    const params: Array<unknown> = []
    const param = (value: unknown) => {
      params.push(value)
      return `$${params.length}`
    }
    const stored = storedSql(run, param, storedPackets)
    const ctes: Array<string> = stored === undefined ? [] : [...stored.sql.ctes]
    const values: Array<string> = []
    const calls: Array<string> = []
    for (const item of run) {
      const encoded = item.encoded
      if (encoded === undefined) continue
      const channel = param(item.channel)
      if (encoded._tag === "Parts") {
        for (const payload of encoded.payloads)
          calls.push(`pg_notify(${channel}, ${param(payload)})`)
        continue
      }
      let text = encoded._tag === "Inline" ? encoded.payload : encoded.header(ID_MARKER)
      let tail = ""
      if (item.stored !== undefined) {
        const [before, after] = Codec.splitAtOffsetPlaceholder(text)
        const offset = stored!.sql.offset(stored!.position.get(item)!)
        tail = ` || ${offset}::text || ${param(after)}`
        text = before
      }
      if (encoded._tag === "Inline") {
        calls.push(`pg_notify(${channel}, ${param(text)}${tail})`)
        continue
      }
      values.push(`(${param(toBuffer(encoded.bytes))}::bytea)`)
      const at = text.lastIndexOf(ID_MARKER)
      const id = `(SELECT a[${values.length}] FROM ids)::text`
      calls.push(
        `pg_notify(${channel}, ${param(text.slice(0, at))} || ${id} || ${param(text.slice(at + ID_MARKER.length))}${tail})`,
      )
    }
    if (values.length > 0) {
      ctes.push(
        `ins AS (INSERT INTO ${attachmentsTable} (payload) VALUES ${values.join(", ")} RETURNING id)`,
        `ids AS (SELECT array_agg(id ORDER BY id) AS a FROM ins)`,
      )
    }
    const select = [...(stored?.sql.columns ?? []), ...calls].join(", ")
    const from = stored === undefined ? "" : ` FROM ${stored.sql.from}`
    return [`WITH ${ctes.join(", ")} SELECT ${select}${from}`, params]
  }
}

// The run's stored packets, their SQL, and each one's position among them.
const storedSql = (
  run: ReadonlyArray<Outgoing>,
  param: (value: unknown) => string,
  storedPackets: StoredPacketsSql,
) => {
  const position = new Map<Outgoing, number>()
  const rows: Array<StoredRow> = []
  let lastNotified = 0
  for (const item of run) {
    if (item.stored === undefined) continue
    rows.push(item.stored)
    position.set(item, rows.length)
    if (item.encoded !== undefined) lastNotified = rows.length
  }
  if (rows.length === 0) return undefined
  const sql = storedPackets({ nsp: rows[0]!.nsp, rows, lastNotified }, param)
  return { sql, position }
}

/** A view of `bytes` as a `Buffer`, which node-postgres sends as `bytea`. */
export const toBuffer = (bytes: Uint8Array): Buffer =>
  Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)

/**
 * First in a statement that only notifies: its transaction commits without waiting for the WAL
 * flush (asynchronous commit, this transaction only). It writes no data that a crash could lose,
 * and notifications are never kept across one, so it gives up nothing; its listeners hear it one
 * disk flush sooner. Statements that write rows (attachments, stored packets) keep the server's
 * `synchronous_commit`.
 */
export const ASYNC_COMMIT = "SET LOCAL synchronous_commit = off"

/**
 * A statement that only notifies, in the simple query protocol: `SET LOCAL synchronous_commit =
 * off; NOTIFY "channel", 'payload'; …` for `notifications` (channel, payload, channel, payload, …),
 * in order. The statements of one query string run in one implicit transaction, so they commit
 * together, as one `SELECT pg_notify(…), …` would, but PostgreSQL parses no parameters and plans
 * no SELECT: a hop took 0.143 ms p50 against 0.173 (`npm run bench:hops`). Channels and payloads are quoted
 * (see `quoteIdentifier`, `quoteLiteral`); one with NUL throws, which fails the run.
 */
export const notifyScript = (notifications: ReadonlyArray<string>): string => {
  let sql = ASYNC_COMMIT
  for (let i = 0; i < notifications.length; i += 2) {
    sql += `; NOTIFY ${quoteIdentifier(notifications[i]!)}, ${quoteLiteral(notifications[i + 1]!)}`
  }
  return sql
}

/** {@link ASYNC_COMMIT} as a function call, first in a `SELECT` that only notifies. */
export const ASYNC_COMMIT_CALL = "set_config('synchronous_commit', 'off', true)"

// The statement text for n notifications with parameters, built once per size.
const statements: Array<string> = []
const notifyStatement = (n: number): string =>
  (statements[n] ??= `SELECT ${ASYNC_COMMIT_CALL}, ${Array.from(
    { length: n },
    (_, i) => `pg_notify($${2 * i + 1}, $${2 * i + 2})`,
  ).join(", ")}`)
