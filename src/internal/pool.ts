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
 * How a statement is abandoned: its deadline, or its caller. An `AbortController` and its event
 * listeners cost more CPU than the rest of a small statement's client-side work (statements are
 * the hottest path), so this has one listener slot and no events.
 */
export class StatementAbort {
  #aborted = false
  #reason: Error | undefined
  #listener: (() => void) | undefined

  get aborted(): boolean {
    return this.#aborted
  }

  /** A {@link StatementTimeout} when a deadline passed, else {@link StatementAbandoned}. */
  get reason(): Error {
    return this.#reason instanceof StatementTimeout ? this.#reason : new StatementAbandoned()
  }

  /** Abandons the statement (the first reason wins). */
  abort(reason?: Error): void {
    if (this.#aborted) return
    this.#aborted = true
    this.#reason = reason
    const listener = this.#listener
    this.#listener = undefined
    listener?.()
  }

  /** The statement this abort belongs to listens (one at a time; `undefined` stops listening). */
  onAbort(listener: (() => void) | undefined): void {
    this.#listener = listener
  }
}

// A connection not seen alive since the path failed is dropped, and the next one is tried: the
// pool hands out idle ones first, then connects new ones (seen alive as they connect).
const checkout = (
  pool: pg.Pool,
  health: Health | undefined,
  done: (error: Error | undefined, client?: pg.PoolClient) => void,
): void =>
  void pool.connect((error, client) => {
    if (error || client === undefined) return done(error ?? new Error("no connection"))
    if (health === undefined || (health.alive.get(client) ?? 0) >= health.staleBefore) {
      return done(undefined, client)
    }
    discard(client, "idle since the network path to PostgreSQL failed")
    checkout(pool, health, done)
  })

/**
 * The rows of a statement's result: of the last statement when the query string held several (a
 * notify script), which node-postgres answers with one result each.
 */
export const lastRows = <A>(result: pg.QueryResult | ReadonlyArray<pg.QueryResult>) =>
  (Array.isArray(result)
    ? (result.at(-1)?.rows ?? [])
    : (result as pg.QueryResult).rows) as ReadonlyArray<A>

/** Options of {@link run}. */
export interface RunOptions {
  /** Abandons the statement when aborted; a {@link StatementTimeout} reason marks the pool stale. */
  readonly abort?: StatementAbort | undefined
  /** A deadline of its own, in ms: past it the statement fails with a {@link StatementTimeout}. */
  readonly timeoutMillis?: number | undefined
}

/**
 * Runs one statement on a connection of `pool`. Past its deadline, or abandoned, it rejects at
 * once and its connection is discarded; nothing stays checked out. Abandoned while it waits for a
 * connection, it gives the connection back when it comes.
 */
export const run = (
  pool: pg.Pool,
  text: string,
  values: ReadonlyArray<unknown> | undefined,
  options: RunOptions = {},
): Promise<pg.QueryResult> =>
  new Promise((resolve, reject) => {
    const started = Date.now()
    const millis = options.timeoutMillis
    const abort = options.abort ?? (millis === undefined ? undefined : new StatementAbort())
    const timer =
      millis === undefined
        ? undefined
        : setTimeout(() => abort!.abort(new StatementTimeout(millis)), millis)
    let settled = false
    const finish = (error: Error | undefined, result?: pg.QueryResult) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      abort?.onAbort(undefined)
      if (error === undefined) resolve(result!)
      else reject(error)
    }
    if (abort?.aborted) return finish(abort.reason)
    abort?.onAbort(() => finish(abort.reason))
    checkout(pool, pools.get(pool), (error, client) => {
      if (error !== undefined) return finish(error)
      if (settled) return client!.release()
      query(pool, client!, text, values, abort, started, finish)
    })
  })

// The statement on its connection: past the deadline or abandoned, the connection goes, whatever
// it says from now on.
const query = (
  pool: pg.Pool,
  client: pg.PoolClient,
  text: string,
  values: ReadonlyArray<unknown> | undefined,
  abort: StatementAbort | undefined,
  started: number,
  finish: (error: Error | undefined, result?: pg.QueryResult) => void,
) => {
  let done = false
  const drop = (error: Error) => {
    if (done) return
    done = true
    client.off("error", drop)
    client.on("error", ignore)
    discard(client, error.message)
    finish(error)
  }
  // The connection died while checked out: pg emits this besides failing the query.
  client.on("error", drop)
  abort?.onAbort(() => {
    const reason = abort.reason
    if (reason instanceof StatementTimeout) markStale(pool, started)
    drop(reason)
  })
  client.query(text, values as Array<unknown>, (error: Error | null, result) => {
    if (done) return
    done = true
    client.off("error", drop)
    if (error) {
      // As `pool.query` does: a connection that failed a statement is not reused.
      client.release(error)
      return finish(error)
    }
    pools.get(pool)?.alive.set(client, Date.now())
    client.release()
    finish(undefined, result)
  })
}
