/**
 * The NOTIFY side: messages are encoded at once (so later mutations of the caller's objects do not
 * leak in), queued, and sent by one worker that coalesces whatever is queued into as few
 * statements as it can: one per run of notifications (`NOTIFY` statements in one query string, or
 * with attachment rows `SELECT pg_notify(...), ...` with the rows inserted by the same
 * statement). One batch in flight means one order: messages reach PostgreSQL in the order they
 * were published. Notify scripts go on the Listener's connection while it is up (a commit from a
 * listening backend wakes one backend fewer; see `Listener`), the rest through the pool.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { quoteTableName } from "./Channel.js"
import * as Codec from "./Codec.js"
import { AdapterConfig, type ClusterConfig, keysOf } from "./AdapterConfig.js"
import { Database, StatementAbort, StatementTimeout } from "./Database.js"
import { Listener } from "./Listener.js"
import { type DatabaseError, PublishError } from "./Errors.js"
import {
  makeStatement,
  type Outgoing,
  runCounts,
  type RunSealer,
  sealRun,
  splitRuns,
  storedOffsets,
} from "./internal/statements.js"
import * as Metrics from "./Metrics.js"
import * as PacketStore from "./recovery/PacketStore.js"
import { tableNames } from "./recovery/Tables.js"
import * as Signing from "./Signing.js"

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

/** How a message may travel. */
export interface PublishOptions {
  /**
   * The version of our wire every node that reads the channel speaks (0 when one is 0.5.0): from
   * 1, a message that does not fit as JSON goes packed in the notifications (see `Codec.encode`)
   * instead of through the attachments table.
   */
  readonly wire?: Codec.Wire | undefined
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
      options?: PublishOptions,
    ) => Effect.Effect<void, PublishError>
    /**
     * The same without a fiber per message, for hot paths outside Effect: encodes and queues at
     * once, then calls `done` exactly once.
     */
    readonly unsafePublish: (
      channel: string,
      message: Codec.WireMessage,
      done: PublishCallback,
      options?: PublishOptions,
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
      options?: PublishOptions,
    ) => void
    /**
     * This publisher's sender id in signature envelopes when the cluster signs (its own
     * notifications start with `S1:<sender>:`, `A1:<sender>:`, or `S2:<sender>:` for a batch whose
     * others start with `S+:`), else `undefined`.
     */
    readonly sender: string | undefined
  }
>()("socket.io-postgres-effect/Publisher") {}

