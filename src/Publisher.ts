/**
 * The NOTIFY side: messages are encoded at once (so later mutations of the caller's objects do not
 * leak in), queued, and sent by one worker that coalesces whatever is queued into as few
 * statements as it can: one `SELECT pg_notify(...), ...` per run of notifications, the attachment
 * rows of the run inserted by the same statement. One batch in flight means one order: messages
 * reach PostgreSQL in the order they were published.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { quoteTableName } from "./Channel.js"
import * as Codec from "./Codec.js"
import { Config } from "./Config.js"
import { Database } from "./Database.js"
import { type DatabaseError, PublishError } from "./Errors.js"
import * as Metrics from "./Metrics.js"
import * as PacketStore from "./recovery/PacketStore.js"
import { tableNames } from "./recovery/Tables.js"

/** Called once with the outcome of a publish: `undefined` when PostgreSQL committed it. */
export type PublishCallback = (error: PublishError | undefined) => void

/**
 * Called once with the outcome of a stored publish: the packet's offset once committed, and the
 * highest offset of its namespace notified before its statement (`after`): a receiver has seen
 * every notification of the namespace committed before this packet once it has seen that one.
 */
export type StoreCallback = (
  error: PublishError | undefined,
  offset: string | undefined,
  after?: string,
) => void

/** A broadcast packet kept for connection state recovery. */
export interface StoredPacket {
  readonly nsp: string
  readonly rooms: ReadonlyArray<string>
  readonly except: ReadonlyArray<string>
  /** The packet's args, without an offset. */
  readonly data: ReadonlyArray<unknown>
}

/** The Publisher service. */
export class Publisher extends Context.Service<
  Publisher,
  {
    /**
     * Sends a message on a channel; succeeds once PostgreSQL committed its notification. Inline
     * or through the attachments table, as `Codec.encode` decides.
     */
    readonly publish: (
      channel: string,
      message: Codec.WireMessage,
    ) => Effect.Effect<void, PublishError>
    /**
     * The same without a fiber per message, for hot paths outside Effect: encodes and queues at
     * once, then calls `done` exactly once.
     */
    readonly unsafePublish: (
      channel: string,
      message: Codec.WireMessage,
      done: PublishCallback,
    ) => void
    /**
     * Stores a broadcast packet in the recovery tables under the next offset of its namespace,
     * and notifies `message` (when given) with that offset in its `offset` field, in the same
     * statement. Offsets of a namespace are consecutive and commit in their order: the counter
     * row is locked until commit. `done` gets the offset.
     */
    readonly unsafeStore: (
      channel: string,
      message: Codec.WireMessage | undefined,
      packet: StoredPacket,
      done: StoreCallback,
    ) => void
  }
>()("socket.io-postgres-effect/Publisher") {}

interface Stored {
  readonly nsp: string
  readonly rooms: ReadonlyArray<string>
  readonly except: ReadonlyArray<string>
  readonly bytes: Uint8Array
}

interface Item {
  readonly channel: string
  /** `undefined`: stored only, nothing notified (a packet for one local socket). */
  readonly encoded: Codec.Encoded | undefined
  readonly stored: Stored | undefined
  readonly done: StoreCallback
  settled: boolean
}

/** Most notifications sent in one statement. */
const MAX_BATCH = 256

const toPublishError = (error: unknown): PublishError =>
  error instanceof PublishError
    ? error
    : new PublishError({
        reason: "Database",
        message: (error as DatabaseError)?.message ?? String(error),
        cause: error,
      })

const closedError = () =>
  new PublishError({ reason: "Closed", message: "the publisher was closed" })

const settle = (item: Item, error: PublishError | undefined, offset?: string, after?: string) => {
  if (item.settled) return
  item.settled = true
  item.done(error, offset, after)
}

const toBuffer = (bytes: Uint8Array) =>
  Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)

/**
 * Builds the Publisher. The worker is plain promise code on purpose: it runs once per batch on the
 * hottest path, where a fiber, a `Deferred` and a forked timeout per batch cost more CPU than the
 * statement itself at low rates (measured with `npm run bench`, scenario `small-rate`).
 */
