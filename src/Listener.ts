/**
 * The LISTEN side: one dedicated connection that listens on every channel in use and hands each
 * notification to the channel's subscribers.
 *
 * Shaped after Effect's `RpcClient` socket loop: a session (connect, LISTEN every channel,
 * consume until the connection is lost) is one scoped effect, retried on an exponential, jittered
 * schedule capped at `reconnectMaxDelay`, so that a session that connects and drops at once waits
 * like a connection that fails. Each channel's LISTEN is retried alone on the same schedule: a
 * channel PostgreSQL refuses (a name it rejects, a hot standby "cannot execute LISTEN during
 * recovery") fails alone and is reported at a bounded rate, never in a tight loop.
 *
 * Liveness, as RpcClient's pinger: a connection can die without a word (NAT reset, fail-over,
 * pulled cable; TCP keep-alive waits two hours), and a LISTEN connection only receives. So it is
 * pinged every `livenessInterval`; silent for `livenessTimeout` with a ping unanswered, it is
 * destroyed and the session ends like any drop: a new connection, every channel LISTENed again,
 * `onListen` (heartbeats, catch-up) after it. The ping is a LISTEN of a channel already listened
 * on, which PostgreSQL answers doing nothing ("if the session is already registered as a listener
 * for this channel, nothing is done"): no WAL, unlike a NOTIFY echo, and `pg_stat_activity` keeps
 * showing the connection's LISTEN; `SELECT 1` while no channel is listened on yet, and no ping
 * while no channel is wanted.
 *
 * The Publisher sends its notify-only statements on this connection while it is up
 * (`unsafeQuery`): PostgreSQL before 19 wakes every listening backend of the database at each
 * commit that notifies, and a commit from a listening backend wakes one fewer than a commit from
 * a pooled one (`npm run bench:hops`). One statement of the Publisher at a time, and one LISTEN,
 * UNLISTEN or ping at a time under the session's lock, so at most one query waits behind another
 * on the client. A statement past its deadline replaces the connection, as a silent one is. Each
 * is led by a LISTEN of a channel already listened on, as the ping is, so that the connection
 * still shows a LISTEN in `pg_stat_activity`.
 *
 * @since 0.1.0
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberMap from "effect/FiberMap"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import type * as Pull from "effect/Pull"
import * as Queue from "effect/Queue"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Semaphore from "effect/Semaphore"
import * as Stream from "effect/Stream"
import { quoteIdentifier } from "./Channel.js"
import { AdapterConfig } from "./AdapterConfig.js"
import { connect, Database, type DedicatedClient } from "./Database.js"
import { destroySocket, lastRows, type StatementAbort, StatementTimeout } from "./internal/pool.js"
import {
  type DatabaseError,
  ListenError,
  permanentCode,
  Reconnected,
  report,
  statementError,
} from "./Errors.js"
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

/** What a channel's {@link Listener} `events` stream carries: a {@link Subscriber}'s calls. */
export type ListenerEvent =
  /** The channel is listened on (first time, and after every reconnection): resynchronise. */
  | { readonly _tag: "Listening" }
  /** A notification, in commit order. */
  | { readonly _tag: "Notification"; readonly payload: string }
  /** The connection was lost: notifications are missed until the next `Listening`. */
  | { readonly _tag: "Lost" }

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
    /** The same as a stream: subscribed while it is consumed; it never ends by itself. */
    readonly events: (channel: string) => Stream.Stream<ListenerEvent>
    /**
     * The PostgreSQL backend pid of the LISTEN connection while it is up: while this process
     * lives, so does that backend (sessions of live sockets are tied to it).
     */
    readonly unsafeBackendPid: () => number | undefined
    /**
     * Runs a statement without parameters on the LISTEN connection while one is up (for the
     * Publisher's notify scripts: see the module's notes), `undefined` when none is, for the
     * caller to take the pool. Rejects with a `DatabaseError`. `abort` abandons it; aborted with a
     * {@link StatementTimeout} reason, the connection is replaced and the pool's connections as
     * old are distrusted (`Database.markStale`).
     */
    readonly unsafeQuery: <A = Record<string, unknown>>(
      sql: string,
      abort: StatementAbort,
    ) => Promise<ReadonlyArray<A>> | undefined
  }
