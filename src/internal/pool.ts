/**
 * Statements on a caller's `pg.Pool` that never leave a dead connection behind.
 *
 * A connection can die silently (NAT reset, fail-over, pulled cable: no FIN, no RST): a statement
 * on it never completes, and `pool.query` would keep it checked out for ever. Here a statement
 * has a deadline (a timer, or its caller's `AbortSignal`): past it, its connection is released
 * with an error, so that the pool discards it, and its socket destroyed (a black-holed
 * connection's `end()` never completes), and the caller gets its rejection at once.
 *
 * Idle connections of the pool went through the same network path: after a deadline passed, the
 * connections not seen alive since that statement started are discarded at checkout instead of
 * tried one deadline after another. A connection is seen alive when it connects (the pool's
 * `connect` event) and when a statement of ours completes on it. Only public `pg.Pool` API is
 * used: `connect()`, `release(error)` and the `connect` event.
 */
import type pg from "pg"

/**
 * The abort reason of a statement that passed its deadline: besides its own connection, the
 * pool's connections not seen alive since it started are distrusted.
 */
export class StatementTimeout extends Error {
  constructor(readonly millis: number) {
    super(`PostgreSQL did not answer within ${millis} ms`)
    this.name = "StatementTimeout"
  }
}

/** The rejection of a statement abandoned by its caller (interrupted): its connection is gone. */
export class StatementAbandoned extends Error {
  constructor() {
    super("the statement was abandoned before PostgreSQL answered")
    this.name = "StatementAbandoned"
  }
}

/** What is known of a pool's connections, shared by every service over that pool. */
interface Health {
  /** Connections last seen alive before this time (epoch ms) are discarded at checkout. */
  staleBefore: number
  /** When each connection was last seen alive. */
  readonly alive: WeakMap<pg.ClientBase, number>
  readonly onConnect: (client: pg.ClientBase) => void
  watchers: number
}

const pools = new WeakMap<pg.Pool, Health>()

/**
 * Watches a pool's new connections (their connection is their first sign of life) until the
 * returned function is called; watchers of one pool share what they learn.
 */
export const watch = (pool: pg.Pool): (() => void) => {
  let health = pools.get(pool)
  if (health === undefined) {
    const alive = new WeakMap<pg.ClientBase, number>()
    health = {
      staleBefore: 0,
      alive,
      onConnect: (client) => void alive.set(client, Date.now()),
      watchers: 0,
    }
    pools.set(pool, health)
  }
  const watched = health
  if (watched.watchers++ === 0) pool.on("connect", watched.onConnect)
  let stopped = false
  return () => {
    if (stopped) return
    stopped = true
    if (--watched.watchers === 0) pool.off("connect", watched.onConnect)
  }
}

/**
 * The network path failed at `at` (epoch ms): the pool's connections last seen alive before it
 * are discarded at their next checkout by us.
 */
export const markStale = (pool: pg.Pool, at: number): void => {
  const health = pools.get(pool)
  if (health !== undefined && at > health.staleBefore) health.staleBefore = at
}

/** Destroys a connection's socket: a dead peer never answers the goodbye `end()` waits for. */
export const destroySocket = (client: pg.ClientBase): void =>
  (
    client as unknown as { connection?: { stream?: { destroy?: () => void } } }
  ).connection?.stream?.destroy?.()

// The pool drops a connection released with an error; its socket goes at once.
const discard = (client: pg.PoolClient, why: string) => {
  try {
    client.release(new Error(why))
  } catch {
    // Released already (it errored meanwhile): nothing of ours holds it.
  }
  destroySocket(client)
}

const ignore = () => {}

/**
 * Checks a connection out; if `signal` aborts first, rejects at once and gives the connection
 * back when it comes.
 */
