/**
 * PostgreSQL servers of one's own, and the LISTEN backends' killer: what fault tests and the soak
 * (`soak/soak.ts`, outside Vitest: this module imports nothing of it) need to restart, freeze and
 * cut PostgreSQL without disturbing anyone else.
 */
import pg from "pg"
import { channelName } from "../../src/Channel.js"
import * as Placement from "../../src/Placement.js"
import { postmasterPid, signalServer, startEmbeddedPostgres } from "../setup/embedded.js"

/** Which LISTEN backends {@link terminateListeners} kills. */
export interface ListenerFilter {
  /** Only backends whose `application_name` equals this. */
  readonly applicationName?: string
  /** Only backends whose last query (the last `LISTEN "…"`) contains this, e.g. a channel prefix. */
  readonly queryContains?: string
}

/**
 * Kills every backend whose last statement was a `LISTEN` (except the caller's) and returns how many.
 * Test files run in parallel on the shared database: without a filter this also hits other suites'
 * listeners, so filter by application name (a string is shorthand for that) or channel prefix, or use
 * a private server ({@link startPrivatePostgres}).
 */
export const terminateListeners = async (
  pool: pg.Pool | pg.Client,
  filter?: string | ListenerFilter,
): Promise<number> => {
  const { applicationName, queryContains } =
    typeof filter === "string"
      ? { applicationName: filter, queryContains: undefined }
      : (filter ?? {})
  const result = await pool.query<{ terminated: boolean }>(
    `SELECT pg_terminate_backend(pid) AS terminated
       FROM pg_stat_activity
      WHERE query ILIKE 'LISTEN%'
        AND pid <> pg_backend_pid()
        AND ($1::text IS NULL OR application_name = $1)
        AND ($2::text IS NULL OR strpos(query, $2) > 0)`,
    [applicationName ?? null, queryContains ?? null],
  )
  return result.rows.filter((row) => row.terminated).length
}

/** A PostgreSQL server of one's own, to stop, restart and freeze without disturbing other suites. */
export interface PrivatePostgres {
  readonly url: string
  readonly port: number
  /** The postmaster's pid (changes on restart). */
  readonly pid: number
  /** Starts the server again on the same data directory and port. No-op if running. */
  readonly start: () => Promise<void>
  /** Stops the server (fast shutdown: clients are disconnected); the data stays for `start()`. */
  readonly stop: () => Promise<void>
  /** Freezes the server (SIGSTOP to the postmaster and every child): connections hang, no errors. */
  readonly pause: () => Promise<void>
  /** Unfreezes a paused server (SIGCONT). */
  readonly resume: () => Promise<void>
  /** Stops the server and deletes its files. Also done when the process exits, as a safety net. */
  readonly destroy: () => Promise<void>
}

/**
 * Starts a separate embedded PostgreSQL (own temporary directory, own free port), whether or not
 * `DATABASE_URL` is set. Call `destroy()` when done (e.g. in `afterAll`).
 */
export const startPrivatePostgres = async (): Promise<PrivatePostgres> => {
  const server = await startEmbeddedPostgres({ restartable: true })
  let pid = await postmasterPid(server.dataDir)
  let paused = false
  const resume = async () => {
    if (!paused) return
    await signalServer(server.dataDir, "SIGCONT")
    paused = false
  }
  return {
    url: server.url,
    port: server.port,
    get pid() {
      return pid
    },
    start: async () => {
      await server.start()
      pid = await postmasterPid(server.dataDir)
    },
    stop: async () => {
      // A stopped process would never act on the shutdown signal.
      await resume()
      await server.stop()
    },
    pause: async () => {
      if (paused || !server.running()) return
      await signalServer(server.dataDir, "SIGSTOP")
      paused = true
    },
    resume,
    destroy: async () => {
      await resume().catch(() => {})
      await server.destroy()
    },
  }
}

/**
 * Where `createAdapter(pools, { channelPrefix })` places each namespace: the index of its server
 * in `pools`, as every node computes it.
 */
export const namespaceHome = (
  pools: ReadonlyArray<pg.Pool>,
  channelPrefix: string,
): ((nsp: string) => number) => {
  const names = Placement.decodeServersSync(pools, Placement.poolSettings).map((s) => s.name)
  const placement = Placement.make(names)
  return (nsp) => placement.indexOf(channelName(channelPrefix, nsp))
}

/**
 * A pool of 4 connections on each server, its idle connections' errors ignored (tests stop and
 * freeze servers on purpose); each is added to `opened`, for the suite to end.
 */
export const openPools = (
  databases: ReadonlyArray<PrivatePostgres>,
  opened?: Array<pg.Pool>,
): Array<pg.Pool> =>
  databases.map((db) => {
    const pool = new pg.Pool({ connectionString: db.url, max: 4 })
    pool.on("error", () => {})
    opened?.push(pool)
    return pool
  })

/**
 * A connection of its own that LISTENs on `channels` of a server and records the channel of every
 * notification it hears, in order; the caller ends `client`.
 */
export const listenOn = async (db: PrivatePostgres, channels: ReadonlyArray<string>) => {
  const client = new pg.Client({ connectionString: db.url })
  await client.connect()
  const heard: Array<string> = []
  client.on("notification", (n) => heard.push(n.channel))
  for (const channel of channels) await client.query(`LISTEN "${channel}"`)
  return { client, heard }
}