>()("socket.io-postgres-effect/Listener") {}

/** One connection's life, while it is up. */
interface Session {
  readonly client: DedicatedClient
  /** Completed when the connection is lost. */
  readonly lost: Deferred.Deferred<never, ListenError>
  /** Channels whose LISTEN holds on this connection. */
  readonly listened: Set<string>
  /** Channels whose LISTEN was sent (held or in flight) and not UNLISTENed since. */
  readonly sent: Set<string>
  /** One LISTEN/UNLISTEN at a time: pg deprecates queueing queries on a busy client. */
  readonly lock: Semaphore.Semaphore
  /** Each channel's LISTEN, retried until it holds; interrupted when the session ends. */
  readonly listening: FiberMap.FiberMap<string>
  /** Bytes arrived since the liveness check last looked: the connection is not silent. */
  heard: boolean
}

/** How a session ended: connected or not, and whether it lived long enough to count as healthy. */
interface Ended {
  readonly error: ListenError
  readonly connected: boolean
  readonly healthy: boolean
}

/**
 * Exponential from 100 ms, jittered, capped at `max`: the reconnection and re-LISTEN delays.
 * Started afresh when `reset(input)` holds (after a session that was up long enough).
 */
export const backoff = <I = unknown>(
  max: Duration.Duration,
  reset: (input: I) => boolean = () => false,
): Schedule.Schedule<Duration.Duration, I> => {
  const schedule = Schedule.min([
    Schedule.exponential("100 millis", 2).pipe(Schedule.jittered),
    Schedule.spaced(max),
  ])
  return Schedule.fromStep(
    Effect.sync(() => {
      let step: Step<I> | undefined
      return (now: number, input: I) =>
        step !== undefined && !reset(input)
          ? step(now, input)
          : Effect.flatMap(Schedule.toStep(schedule), (fresh) => (step = fresh)(now, input))
    }),
  )
}

type Step<I> = (
  now: number,
  input: I,
) => Pull.Pull<[Duration.Duration, Duration.Duration], never, Duration.Duration>