interface Item extends Outgoing {
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

/**
 * Builds the Publisher. The worker is plain promise code on purpose: it runs once per batch on the
 * hottest path, where a fiber, a `Deferred` and a forked timeout per batch cost more CPU than the
 * statement itself at low rates (measured with `npm run bench`, scenario `small-rate`).
 */
export const make = Effect.gen(function* () {
  const config = yield* AdapterConfig
  const database = yield* Database
  // Metrics are updated in the application's context (its metric registry).
  const context = yield* Effect.context<never>()
  const timeoutMillis = Duration.toMillis(config.publishTimeout)
  const recoveryTables = tableNames(config.recoveryTablePrefix)
  const { signer, sealer } = signingOf(config)
  const runStatement = makeRunner(
    database,
    yield* onSession,
    {
      attachmentsTable: quoteTableName(config.tableName),
      storedPackets: (run, param) =>
        PacketStore.storeSql(recoveryTables, param, run.nsp, run.rows, run.lastNotified),
    },
    scriptsOff(context),
  )
  let queue: Array<Item> = []
  let inflight: ReadonlyArray<Item> = []
  let timer: ReturnType<typeof setTimeout> | undefined
  // Aborts the batch in flight: its statement's connection is discarded, never left checked out.
  let abort: StatementAbort | undefined
  let closed = false

  // A batch that timed out sends no more statements: they would run beside the next batch.
  const send = async (items: ReadonlyArray<Item>, signal: StatementAbort) => {
    for (const run of splitRuns(items)) {
      if (signal.aborted) return
      const rows = await runStatement(sealer === undefined ? run : sealRun(run, sealer), signal)
      const counts = runCounts(run)
      Metrics.notifyStatements.updateUnsafe(1, context)
      if (counts.notified > 0) Metrics.notificationsSent.updateUnsafe(counts.notified, context)
      if (counts.attachments > 0)
        Metrics.attachmentsWritten.updateUnsafe(counts.attachments, context)
      if (counts.stored > 0) Metrics.packetsStored.updateUnsafe(counts.stored, context)
      const offsets = counts.stored === 0 ? [] : storedOffsets(counts.stored, rows[0]!.last!)
      let next = 0
      for (const item of run) {
        if (item.stored === undefined) settle(item, undefined)
        else settle(item, undefined, offsets[next++], rows[0]!.after)
      }
    }
  }

  // One batch in flight at a time: that is what keeps the order.
  const pump = (): void => {
    if (inflight.length > 0 || closed || queue.length === 0) return
    const items = queue.length <= MAX_BATCH ? queue : queue.slice(0, MAX_BATCH)
    queue = queue.length <= MAX_BATCH ? [] : queue.slice(MAX_BATCH)
    inflight = items
    Metrics.pendingPublishes.updateUnsafe(queue.length, context)
    const controller = new StatementAbort()
    abort = controller
    let ended = false
    const end = (error?: unknown) => {
      if (ended) return
      ended = true
      clearTimeout(timer)
      if (error !== undefined) {
        controller.abort()
        const failure = toPublishError(error)
        Metrics.publishFailures.updateUnsafe(items.filter((item) => !item.settled).length, context)
        for (const item of items) settle(item, failure)
      }
      abort = undefined
      inflight = []
      pump()
    }
    timer = setTimeout(() => {
      // The connection it waits on is dead or stuck: discarded, with the idle ones as old.
      controller.abort(new StatementTimeout(timeoutMillis))
      end(
        new PublishError({
          reason: "Timeout",
          message: "PostgreSQL did not answer within the publishTimeout",
        }),
      )
    }, timeoutMillis)
    send(items, controller).then(() => end(), end)
  }

  yield* Effect.addFinalizer(() =>
    Effect.sync(() => {
      closed = true
      clearTimeout(timer)
      abort?.abort()
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
    options?: PublishOptions,
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
    const item = encodeItem(
      channel,
      message,
      packet,
      config.payloadThreshold,
      signer,
      done,
      options,
    )
    if (item instanceof PublishError) return done(item, undefined)
    queue.push(item)
    // Later in this tick: publishes of the same tick share one statement.
    if (inflight.length === 0 && queue.length === 1) queueMicrotask(pump)
  }

  const unsafePublish = (
    channel: string,
    message: Codec.WireMessage,
    done: PublishCallback,
    options?: PublishOptions,
  ) => enqueue(channel, message, undefined, done, options)

  const publish = (
    channel: string,
    message: Codec.WireMessage,
    options?: PublishOptions,
  ): Effect.Effect<void, PublishError> =>
    Effect.callback<void, PublishError>((resume) =>
      unsafePublish(
        channel,
        message,
        (error) => resume(error === undefined ? Effect.void : Effect.fail(error)),
        options,
      ),
    )

  return Publisher.of({ publish, unsafePublish, unsafeStore: enqueue, sender: signer?.sender })
})

// Runs a statement on the Listener's connection while it is up; where nothing listens (a Publisher
// alone), never: every statement goes through the pool.
const onSession = Effect.map(Effect.serviceOption(Listener), (listener) =>
  Option.isSome(listener) ? listener.value.unsafeQuery : () => undefined,
)

/**
 * Runs the statement of a run: a notify script when it only notifies and the database takes
 * scripts (`Database.scripts`), on the Listener's connection while it is up (`onSession`), else
 * through the pool. The first script the pool refuses (a pool whose client
 * prepares every statement, which PostgreSQL refuses for several; nothing was committed) turns
 * scripts off for good: `onFallback` is told, and the run goes again as `SELECT pg_notify(...)`.
 */
const makeRunner = (
  database: Database["Service"],
  onSession: Listener["Service"]["unsafeQuery"],
  options: Omit<Parameters<typeof makeStatement>[0], "scripts">,
  onFallback: (error: DatabaseError) => void,
) => {
  const selects = makeStatement({ ...options, scripts: false })
  let statement = database.scripts ? makeStatement({ ...options, scripts: true }) : selects
  return async (run: ReadonlyArray<Outgoing>, signal: StatementAbort) => {
    const [sql, params] = statement(run)
    if (params.length === 0) {
      const rows = onSession<{ last?: string; after?: string }>(sql, signal)
      if (rows !== undefined) return rows
    }
    try {
      return await database.unsafeQuery<{ last?: string; after?: string }>(sql, params, signal)
    } catch (error) {
      if (statement === selects || params.length > 0 || !refusesScripts(error)) throw error
      statement = selects
      onFallback(error as DatabaseError)
      const [again, values] = statement(run)
      return database.unsafeQuery<{ last?: string; after?: string }>(again, values, signal)
    }
  }
}

// Says in the application's log that scripts were turned off, and why.
const scriptsOff =
  (context: Context.Context<never>) =>
  (error: DatabaseError): void =>
    void Effect.runForkWith(context)(
      Effect.logWarning(
        `the database refused a notify script (${error.message}): statements that only notify are sent as SELECT pg_notify(...) from now on`,
      ).pipe(Effect.annotateLogs({ module: "Publisher" })),
    )

// PostgreSQL's answer to several statements in one prepared statement (syntax_error).
const refusesScripts = (error: unknown): boolean => {
  const cause = (
    error as { readonly cause?: { readonly code?: unknown; readonly message?: unknown } }
  )?.cause
  return (
    cause?.code === "42601" &&
    typeof cause.message === "string" &&
    cause.message.includes("multiple commands")
  )
}

/**
 * Encodes a message at once (later mutations of the caller's objects must not leak in): a stored
 * packet's notification holds the offset marker, replaced in SQL by its offset.
 */
const encodeItem = (
  channel: string,
  message: Codec.WireMessage | undefined,
  packet: StoredPacket | undefined,
  threshold: number,
  signer: Signing.Signer | undefined,
  done: StoreCallback,
  options: PublishOptions | undefined,
): Item | PublishError => {
  try {
    return {
      channel,
      done,
      settled: false,
      encoded:
        message === undefined
          ? undefined
          : Codec.encode(
              packet === undefined ? message : Codec.withOffsetPlaceholder(message),
              threshold,
              // Room for the envelope the statement's signing puts in front of each payload.
              signer === undefined ? 0 : Signing.ENVELOPE_MAX_BYTES,
              options?.wire ?? 0,
            ),
      stored:
        packet === undefined
          ? undefined
          : {
              nsp: packet.nsp,
              rooms: packet.rooms,
              except: packet.except,
              bytes: signStored(packet, Codec.encodePacketData(packet.data), signer),
            },
    }
  } catch (cause) {
    return new PublishError({
      reason: "Encode",
      message: `message cannot be encoded: ${(cause as Error)?.message}`,
      cause,
    })
  }
}

/** A stored packet's row, signed with its namespace and rooms when the cluster signs. */
const signStored = (
  packet: StoredPacket,
  bytes: Uint8Array,
  signer: Signing.Signer | undefined,
): Uint8Array =>
  signer === undefined
    ? bytes
    : Signing.sealRecord(
        signer.keys,
        Signing.PACKET,
        [packet.nsp, packet.rooms, packet.except],
        bytes,
      )

/** How statements of `signer` seal their runs: one MAC per batch, attachments alone. */
export const sealerOf = (signer: Signing.Signer): RunSealer => ({
  max: Signing.MAX_BATCH,
  batch: (channel, payloads) => signer.sealBatch(channel, payloads),
  attachment: (channel, encoded) => ({
    _tag: "Attachment",
    ...signer.sealAttachment(channel, encoded.bytes, encoded.header),
  }),
})

/**
 * The publisher's signer when the cluster signs, and how it signs a statement: once it is built
 * (not per message), one MAC per batch of consecutive notifications on a channel, attachments
 * alone.
 */
const signingOf = (
  config: ClusterConfig,
): { readonly signer?: Signing.Signer; readonly sealer?: RunSealer } => {
  const keys = keysOf(config)
  if (keys === undefined) return {}
  const signer = new Signing.Signer(keys)
  return { signer, sealer: sealerOf(signer) }
}

/** The Publisher layer; needs `AdapterConfig` and `Database`. */
export const layer: Layer.Layer<Publisher, never, AdapterConfig | Database> = Layer.effect(
  Publisher,
  make,
)