export const make = Effect.gen(function* () {
  const config = yield* Config
  const database = yield* Database
  // Metrics are updated in the application's context (its metric registry).
  const context = yield* Effect.context<never>()
  const timeoutMillis = Duration.toMillis(config.publishTimeout)
  const table = quoteTableName(config.tableName)
  const recoveryTables = tableNames(config.recoveryTablePrefix)
  let queue: Array<Item> = []
  let inflight: ReadonlyArray<Item> = []
  let timer: ReturnType<typeof setTimeout> | undefined
  let closed = false

  // One statement for a run of messages. With attachments, the rows are inserted by a CTE of the
  // same statement, so row and notification commit together, and each header is the JSON text
  // around its row id, joined in SQL. Stored packets (one namespace per run) take their offsets
  // from the namespace's counter row, whose lock orders the commits of every writer.
  const statement = (run: ReadonlyArray<Item>): [string, Array<unknown>] => {
    const params: Array<unknown> = []
    const param = (value: unknown) => {
      params.push(value)
      return `$${params.length}`
    }
    const stored = run.filter((item) => item.stored !== undefined)
    if (stored.length === 0 && run.every((item) => item.encoded?._tag === "Inline")) {
      for (const item of run)
        params.push(item.channel, (item.encoded as { payload: string }).payload)
      return [notifyStatement(run.length), params]
    }
    // Each stored packet's place among them: its offset is the counter's old value plus that.
    const position = new Map(stored.map((item, i) => [item, i + 1]))
    const ctes: Array<string> = []
    const values: Array<string> = []
    const calls: Array<string> = []
    let store: PacketStore.StoreSql | undefined
    if (stored.length > 0) {
      // The position of the run's last notified packet, 0 when none is notified.
      let notified = 0
      stored.forEach((item, i) => {
        if (item.encoded !== undefined) notified = i + 1
      })
      const packets = stored.map((item) => item.stored!)
      store = PacketStore.storeSql(recoveryTables, param, packets[0]!.nsp, packets, notified)
      ctes.push(...store.ctes)
    }
    // The text of a notification, with its placeholders replaced in SQL.
    const payloadSql = (item: Item, id: string | undefined): string => {
      const encoded = item.encoded!
      let text = encoded._tag === "Inline" ? encoded.payload : encoded.header(ID_MARKER)
      let tail = ""
      if (item.stored !== undefined) {
        const [before, after] = Codec.splitAtOffsetPlaceholder(text)
        tail = ` || ${store!.offset(position.get(item)!)}::text || ${param(after)}`
        text = before
      }
      if (id !== undefined) {
        const at = text.lastIndexOf(ID_MARKER)
        return `${param(text.slice(0, at))} || ${id}::text || ${param(text.slice(at + ID_MARKER.length))}${tail}`
      }
      return `${param(text)}${tail}`
    }
    for (const item of run) {
      if (item.encoded === undefined) continue
      const channel = param(item.channel)
      if (item.encoded._tag === "Inline") {
        calls.push(`pg_notify(${channel}, ${payloadSql(item, undefined)})`)
        continue
      }
      values.push(`(${param(toBuffer(item.encoded.bytes))}::bytea)`)
      calls.push(
        `pg_notify(${channel}, ${payloadSql(item, `(SELECT a[${values.length}] FROM ids)`)})`,
      )
    }
    if (values.length > 0) {
      ctes.push(
        `ins AS (INSERT INTO ${table} (payload) VALUES ${values.join(", ")} RETURNING id)`,
        `ids AS (SELECT array_agg(id ORDER BY id) AS a FROM ins)`,
      )
    }
    const select = [...(store?.columns ?? []), ...calls]
    return [
      `WITH ${ctes.join(", ")} SELECT ${select.join(", ")}${store === undefined ? "" : ` FROM ${store.from}`}`,
      params,
    ]
  }

  const send = async (items: ReadonlyArray<Item>, batch: { cancelled: boolean }) => {
    // Within one transaction PostgreSQL folds identical (channel, payload) pairs into one
    // notification: a repeated pair starts a new statement so that none is lost. (Attachment
    // headers hold their own row id, and stored payloads their offset, so they never repeat.)
    // Stored packets of one namespace per statement: one counter row, so no lock-order deadlock.
    // A batch that timed out sends no more statements: they would run beside the next batch.
    let start = 0
    while (start < items.length && !batch.cancelled) {
      const seen = new Set<string>()
      let nsp: string | undefined
      let end = start
      for (; end < items.length; end++) {
        const item = items[end]!
        if (item.stored !== undefined) {
          if (nsp !== undefined && nsp !== item.stored.nsp) break
          nsp = item.stored.nsp
        }
        if (item.encoded?._tag !== "Inline" || item.stored !== undefined) continue
        const key = `${item.channel}\u0000${item.encoded.payload}`
        if (seen.has(key)) break
        seen.add(key)
      }
      const run = items.slice(start, end)
      const [sql, params] = statement(run)
      const rows = await database.unsafeQuery<{ last?: string; after?: string }>(sql, params)
      let notified = 0
      let attachments = 0
      let storedCount = 0
      for (const item of run) {
        if (item.encoded !== undefined) notified++
        if (item.encoded?._tag === "Attachment") attachments++
        if (item.stored !== undefined) storedCount++
      }
      Metrics.notifyStatements.updateUnsafe(1, context)
      if (notified > 0) Metrics.notificationsSent.updateUnsafe(notified, context)
      if (attachments > 0) Metrics.attachmentsWritten.updateUnsafe(attachments, context)
      if (storedCount > 0) Metrics.packetsStored.updateUnsafe(storedCount, context)
      // The counter's new value is the offset of the run's last stored packet.
      let offset = storedCount === 0 ? 0n : BigInt(rows[0]!.last!) - BigInt(storedCount)
      for (const item of run) {
        if (item.stored === undefined) settle(item, undefined)
        else settle(item, undefined, String(++offset), rows[0]!.after)
      }
      start = end
    }
  }

  // One batch in flight at a time: that is what keeps the order.
  const pump = (): void => {
    if (inflight.length > 0 || closed || queue.length === 0) return
    const items = queue.length <= MAX_BATCH ? queue : queue.slice(0, MAX_BATCH)
    queue = queue.length <= MAX_BATCH ? [] : queue.slice(MAX_BATCH)
    inflight = items
    Metrics.pendingPublishes.updateUnsafe(queue.length, context)
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new PublishError({
              reason: "Timeout",
              message: "PostgreSQL did not answer within the publishTimeout",
            }),
          ),
        timeoutMillis,
      )
    })
    const batch = { cancelled: false }
    Promise.race([send(items, batch), timedOut])
      .catch((error) => {
        batch.cancelled = true
        const failure = toPublishError(error)
        Metrics.publishFailures.updateUnsafe(items.filter((item) => !item.settled).length, context)
        for (const item of items) settle(item, failure)
      })
      .finally(() => {
        clearTimeout(timer)
        inflight = []
        pump()
      })
  }

  yield* Effect.addFinalizer(() =>
    Effect.sync(() => {
      closed = true
      clearTimeout(timer)
      const left = [...inflight, ...queue]
      queue = []
      for (const item of left) settle(item, closedError())
    }),
  )

  const enqueue = (
    channel: string,
    message: Codec.WireMessage | undefined,
    packet: StoredPacket | undefined,
    done: StoreCallback,
  ) => {
    if (closed) return done(closedError(), undefined)
    if (queue.length >= config.maxPendingPublishes) {
      Metrics.publishFailures.updateUnsafe(1, context)
      return done(
        new PublishError({
          reason: "Overloaded",
          message: `more than ${config.maxPendingPublishes} messages are waiting for PostgreSQL`,
        }),
        undefined,
      )
    }
    let encoded: Codec.Encoded | undefined
    let stored: Stored | undefined
    try {
      encoded =
        message === undefined
          ? undefined
          : Codec.encode(
              packet === undefined ? message : Codec.withOffsetPlaceholder(message),
              config.payloadThreshold,
            )
      if (packet !== undefined) {
        stored = {
          nsp: packet.nsp,
          rooms: packet.rooms,
          except: packet.except,
          bytes: Codec.encodePacketData(packet.data),
        }
      }
    } catch (cause) {
      return done(
        new PublishError({
          reason: "Encode",
          message: `message cannot be encoded: ${(cause as Error)?.message}`,
          cause,
        }),
        undefined,
      )
    }
    queue.push({ channel, encoded, stored, done, settled: false })
    // Later in this tick: publishes of the same tick share one statement.
    if (inflight.length === 0 && queue.length === 1) queueMicrotask(pump)
  }

  const unsafePublish = (channel: string, message: Codec.WireMessage, done: PublishCallback) =>
    enqueue(channel, message, undefined, done)

  const unsafeStore = (
    channel: string,
    message: Codec.WireMessage | undefined,
    packet: StoredPacket,
    done: StoreCallback,
  ) => enqueue(channel, message, packet, done)

  const publish = (
    channel: string,
    message: Codec.WireMessage,
  ): Effect.Effect<void, PublishError> =>
    Effect.callback<void, PublishError>((resume) =>
      unsafePublish(channel, message, (error) =>
        resume(error === undefined ? Effect.void : Effect.fail(error)),
      ),
    )

  return Publisher.of({ publish, unsafePublish, unsafeStore })
})

// Stands for the row id in an attachment header: the largest bigint, so the header's length is
// checked with the longest id; headers hold no other run of 19 digits after it.
const ID_MARKER = "9223372036854775807"

// The statement text for n notifications, built once per size.
const statements: Array<string> = []
const notifyStatement = (n: number): string =>
  (statements[n] ??= `SELECT ${Array.from(
    { length: n },
    (_, i) => `pg_notify($${2 * i + 1}, $${2 * i + 2})`,
  ).join(", ")}`)

/** The Publisher layer; needs `Config`, `Database` and `AttachmentStore`. */
export const layer: Layer.Layer<Publisher, never, Config | Database> = Layer.effect(Publisher, make)