/** Builds the Listener; its sessions run until the scope closes. */
export const make = Effect.gen(function* () {
  const config = yield* AdapterConfig
  const database = yield* Database
  // Handlers' failures are logged, and LISTEN failures reported, with the layer's services (the
  // application's logger and error handler), also when a subscriber's fiber starts the LISTEN.
  const context = yield* Effect.context<never>()
  const runFork = Effect.runForkWith(context)
  const channels = new Subscribers((what, error) =>
    runFork(Effect.logError(`${what} handler threw`, error)),
  )
  let session: Session | undefined
  const incident = makeIncident()

  // A channel's LISTEN on this session, retried alone until it holds; then its subscribers
  // hear `onListen`. A failure is reported unless the connection itself is gone (the session's
  // end reports that).
  const listenChannel = (current: Session, channel: string) =>
    command(current, "LISTEN", channel, channels).pipe(
      Effect.tapError((error) =>
        Deferred.isDoneUnsafe(current.lost)
          ? Effect.void
          : Effect.logWarning(error.message).pipe(Effect.andThen(report(error))),
      ),
      Effect.retry(backoff(config.reconnectMaxDelay)),
      Effect.flatMap((sent) =>
        Effect.sync(() => {
          if (!sent) return
          current.listened.add(channel)
          channels.tell(channel, "onListen")
        }),
      ),
      Effect.annotateLogs({ module: "Listener", channel }),
      Effect.provideContext(context),
    )

  // A connection attempt that hangs (its packets black-holed) is given up after heartbeatTimeout
  // (unless the pool sets its own): startup may be slow (TLS, SCRAM), never that slow.
  const connectionOptions: typeof database.connectionOptions = {
    ...database.connectionOptions,
    connectionTimeoutMillis:
      database.connectionOptions.connectionTimeoutMillis ||
      Duration.toMillis(config.heartbeatTimeout),
  }
  const liveness = {
    interval: config.livenessInterval,
    timeout: config.livenessTimeout,
    // The pool's connections as old as a silent LISTEN connection share its network path.
    markStale: database.markStale,
  }

  // One session: connect, LISTEN every channel, then consume until the connection is lost.
  const runSession = Effect.gen(function* () {
    const client = yield* connect(connectionOptions).pipe(Effect.mapError(connectFailed))
    const current: Session = {
      client,
      lost: yield* Deferred.make<never, ListenError>(),
      listened: new Set(),
      sent: new Set(),
      lock: yield* Semaphore.make(1),
      listening: yield* FiberMap.make<string>(),
      heard: false,
    }
    yield* watchConnection(current, channels.dispatch)
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => session === current && (session = undefined)),
    )
    session = current
    const since = yield* Clock.currentTimeMillis
    yield* Metric.update(Metrics.listenerConnects, 1)
    yield* incident.back(since)
    for (const channel of [...channels.names()])
      yield* FiberMap.run(current.listening, channel, listenChannel(current, channel), {
        onlyIfMissing: true,
      })
    return yield* consume(current, pinger(current, ping(current, channels), liveness)).pipe(
      Effect.catch((error) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) =>
          Effect.fail<Ended>({
            error,
            connected: true,
            healthy: now - since >= Duration.toMillis(config.reconnectMaxDelay),
          }),
        ),
      ),
    )
  }).pipe(Effect.scoped)

  const onEnded = Effect.fnUntraced(function* (ended: Ended) {
    if (ended.connected) {
      for (const channel of channels.names()) channels.tell(channel, "onLost")
      yield* Metric.update(Metrics.listenerDrops, 1)
    }
    yield* incident.failed(ended.error)
  })

  // The connection is opened when the first subscriber arrives, not before. Sessions follow one
  // another on the backoff, started afresh after a session that was up long enough.
  const wanted = yield* Deferred.make<void>()
  yield* Deferred.await(wanted).pipe(
    Effect.andThen(
      runSession.pipe(
        Effect.tapError(onEnded),
        Effect.retry(backoff(config.reconnectMaxDelay, (ended: Ended) => ended.healthy)),
      ),
    ),
    Effect.annotateLogs({ module: "Listener" }),
    Effect.forkScoped,
  )

  const subscribe = (channel: string, subscriber: Subscriber) =>
    Effect.acquireRelease(
      Effect.suspend(() => {
        channels.add(channel, subscriber)
        Deferred.doneUnsafe(wanted, Exit.void)
        const current = session
        if (current === undefined) return Effect.void
        // Already active: this subscriber is told now; else when its LISTEN holds.
        if (current.listened.has(channel))
          return Effect.sync(() => channels.call("onListen", () => subscriber.onListen()))
        return FiberMap.run(current.listening, channel, listenChannel(current, channel), {
          onlyIfMissing: true,
        })
      }),
      () => unsubscribe(channel, subscriber),
    ).pipe(Effect.asVoid, Effect.annotateLogs({ module: "Listener", channel }))

  const unsubscribe = (channel: string, subscriber: Subscriber) =>
    Effect.suspend(() => {
      if (!channels.remove(channel, subscriber) || session === undefined) return Effect.void
      return unlisten(session, channel, channels)
    })

  const unsafeQuery = <A>(sql: string, abort: StatementAbort) => {
    const current = session
    if (current === undefined || Deferred.isDoneUnsafe(current.lost)) return undefined
    const statement = ledByListen(current, channels, sql)
    return runOnSession<A>(current, statement, abort, (at) => runFork(database.markStale(at)))
  }

  return Listener.of({
    subscribe,
    events: eventsOf(subscribe),
    unsafeBackendPid: () => (session?.client as { processID?: number } | undefined)?.processID,
    unsafeQuery,
  })
})