const connect = (pool: pg.Pool, signal: AbortSignal | undefined): Promise<pg.PoolClient> => {
  if (signal === undefined) return pool.connect()
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(abortReason(signal))
    signal.addEventListener("abort", onAbort, { once: true })
    pool.connect().then(
      (client) => {
        signal.removeEventListener("abort", onAbort)
        if (signal.aborted) client.release()
        else resolve(client)
      },
      (error) => {
        signal.removeEventListener("abort", onAbort)
        reject(error)
      },
    )
  })
}

const abortReason = (signal: AbortSignal) =>
  signal.reason instanceof StatementTimeout ? signal.reason : new StatementAbandoned()

// A connection not seen alive since the path failed is dropped, and the next one is tried: the
// pool hands out idle ones first, then connects new ones (seen alive as they connect).
const checkout = async (pool: pg.Pool, signal: AbortSignal | undefined) => {
  const health = pools.get(pool)
  for (;;) {
    const client = await connect(pool, signal)
    if (health === undefined || (health.alive.get(client) ?? 0) >= health.staleBefore) return client
    discard(client, "idle since the network path to PostgreSQL failed")
  }
}

/** Options of {@link run}. */
export interface RunOptions {
  /** Abandons the statement when aborted; a {@link StatementTimeout} reason marks the pool stale. */
  readonly signal?: AbortSignal | undefined
  /** A deadline of its own, in ms: past it the statement fails with a {@link StatementTimeout}. */
  readonly timeoutMillis?: number | undefined
}

/**
 * Runs one statement on a connection of `pool`. Past its deadline, or abandoned, it rejects at
 * once and its connection is discarded; nothing stays checked out.
 */
export const run = (
  pool: pg.Pool,
  text: string,
  values: ReadonlyArray<unknown> | undefined,
  options: RunOptions = {},
): Promise<pg.QueryResult> => {
  const started = Date.now()
  let signal = options.signal
  let timer: ReturnType<typeof setTimeout> | undefined
  if (options.timeoutMillis !== undefined) {
    // One signal for both (not `AbortSignal.any`, which needs Node 20.3).
    const controller = new AbortController()
    const millis = options.timeoutMillis
    const outer = signal
    if (outer?.aborted) controller.abort(outer.reason)
    else outer?.addEventListener("abort", () => controller.abort(outer.reason), { once: true })
    timer = setTimeout(() => controller.abort(new StatementTimeout(millis)), millis)
    signal = controller.signal
  }
  if (signal?.aborted) {
    clearTimeout(timer)
    return Promise.reject(abortReason(signal))
  }
  return checkout(pool, signal).then(
    (client) =>
      new Promise<pg.QueryResult>((resolve, reject) => {
        let settled = false
        const settle = () => {
          settled = true
          clearTimeout(timer)
          signal?.removeEventListener("abort", onAbort)
          client.off("error", onError)
        }
        // Past the deadline or abandoned: the connection goes, whatever it says from now on.
        const drop = (error: Error) => {
          settle()
          client.on("error", ignore)
          discard(client, error.message)
          reject(error)
        }
        const onAbort = () => {
          if (settled) return
          const reason = abortReason(signal!)
          if (reason instanceof StatementTimeout) markStale(pool, started)
          drop(reason)
        }
        // The connection died while checked out: pg emits this besides failing the query.
        const onError = (error: Error) => {
          if (!settled) drop(error)
        }
        signal?.addEventListener("abort", onAbort, { once: true })
        // Aborted between the checkout and now: not sent at all.
        if (signal?.aborted) return onAbort()
        client.on("error", onError)
        client.query(text, values as Array<unknown> | undefined).then(
          (result) => {
            if (settled) return
            settle()
            pools.get(pool)?.alive.set(client, Date.now())
            client.release()
            resolve(result)
          },
          (error: Error) => {
            if (settled) return
            settle()
            // As `pool.query` does: a connection that failed a statement is not reused.
            client.release(error)
            reject(error)
          },
        )
      }),
    (error) => {
      clearTimeout(timer)
      return Promise.reject(error)
    },
  )
}
