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

/** Called once with the outcome of a publish: `undefined` when PostgreSQL committed it. */
export type PublishCallback = (error: PublishError | undefined) => void

/** The Publisher service. */
export class Publisher extends Context.Tag("socket.io-postgres-effect/Publisher")<
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
  }
>() {}

interface Item {
  readonly channel: string
  readonly encoded: Codec.Encoded
  readonly done: PublishCallback
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

const settle = (item: Item, error: PublishError | undefined) => {
  if (item.settled) return
  item.settled = true
  item.done(error)
}

/**
 * Builds the Publisher. The worker is plain promise code on purpose: it runs once per batch on the
 * hottest path, where a fiber, a `Deferred` and a forked timeout per batch cost more CPU than the
 * statement itself at low rates (measured with `npm run bench`, scenario `small-rate`).
 */
export const make = Effect.gen(function* () {
  const config = yield* Config
  const database = yield* Database
  const timeoutMillis = Duration.toMillis(config.publishTimeout)
  const table = quoteTableName(config.tableName)
  let queue: Array<Item> = []
  let inflight: ReadonlyArray<Item> = []
  let timer: ReturnType<typeof setTimeout> | undefined
  let closed = false

  // One statement for a run of messages. With attachments, the rows are inserted by a CTE of the
  // same statement, so row and notification commit together, and each header is the JSON text
  // around its row id, joined in SQL.
  const statement = (run: ReadonlyArray<Item>): [string, Array<unknown>] => {
    const params: Array<unknown> = []
    const param = (value: unknown) => {
      params.push(value)
      return `$${params.length}`
    }
    if (run.every((item) => item.encoded._tag === "Inline")) {
      for (const item of run)
        params.push(item.channel, (item.encoded as { payload: string }).payload)
      return [notifyStatement(run.length), params]
    }
    const values: Array<string> = []
    const calls: Array<string> = []
    for (const item of run) {
      const channel = param(item.channel)
      if (item.encoded._tag === "Inline") {
        calls.push(`pg_notify(${channel}, ${param(item.encoded.payload)})`)
        continue
      }
      const bytes = item.encoded.bytes
      values.push(
        `(${param(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength))}::bytea)`,
      )
      const header = item.encoded.header(ID_MARKER)
      const at = header.lastIndexOf(ID_MARKER)
      calls.push(
        `pg_notify(${channel}, ${param(header.slice(0, at))} || (SELECT a[${values.length}] FROM ids)::text || ${param(header.slice(at + ID_MARKER.length))})`,
      )
    }
    return [
      `WITH ins AS (INSERT INTO ${table} (payload) VALUES ${values.join(", ")} RETURNING id), ` +
        `ids AS (SELECT array_agg(id ORDER BY id) AS a FROM ins) SELECT ${calls.join(", ")}`,
      params,
    ]
  }

  const send = async (items: ReadonlyArray<Item>) => {
    // Within one transaction PostgreSQL folds identical (channel, payload) pairs into one
    // notification: a repeated pair starts a new statement so that none is lost. (Attachment
    // headers hold their own row id, so they never repeat.)
    let start = 0
    while (start < items.length) {
      const seen = new Set<string>()
      let end = start
      for (; end < items.length; end++) {
        const item = items[end]!
        if (item.encoded._tag !== "Inline") continue
        const key = `${item.channel}\u0000${item.encoded.payload}`
        if (seen.has(key)) break
        seen.add(key)
      }
      const run = items.slice(start, end)
      const [sql, params] = statement(run)
      await database.unsafeQuery(sql, params)
      Metrics.notifyStatements.unsafeUpdate(1, [])
      Metrics.notificationsSent.unsafeUpdate(run.length, [])
      const attachments = run.filter((item) => item.encoded._tag === "Attachment").length
      if (attachments > 0) Metrics.attachmentsWritten.unsafeUpdate(attachments, [])
      for (const item of run) settle(item, undefined)
      start = end
    }
  }

  // One batch in flight at a time: that is what keeps the order.
  const pump = (): void => {
    if (inflight.length > 0 || closed || queue.length === 0) return
    const items = queue.length <= MAX_BATCH ? queue : queue.slice(0, MAX_BATCH)
    queue = queue.length <= MAX_BATCH ? [] : queue.slice(MAX_BATCH)
    inflight = items
    Metrics.pendingPublishes.unsafeUpdate(queue.length, [])
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
    Promise.race([send(items), timedOut])
      .catch((error) => {
        const failure = toPublishError(error)
        Metrics.publishFailures.unsafeUpdate(items.filter((item) => !item.settled).length, [])
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

  const unsafePublish = (channel: string, message: Codec.WireMessage, done: PublishCallback) => {
    if (closed) return done(closedError())
    if (queue.length >= config.maxPendingPublishes) {
      Metrics.publishFailures.unsafeUpdate(1, [])
      return done(
        new PublishError({
          reason: "Overloaded",
          message: `more than ${config.maxPendingPublishes} messages are waiting for PostgreSQL`,
        }),
      )
    }
    let encoded: Codec.Encoded
    try {
      encoded = Codec.encode(message, config.payloadThreshold)
    } catch (cause) {
      return done(
        new PublishError({
          reason: "Encode",
          message: `message cannot be encoded: ${(cause as Error)?.message}`,
          cause,
        }),
      )
    }
    queue.push({ channel, encoded, done, settled: false })
    // Later in this tick: publishes of the same tick share one statement.
    if (inflight.length === 0 && queue.length === 1) queueMicrotask(pump)
  }

  const publish = (
    channel: string,
    message: Codec.WireMessage,
  ): Effect.Effect<void, PublishError> =>
    Effect.async<void, PublishError>((resume) =>
      unsafePublish(channel, message, (error) =>
        resume(error === undefined ? Effect.void : Effect.fail(error)),
      ),
    )

  return Publisher.of({ publish, unsafePublish })
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
export const layer: Layer.Layer<Publisher, never, Config | Database> = Layer.scoped(Publisher, make)