// The failures since the connection was last up, and its return, which ends the incident: each
// failure reported (a permanent one once: see `report`) and logged, a permanent one again only at
// debug level (retried quietly, in case someone fixes it); the return logged at debug level, and
// told to the errorHandler once per incident.
const makeIncident = () => {
  let failing: { readonly since: number; attempts: number } | undefined
  return {
    failed: Effect.fnUntraced(function* (error: ListenError) {
      failing ??= { since: yield* Clock.currentTimeMillis, attempts: 0 }
      failing.attempts++
      yield* report(error)
      const quiet = failing.attempts > 1 && permanentCode(error) !== undefined
      yield* (quiet ? Effect.logDebug : Effect.logWarning)(error.message)
    }),
    back: Effect.fnUntraced(function* (now: number) {
      yield* Effect.logDebug(`LISTEN connection ${failing === undefined ? "" : "re-"}established`)
      if (failing === undefined) return
      const { attempts, since } = failing
      failing = undefined
      const seconds = Math.round((now - since) / 100) / 10
      yield* report(
        new Reconnected({
          message: `LISTEN connection back after ${attempts} failed attempt${attempts === 1 ? "" : "s"} (${seconds} s)`,
        }),
      )
    }),
  }
}

// The subscribers of each channel: a throwing subscriber breaks neither the others nor the
// connection.
class Subscribers {
  readonly #channels = new Map<string, Set<Subscriber>>()
  constructor(readonly logError: (what: string, error: unknown) => void) {}

  names(): Iterable<string> {
    return this.#channels.keys()
  }

  has(channel: string): boolean {
    return this.#channels.has(channel)
  }

  get size(): number {
    return this.#channels.size
  }

  add(channel: string, subscriber: Subscriber): void {
    const set = this.#channels.get(channel)
    if (set === undefined) this.#channels.set(channel, new Set([subscriber]))
    else set.add(subscriber)
  }

  /** Removes a subscriber; true when it was its channel's last. */
  remove(channel: string, subscriber: Subscriber): boolean {
    const set = this.#channels.get(channel)
    if (set === undefined || !set.delete(subscriber) || set.size > 0) return false
    this.#channels.delete(channel)
    return true
  }

