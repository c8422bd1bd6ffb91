/**
 * The LISTEN side: one dedicated connection that listens on every channel in use, hands each
 * notification to the channel's subscribers, and reconnects with backoff when it is lost,
 * re-issuing every LISTEN.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Semaphore from "effect/Semaphore"
import { quoteIdentifier } from "./Channel.js"
import { Config } from "./Config.js"
import { connect, Database, type DedicatedClient } from "./Database.js"
import { ListenError, report } from "./Errors.js"
import * as Metrics from "./Metrics.js"

/** What a subscriber of a channel is told. */
export interface Subscriber {
  /** A notification arrived on the channel (in commit order). */
  readonly onNotification: (payload: string) => void
  /** The channel is listened on: first time, and again after every reconnection. */
  readonly onListen: () => void
  /** The connection was lost: notifications are missed until the next `onListen`. */
  readonly onLost?: () => void
}

/** The Listener service. */
export class Listener extends Context.Service<
  Listener,
  {
    /**
     * Subscribes to a channel for the lifetime of the scope. Returns at once; `onListen` is
     * called when the LISTEN is active. The channel is UNLISTENed when its last subscriber leaves.
     */
    readonly subscribe: (
      channel: string,
      subscriber: Subscriber,
    ) => Effect.Effect<void, never, Scope.Scope>
    /** True while the LISTEN connection is up. */
    readonly isConnected: Effect.Effect<boolean>
    /**
     * The PostgreSQL backend pid of the LISTEN connection while it is up: while this process
     * lives, so does that backend (sessions of live sockets are tied to it).
     */
    readonly unsafeBackendPid: () => number | undefined
  }
>()("socket.io-postgres-effect/Listener") {}

interface Session {
  readonly client: DedicatedClient
  /** Channels whose LISTEN was sent on this connection. */
  readonly listened: Set<string>
  /** One LISTEN/UNLISTEN at a time: pg deprecates queueing queries on a busy client. */
  readonly lock: Semaphore.Semaphore
}

