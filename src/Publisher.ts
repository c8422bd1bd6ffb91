/**
 * The NOTIFY side: messages are encoded at once (so later mutations of the caller's objects do not
 * leak in), queued, and sent by one worker that coalesces whatever is queued into as few
 * statements as it can: one INSERT for the attachments, one `SELECT pg_notify(...), ...` per run
 * of notifications. One worker means one order: messages reach PostgreSQL in the order they were
 * published.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Queue from "effect/Queue"
import { AttachmentStore } from "./AttachmentStore.js"
import * as Codec from "./Codec.js"
import { Config } from "./Config.js"
import { Database } from "./Database.js"
import { type DatabaseError, PublishError } from "./Errors.js"
import * as Metrics from "./Metrics.js"

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
  }
>() {}

interface Item {
  readonly channel: string
  readonly encoded: Codec.Encoded
  readonly done: Deferred.Deferred<void, PublishError>
}

/** Most notifications sent in one statement. */
const MAX_BATCH = 256

const toPublishError = (error: DatabaseError | PublishError): PublishError =>
  error._tag === "PublishError"
    ? error
    : new PublishError({ reason: "Database", message: error.message, cause: error })

/** Builds the Publisher; its worker runs until the scope closes. */
export const make = Effect.gen(function* () {
  const config = yield* Config
  const database = yield* Database
  const store = yield* AttachmentStore
  const queue = yield* Queue.dropping<Item>(config.maxPendingPublishes)
  let closed = false

  const timeoutError = new PublishError({
    reason: "Timeout",
    message: `PostgreSQL did not answer within the publishTimeout`,
  })

  const send = Effect.fnUntraced(function* (items: ReadonlyArray<Item>) {
    const attachments = items.filter((item) => item.encoded._tag === "Attachment")
    const ids =
      attachments.length === 0
        ? []
        : yield* store.insert(
            attachments.map(
              (item) => (item.encoded as Extract<Codec.Encoded, { _tag: "Attachment" }>).bytes,
            ),
          )
    const idOf = new Map(attachments.map((item, i) => [item, ids[i]!]))
    const payloads = items.map((item) =>
      item.encoded._tag === "Inline" ? item.encoded.payload : item.encoded.header(idOf.get(item)!),
    )
    // Within one transaction PostgreSQL folds identical (channel, payload) pairs into one
    // notification: a repeated pair starts a new statement so that none is lost.
    let start = 0
    while (start < items.length) {
      const seen = new Set<string>()
      const params: Array<string> = []
      let end = start
      while (end < items.length) {
        const key = `${items[end]!.channel}\u0000${payloads[end]!}`
        if (seen.has(key)) break
        seen.add(key)
        params.push(items[end]!.channel, payloads[end]!)
        end++
      }
      const calls = Array.from(
        { length: end - start },
        (_, i) => `pg_notify($${2 * i + 1}, $${2 * i + 2})`,
      )
      yield* database.query(`SELECT ${calls.join(", ")}`, params)
      yield* Metric.incrementBy(Metrics.notifyStatements, 1)
      yield* Metric.incrementBy(Metrics.notificationsSent, end - start)
      for (let i = start; i < end; i++) Deferred.unsafeDone(items[i]!.done, Exit.void)
      start = end
    }
    if (attachments.length > 0)
      yield* Metric.incrementBy(Metrics.attachmentsWritten, attachments.length)
  })

  const failAll = (items: ReadonlyArray<Item>, error: PublishError) =>
    Effect.sync(() => {
      for (const item of items) Deferred.unsafeDone(item.done, Exit.fail(error))
    })

  yield* Queue.takeBetween(queue, 1, MAX_BATCH).pipe(
    Effect.flatMap((chunk) => {
      const items = Array.from(chunk)
      return send(items).pipe(
        Effect.timeoutFail({ duration: config.publishTimeout, onTimeout: () => timeoutError }),
        Effect.catchAll((error) =>
          failAll(items, toPublishError(error)).pipe(
            Effect.zipRight(Metric.incrementBy(Metrics.publishFailures, items.length)),
          ),
        ),
        Effect.onInterrupt(() =>
          failAll(
            items,
            new PublishError({ reason: "Closed", message: "the publisher was closed" }),
          ),
        ),
        Effect.zipRight(
          Queue.size(queue).pipe(Effect.flatMap((n) => Metric.set(Metrics.pendingPublishes, n))),
        ),
      )
    }),
    Effect.forever,
    Effect.annotateLogs({ module: "Publisher" }),
    Effect.forkScoped,
  )

  yield* Effect.addFinalizer(() =>
    Effect.gen(function* () {
      closed = true
      const left = yield* Queue.takeAll(queue)
      yield* failAll(
        Array.from(left),
        new PublishError({ reason: "Closed", message: "the publisher was closed" }),
      )
      yield* Queue.shutdown(queue)
    }),
  )

  const publish = (
    channel: string,
    message: Codec.WireMessage,
  ): Effect.Effect<void, PublishError> =>
    Effect.suspend(() => {
      if (closed) {
        return Effect.fail(
          new PublishError({ reason: "Closed", message: "the publisher was closed" }),
        )
      }
      let encoded: Codec.Encoded
      try {
        encoded = Codec.encode(message, config.payloadThreshold)
      } catch (cause) {
        return Effect.fail(
          new PublishError({
            reason: "Encode",
            message: `message cannot be encoded: ${(cause as Error)?.message}`,
            cause,
          }),
        )
      }
      const done = Deferred.unsafeMake<void, PublishError>(FiberId.none)
      return Queue.offer(queue, { channel, encoded, done }).pipe(
        Effect.flatMap((accepted) =>
          accepted
            ? Deferred.await(done)
            : Metric.increment(Metrics.publishFailures).pipe(
                Effect.zipRight(
                  Effect.fail(
                    new PublishError({
                      reason: "Overloaded",
                      message: `more than ${config.maxPendingPublishes} messages are waiting for PostgreSQL`,
                    }),
                  ),
                ),
              ),
        ),
      )
    })

  return Publisher.of({ publish })
})

/** The Publisher layer; needs `Config`, `Database` and `AttachmentStore`. */
export const layer: Layer.Layer<Publisher, never, Config | Database | AttachmentStore> =
  Layer.scoped(Publisher, make)