  tell(channel: string, what: "onListen" | "onLost"): void {
    for (const subscriber of this.#channels.get(channel) ?? [])
      this.call(what, () => subscriber[what]?.())
  }

  // The hot path: no closure per notification.
  readonly dispatch = (message: { channel: string; payload?: string }): void => {
    const set = this.#channels.get(message.channel)
    if (set === undefined) return
    for (const subscriber of set) {
      try {
        subscriber.onNotification(message.payload ?? "")
      } catch (e) {
        this.logError("notification", e)
      }
    }
  }

  /** Calls a subscriber's handler; what it throws is logged. */
  call(what: string, f: () => void): void {
    try {
      f()
    } catch (e) {
      this.logError(what, e)
    }
  }
}

const STATEMENTS = {
  LISTEN: Metric.withAttributes(Metrics.listenStatements, { verb: "LISTEN" }),
  UNLISTEN: Metric.withAttributes(Metrics.listenStatements, { verb: "UNLISTEN" }),
}

// `sql` led by a LISTEN of a channel the session listens on and still wants (nothing done, as the
// ping does; an UNLISTEN of it, if one comes, is sent after): `pg_stat_activity` keeps showing a
// LISTEN on the connection.
const ledByListen = (current: Session, subscribers: Subscribers, sql: string): string => {
  for (const channel of current.listened) {
    if (subscribers.has(channel)) return `LISTEN ${quoteIdentifier(channel)}; ${sql}`
  }
  return sql
}

// A statement on a session's connection. Abandoned, it settles at once (what the connection says
// later is dropped); past its deadline, the connection is destroyed: the session ends as a lost
// one does, and a new one LISTENs again.
const runOnSession = <A>(
  current: Session,
  sql: string,
  abort: StatementAbort,
  markStale: (at: number) => void,
): Promise<ReadonlyArray<A>> =>
  new Promise((resolve, reject) => {
    const failed = statementError(sql)
    let settled = false
    const finish = (error: DatabaseError | undefined, rows?: ReadonlyArray<A>) => {
      if (settled) return
      settled = true
      abort.onAbort(undefined)
      if (error === undefined) resolve(rows!)
      else reject(error)
    }
    if (abort.aborted) return finish(failed(abort.reason))
    const started = Date.now()
    abort.onAbort(() => {
      const reason = abort.reason
      if (reason instanceof StatementTimeout) {
        destroySocket(current.client)
        markStale(started)
      }
      finish(failed(reason))
    })
    current.client.query(sql).then(
      (result) => finish(undefined, lastRows<A>(result)),
      (cause) => finish(failed(cause)),
    )
  })

// Sends LISTEN or UNLISTEN unless the channel's wanted state changed while this waited for its
// turn: what reaches PostgreSQL last always matches the subscriptions. False when skipped.
const command = (
  current: Session,
  verb: "LISTEN" | "UNLISTEN",
  channel: string,
  subscribers: Subscribers,
) =>
  Effect.suspend(() =>
    (verb === "LISTEN") !== subscribers.has(channel)
      ? Effect.succeed(false)
      : Effect.tryPromise({
          try: () => {
            if (verb === "LISTEN") current.sent.add(channel)
            else current.sent.delete(channel)
            STATEMENTS[verb].updateUnsafe(1, Context.empty())
            return current.client.query(`${verb} ${quoteIdentifier(channel)}`)
          },
          catch: (cause) =>
            new ListenError({
              channel,
              message: `${verb} on ${channel} failed: ${(cause as Error)?.message}`,
              cause,
            }),
        }).pipe(Effect.as(true)),
  ).pipe(current.lock.withPermits(1))

// A channel's last subscriber left: its LISTEN is undone on the session. One still waiting (for the
// lock, or to retry) is called off, and then there is nothing to UNLISTEN.
const unlisten = (current: Session, channel: string, subscribers: Subscribers) => {
  const tried = current.listened.delete(channel) || FiberMap.hasUnsafe(current.listening, channel)
  if (!tried) return Effect.void
  return FiberMap.remove(current.listening, channel).pipe(
    Effect.andThen(
      Effect.suspend(() =>
        current.sent.has(channel)
          ? command(current, "UNLISTEN", channel, subscribers)
          : Effect.void,
      ),
    ),
    // Runs as a finalizer (uninterruptible): let the timeout cut a frozen server.
    Effect.interruptible,
    Effect.timeout("2 seconds"),
    Effect.ignore,
  )
}

// Says which connection failed: the pool's errors read the same ("connect failed").
const connectFailed = (error: DatabaseError): Ended => ({
  error: new ListenError({ message: `LISTEN connection failed: ${error.message}`, cause: error }),
  connected: false,
  healthy: false,
})

// A session's life once connected: until its connection is lost (notifications flow to
// `dispatch` meanwhile) or goes silent, as RpcClient races its pinger against its read loop.
const consume = (
  current: Session,
  liveness: Effect.Effect<never, ListenError>,
): Effect.Effect<never, ListenError> => Effect.raceFirst(Deferred.await(current.lost), liveness)

// The liveness ping (see the module's notes). A channel still in `listened` under the lock is
// still wanted: its UNLISTEN, if any, is queued behind this and reaches PostgreSQL last. With no
// subscriber at all nothing can be missed: no ping (the next subscriber's LISTEN is pinged).
const ping = (current: Session, subscribers: Subscribers) =>
  Effect.suspend(() => {
    if (subscribers.size === 0) return Effect.void
    let statement = "SELECT 1"
    for (const channel of current.listened) {
      if (!subscribers.has(channel)) continue
      statement = `LISTEN ${quoteIdentifier(channel)}`
      break
    }
    return Effect.tryPromise({
      try: () => current.client.query(statement),
      catch: (cause) =>
        new ListenError({
          message: `LISTEN connection failed its liveness ping: ${(cause as Error)?.message}`,
          cause,
        }),
    })
  }).pipe(current.lock.withPermits(1))

/**
 * Sends `ping` every `interval` and fails when the connection stays silent for `timeout` with one
 * unanswered: then its socket is destroyed (a silent peer never answers `end()`) and the pool's
 * connections not seen alive since the ping was sent are marked stale. Bytes received meanwhile
 * (notifications queued ahead of the answer, on a slow path or a busy server) restart the wait:
 * only silence counts, never a slow answer.
 */
const pinger = Effect.fnUntraced(function* (
  current: Session,
  ping: Effect.Effect<unknown, ListenError>,
  options: {
    readonly interval: Duration.Duration
    readonly timeout: Duration.Duration
    readonly markStale: (at: number) => Effect.Effect<void>
  },
) {
  for (;;) {
    yield* Effect.sleep(options.interval)
    const sentAt = Date.now()
    const answer = yield* Effect.forkChild(ping)
    for (;;) {
      current.heard = false
      const answered = yield* Fiber.await(answer).pipe(Effect.timeoutOption(options.timeout))
      if (Option.isSome(answered)) {
        if (Exit.isFailure(answered.value)) return yield* Effect.failCause(answered.value.cause)
        break
      }
      if (!current.heard) {
        destroySocket(current.client)
        yield* options.markStale(sentAt)
        return yield* new ListenError({
          message: `LISTEN connection silent for ${Duration.format(options.timeout)} (liveness ping unanswered): replacing it`,
        })
      }
    }
  }
})

const LISTENING: ListenerEvent = { _tag: "Listening" }
const LOST: ListenerEvent = { _tag: "Lost" }

// A channel's subscription as a stream of its events: subscribed while the stream runs.
const eventsOf =
  (subscribe: Listener["Service"]["subscribe"]) =>
  (channel: string): Stream.Stream<ListenerEvent> =>
    Stream.callback<ListenerEvent>((queue) =>
      subscribe(channel, {
        onNotification: (payload) => Queue.offerUnsafe(queue, { _tag: "Notification", payload }),
        onListen: () => Queue.offerUnsafe(queue, LISTENING),
        onLost: () => Queue.offerUnsafe(queue, LOST),
      }),
    )

// Hands the connection's notifications to `dispatch`, notes that bytes arrived (liveness), and
// completes `lost` when it errors or ends, until the scope closes.
const watchConnection = (
  current: Session,
  dispatch: (message: { channel: string; payload?: string }) => void,
) => {
  const { client, lost } = current
  const stream = (client as unknown as { connection: { stream: NodeJS.EventEmitter } }).connection
    .stream
  const onData = () => {
    current.heard = true
  }
  const onLost = (cause: unknown) =>
    Deferred.doneUnsafe(
      lost,
      Exit.fail(
        new ListenError({
          message: `LISTEN connection lost: ${cause instanceof Error ? cause.message : "connection ended"}`,
          cause,
        }),
      ),
    )
  const onEnd = () => onLost(undefined)
  return Effect.acquireRelease(
    Effect.sync(() => {
      client.on("notification", dispatch)
      client.on("error", onLost)
      client.on("end", onEnd)
      stream.on("data", onData)
    }),
    () =>
      Effect.sync(() => {
        client.off("notification", dispatch)
        client.off("error", onLost)
        client.off("end", onEnd)
        stream.off("data", onData)
      }),
  )
}

/** The Listener layer; needs `AdapterConfig` and `Database`. */
export const layer: Layer.Layer<Listener, never, AdapterConfig | Database> = Layer.effect(
  Listener,
  make,
)