/** Builds the Listener; its connection loop runs until the scope closes. */
export const make = Effect.gen(function* () {
  const config = yield* Config
  const database = yield* Database
  // Handlers' failures are logged through the application's logger.
  const runFork = Effect.runForkWith(yield* Effect.context<never>())
  const subscribers = new Map<string, Set<Subscriber>>()
  let session: Session | undefined

  const callOnListen = (channel: string) => {
    for (const subscriber of subscribers.get(channel) ?? []) subscriber.onListen()
  }

  const listenOn = (current: Session, channel: string) =>
    Effect.suspend(() => {
      if (current.listened.has(channel)) return Effect.void
      current.listened.add(channel)
      return Effect.tryPromise({
        try: () => current.client.query(`LISTEN ${quoteIdentifier(channel)}`),
        catch: (cause) =>
          new ListenError({
            channel,
            message: `LISTEN on ${channel} failed: ${(cause as Error)?.message}`,
            cause,
          }),
      }).pipe(
        current.lock.withPermits(1),
        Effect.tap(() => Effect.sync(() => session === current && callOnListen(channel))),
        Effect.tapError(() => Effect.sync(() => current.listened.delete(channel))),
      )
    })

  const dispatch = (message: { channel: string; payload?: string }) => {
    const set = subscribers.get(message.channel)
    if (set === undefined) return
    for (const subscriber of set) {
      try {
        subscriber.onNotification(message.payload ?? "")
      } catch (e) {
        // A subscriber must not break the others, nor the connection.
        runFork(Effect.logError("notification handler threw", e))
      }
    }
  }

  // Recurs while either does, with the shorter delay: exponential, capped at reconnectMaxDelay.
  const backoff = Schedule.min([
    Schedule.exponential("100 millis", 2).pipe(Schedule.jittered),
    Schedule.spaced(config.reconnectMaxDelay),
  ])

  // One connection's life: connect (retried), LISTEN everything, wait until it is lost.
  const runSession = Effect.scoped(
    Effect.gen(function* () {
      const client = yield* connect(database.connectionOptions).pipe(
        Effect.tapError((error) => {
          // Say which connection failed: the pool's errors read the same ("connect failed").
          const failed = new ListenError({
            message: `LISTEN connection failed: ${error.message}`,
            cause: error,
          })
          return Effect.logWarning(failed.message).pipe(Effect.andThen(report(failed)))
        }),
        Effect.retry(backoff),
      )
      const lost = yield* Deferred.make<never, ListenError>()
      const onLost = (cause: unknown) =>
        Deferred.doneUnsafe(
          lost,
          Effect.fail(
            new ListenError({
              message: `LISTEN connection lost: ${cause instanceof Error ? cause.message : "connection ended"}`,
              cause,
            }),
          ),
        )
      const onEnd = () => onLost(undefined)
      client.on("notification", dispatch)
      client.on("error", onLost)
      client.on("end", onEnd)
      const current: Session = { client, listened: new Set(), lock: yield* Semaphore.make(1) }
      // `Scope.addFinalizer`, not `Effect.addFinalizer`: in Effect 3.22 an `Effect.addFinalizer`
      // that runs before the connection's release makes that release's FiberRefs restore wipe an
      // interruption arriving meanwhile (database stopping while we close), and this loop would
      // then reconnect forever after its scope closed.
      yield* Scope.addFinalizer(
        yield* Effect.scope,
        Effect.sync(() => {
          if (session === current) session = undefined
          client.off("notification", dispatch)
          client.off("error", onLost)
          client.off("end", onEnd)
        }),
      )
      session = current
      yield* Metric.update(Metrics.listenerConnects, 1)
      yield* Effect.logDebug("LISTEN connection established")
      yield* Effect.forEach([...subscribers.keys()], (channel) => listenOn(current, channel), {
        discard: true,
      }).pipe(Effect.catch((error) => Deferred.fail(lost, error)))
      return yield* Deferred.await(lost)
    }),
  )

  // The connection is opened when the first subscriber arrives, not before.
  const wanted = yield* Deferred.make<void>()
  yield* Deferred.await(wanted).pipe(
    Effect.andThen(
      runSession.pipe(
        Effect.catch((error) =>
          Effect.sync(() => {
            for (const set of subscribers.values()) {
              for (const subscriber of set) {
                try {
                  subscriber.onLost?.()
                } catch (e) {
                  runFork(Effect.logError("onLost handler threw", e))
                }
              }
            }
          }).pipe(
            Effect.andThen(Effect.logWarning(error.message)),
            Effect.andThen(Metric.update(Metrics.listenerDrops, 1)),
            Effect.andThen(report(new Error(error.message, { cause: error }))),
          ),
        ),
        Effect.forever,
      ),
    ),
    Effect.annotateLogs({ module: "Listener" }),
    Effect.forkScoped,
  )

  const subscribe = (channel: string, subscriber: Subscriber) =>
    Effect.acquireRelease(
      Effect.gen(function* () {
        let set = subscribers.get(channel)
        if (set === undefined) {
          set = new Set()
          subscribers.set(channel, set)
        }
        set.add(subscriber)
        Deferred.doneUnsafe(wanted, Effect.void)
        const current = session
        if (current === undefined) return
        if (current.listened.has(channel)) {
          // Already active (or about to be, then onListen comes with it).
          subscriber.onListen()
          return
        }
        yield* listenOn(current, channel).pipe(
          Effect.catch((error) =>
            // A channel that cannot be listened on fails alone; the connection is kept.
            Effect.logWarning(error.message).pipe(
              Effect.andThen(report(new Error(error.message, { cause: error }))),
            ),
          ),
          Effect.forkDetach,
        )
      }),
      () =>
        Effect.suspend(() => {
          const set = subscribers.get(channel)
          set?.delete(subscriber)
          if (set === undefined || set.size > 0) return Effect.void
          subscribers.delete(channel)
          const current = session
          if (current === undefined || !current.listened.delete(channel)) return Effect.void
          return Effect.tryPromise(() =>
            current.client.query(`UNLISTEN ${quoteIdentifier(channel)}`),
          ).pipe(
            current.lock.withPermits(1),
            // Runs as a finalizer (uninterruptible): let the timeout cut a frozen server.
            Effect.interruptible,
            Effect.timeout("2 seconds"),
            Effect.ignore,
          )
        }),
    ).pipe(Effect.asVoid, Effect.annotateLogs({ module: "Listener", channel }))

  return Listener.of({
    subscribe,
    isConnected: Effect.sync(() => session !== undefined),
    unsafeBackendPid: () => (session?.client as { processID?: number } | undefined)?.processID,
  })
})

/** The Listener layer; needs `Config` and `Database`. */
export const layer: Layer.Layer<Listener, never, Config | Database> = Layer.effect(Listener, make)
