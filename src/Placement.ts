/**
 * Where each channel lives when the cluster spreads its channels over several PostgreSQL servers
 * (`createAdapter(pools)`). Pure: no I/O, no clock, no environment.
 *
 * - A server is known by a **name** that every node computes the same way, never by its place in
 *   the list: removing a server from the middle of the list moves only that server's channels.
 *   The name is the one given (`{ pool, name }`), else `host:port/database` as the pool's
 *   settings say it (see {@link serverName}).
 * - A channel lives on the server of highest **rendezvous weight** (highest random weight
 *   hashing): `SHA-256(UTF-8(name + "\0" + channel))` for each server, the greatest digest (as
 *   unsigned bytes) wins. Every node gets the same placement whatever the order of its list;
 *   adding a server moves to it the channels it now wins (about 1/N of them) and nothing else;
 *   removing one moves only its own channels. For one channel, distinct names hash distinct
 *   inputs: no ties, hence no tie-break rule.
 * - One server: every channel on it, no hashing (the cost of a single pool stays zero).
 *
 * The rule is part of the wire: every node and emitter of a cluster must compute it alike.
 *
 * @since 0.3.0
 */
import type pg from "pg"
import * as Crypto from "node:crypto"
import * as Result from "effect/Result"
import { ConfigError } from "./Errors.js"

/**
 * What a server's name is derived from: the connection settings of node-postgres (a `pg.Pool`'s
 * `options`, a `pg.ClientConfig`). A `connectionString` wins over `host`, `port` and `database`,
 * as in node-postgres.
 */
export interface ConnectionSettings {
  readonly host?: string | undefined
  readonly port?: number | string | undefined
  readonly database?: string | undefined
  readonly connectionString?: string | undefined
}

/** The host node-postgres connects to when none is set (before `PGHOST`, which a name ignores). */
export const DEFAULT_HOST = "localhost"

/** The port node-postgres connects to when none is set (before `PGPORT`, which a name ignores). */
export const DEFAULT_PORT = 5432

/**
 * The name of the server a pool connects to: `host:port/database` (`host:port` without a
 * database; an IPv6 host in brackets), from its settings alone. Environment variables (`PGHOST`,
 * `PGPORT`, `PGDATABASE`) are not read: the name must not depend on the process computing it.
 * Nodes that reach one server by different addresses (`db1` here, `10.0.0.5` there) get different
 * names, hence different placements: give them explicit names.
 */
export const serverName = (settings: ConnectionSettings | undefined): string => {
  const merged: Omit<ConnectionSettings, "database"> & { readonly database?: string | null } =
    settings?.connectionString === undefined || settings.connectionString === ""
      ? (settings ?? {})
      : { ...settings, ...parseConnectionString(settings.connectionString) }
  const host = merged.host || DEFAULT_HOST
  const port = Number.parseInt(String(merged.port || DEFAULT_PORT), 10)
  const hostPart = host.includes(":") && !host.startsWith("/") ? `[${host}]` : host
  return `${hostPart}:${Number.isNaN(port) ? String(merged.port) : port}${
    merged.database ? `/${merged.database}` : ""
  }`
}

/**
 * `host`, `port` and `database` of a connection string, read as `pg-connection-string` (what
 * node-postgres parses with) reads them, with the same keys present: a key it sets, empty
 * included, overrides the separate setting. Written here rather than imported: that package is
 * `pg`'s dependency, not ours (npm nests it under `pg`, pnpm hides it), and its `parse` reads the
 * `sslcert`/`sslkey`/`sslrootcert` files named in the string. `test/Placement.test.ts` checks it
 * against `pg-connection-string` itself.
 */
export const parseConnectionString = (
  str: string,
): { host?: string; port?: string; database?: string | null } => {
  // A unix socket directory, then the database: `/var/run/postgresql mydb`.
  if (str.charAt(0) === "/") {
    const [host, database] = str.split(" ")
    return { host: host!, database: database }
  }
  try {
    return parseUrl(str)
  } catch {
    // Not a URL: node-postgres cannot connect with it either; the separate settings name it.
    return {}
  }
}

const parseUrl = (str: string): { host?: string; port?: string; database?: string | null } => {
  if (/ |%[^a-f0-9]|%[a-f0-9][^a-f0-9]/i.test(str)) {
    str = encodeURI(str).replace(/%25(\d\d)/g, "%$1")
  }
  let url: URL
  let dummyHost = false
  try {
    url = new URL(str, "postgres://base")
  } catch {
    url = new URL(str.replace("@/", "@___DUMMY___/"), "postgres://base")
    dummyHost = true
  }
  // pg-connection-string copies every parameter in order: the last of a repeated one wins.
  const param = (key: string) => url.searchParams.getAll(key).at(-1)
  if (url.protocol === "socket:") {
    const port = param("port")
    return {
      host: decodeURI(url.pathname),
      database: url.searchParams.get("db"),
      ...(port === undefined ? {} : { port }),
    }
  }
  const hostname = (dummyHost ? "" : url.hostname).replace(/^\[(.+)\]$/, "$1")
  let host = param("host")
  if (!host) host = decodeURIComponent(hostname)
  // As pg-connection-string does: through the URL, which adds the leading "/".
  else if (hostname && /^%2f/i.test(hostname)) url.pathname = hostname + url.pathname
  const database = url.pathname.slice(1) || null
  return {
    host,
    port: param("port") || url.port,
    database: database ? decodeURI(database) : null,
  }
}

/** A server of the list: its name, and what the caller gave for it (a pool). */
export interface Server<P> {
  readonly name: string
  readonly pool: P
}

/** One entry of `pools`: a pool (named from its settings), or a pool with an explicit name. */
export type PoolEntry<P> = P | { readonly pool: P; readonly name?: string | undefined }

/** One `pg.Pool`, or the pools of several PostgreSQL servers (each a pool or `{ pool, name }`). */
export type Pools = PoolEntry<pg.Pool> | ReadonlyArray<PoolEntry<pg.Pool>>

const invalid = (message: string) =>
  Result.fail(new ConfigError({ option: "pools", message: `Invalid option pools: ${message}` }))

const isNamedEntry = (entry: unknown): entry is { pool: unknown; name?: unknown } =>
  entry !== null && typeof entry === "object" && Object.hasOwn(entry, "pool")

/**
 * The servers of `pools` (a pool or `{ pool, name }`, or a non-empty list of them), each with
 * its name; `settingsOf` reads a pool's connection settings (e.g. a `pg.Pool`'s `options`). Two
 * entries with one name are a configuration error that names both.
 */
export const decodeServers = <P extends object>(
  pools: PoolEntry<P> | ReadonlyArray<PoolEntry<P>>,
  settingsOf: (pool: P) => ConnectionSettings | undefined,
): Result.Result<ReadonlyArray<Server<P>>, ConfigError> => {
  // One pool, or one `{ pool, name }`: a list of one.
  if (!Array.isArray(pools)) pools = [pools as PoolEntry<P>]
  if (pools.length === 0) return invalid("the list of pools is empty (give at least one pg.Pool)")
  const servers: Array<Server<P>> = []
  const seen = new Map<string, number>()
  for (let i = 0; i < pools.length; i++) {
    const entry = pools[i] as PoolEntry<P>
    let server: Server<P>
    if (isNamedEntry(entry)) {
      if (entry.name !== undefined && (typeof entry.name !== "string" || entry.name === "")) {
        return invalid(`pools[${i}].name must be a non-empty string`)
      }
      const pool = entry.pool as P
      server = { name: (entry.name as string | undefined) ?? serverName(settingsOf(pool)), pool }
    } else {
      server = { name: serverName(settingsOf(entry as P)), pool: entry as P }
    }
    const first = seen.get(hashedForm(server.name))
    if (first !== undefined) {
      return invalid(
        `pools[${first}] and pools[${i}] are both named ${JSON.stringify(server.name)}: ` +
          "one server listed twice, or two servers whose settings read alike (give each a " +
          "distinct name: { pool, name })",
      )
    }
    seen.set(hashedForm(server.name), i)
    servers.push(server)
  }
  return Result.succeed(servers)
}

/** {@link decodeServers}, throwing its `ConfigError` (for the facade's constructors). */
export const decodeServersSync = <P extends object>(
  pools: PoolEntry<P> | ReadonlyArray<PoolEntry<P>>,
  settingsOf: (pool: P) => ConnectionSettings | undefined,
): ReadonlyArray<Server<P>> => Result.getOrThrowWith(decodeServers(pools, settingsOf), (e) => e)

/**
 * The servers of `pools`, as {@link decodeServersSync}, after checking that each is a pool (has a
 * `query` method): else a `TypeError` that says what `what` takes.
 */
export const decodePoolsSync = <P extends object>(
  pools: PoolEntry<P> | ReadonlyArray<PoolEntry<P>>,
  what: string,
): ReadonlyArray<Server<P>> => {
  const entries: ReadonlyArray<unknown> = Array.isArray(pools) ? pools : [pools]
  for (const entry of entries) {
    const pool = isNamedEntry(entry) ? entry.pool : entry
    if (pool === null || typeof pool !== "object" || typeof (pool as any).query !== "function") {
      throw new TypeError(`${what}: pool must be a pg.Pool, or a list of pools (or { pool, name })`)
    }
  }
  return decodeServersSync(pools, poolSettings)
}

/** A `pg.Pool`'s settings: what it was constructed with (`pool.options`). */
export const poolSettings = (pool: object): ConnectionSettings | undefined =>
  (pool as { readonly options?: ConnectionSettings }).options

// One-shot hashing (Node >= 20.12) skips the Hash object: 2.0 µs instead of 2.7 µs here (a
// loaded 2-core machine).
const sha256: (input: string) => Buffer =
  typeof Crypto.hash === "function" && Buffer.isBuffer(Crypto.hash("sha256", "", "buffer"))
    ? (input) => Crypto.hash("sha256", input, "buffer")
    : (input) => Crypto.createHash("sha256").update(input, "utf8").digest()

/**
 * The rendezvous weight of `channel` on the server `name`: the SHA-256 digest of the UTF-8 of
 * `name`, a NUL, then `channel`. The greatest weight (compared as bytes) wins.
 */
export const weight = (name: string, channel: string): Buffer => sha256(`${name}\u0000${channel}`)

/**
 * What a name is to the hash: its UTF-8, in which lone surrogates become U+FFFD. Two names alike
 * here would tie on every channel: they count as one name.
 */
export const hashedForm = (name: string): string => Buffer.from(name, "utf8").toString("utf8")

/**
 * A short id of a list of servers, the same whatever its order: 16 hex digits of the SHA-256 of
 * the JSON array of the names (as hashed, sorted). Nodes may carry it in their heartbeats, so that
 * a node whose list differs (a placement of its own: notifications on the channels that moved are
 * lost between the two) is noticed.
 */
export const listId = (
  names: ReadonlyArray<string>,
  options?: { readonly roomsApart?: boolean | undefined },
): string => {
  const sorted = [...new Set(names.map(hashedForm))].sort()
  // Rooms placed apart are another placement: nodes that differ there are told too. (A nested
  // array cannot be read as a list of names: no collision with the plain form.)
  const hashed = options?.roomsApart === true ? [sorted, "rooms"] : sorted
  return sha256(JSON.stringify(hashed)).toString("hex").slice(0, 16)
}

/**
 * Whether room channels live on the servers their own names pick rather than with their
 * namespace: several servers, a dynamic subscription mode, and `roomPlacement` not
 * `"namespace"`. Every node and emitter of a cluster must agree (it goes into {@link listId}).
 */
export const roomsApart = (
  servers: number,
  config: {
    readonly subscriptionMode?: string | undefined
    readonly roomPlacement?: "room" | "namespace" | undefined
  },
): boolean =>
  servers >= 2 &&
  (config.subscriptionMode === "dynamic" || config.subscriptionMode === "dynamic-private") &&
  config.roomPlacement !== "namespace"

/** How many channels a placement remembers by default (see {@link make}). */
export const DEFAULT_CACHE_SIZE = 10_000

/** Where the channels of one list of servers live. */
export interface Placement {
  /** The servers' names, in the order given. */
  readonly names: ReadonlyArray<string>
  /** The index, in {@link Placement.names}, of the server that holds `channel`. */
  readonly indexOf: (channel: string) => number
  /** The name of the server that holds `channel`. */
  readonly nameOf: (channel: string) => string
  /** How many channels it remembers now (at most its `cacheSize`). */
  readonly remembered: () => number
}

/**
 * The placement over servers named `names` (distinct: see {@link decodeServers}). The answer for
 * a channel is remembered, up to `cacheSize` channels, the oldest forgotten first: a publish asks
 * on every message, and socket-id rooms (`"dynamic-private"`) would otherwise grow it for good.
 */
export const make = (
  names: ReadonlyArray<string>,
  options?: { readonly cacheSize?: number | undefined },
): Placement => {
  if (names.length === 0) throw new RangeError("a placement needs at least one server")
  if (new Set(names.map(hashedForm)).size !== names.length) {
    throw new RangeError("server names must be distinct (in UTF-8)")
  }
  const list = [...names]
  if (list.length === 1) {
    const only = list[0]!
    return { names: list, indexOf: () => 0, nameOf: () => only, remembered: () => 0 }
  }
  const prefixes = list.map((name) => `${name}\u0000`)
  const cacheSize = Math.max(0, options?.cacheSize ?? DEFAULT_CACHE_SIZE)
  const cache = new Map<string, number>()
  const indexOf = (channel: string): number => {
    const known = cache.get(channel)
    if (known !== undefined) return known
    let best = 0
    let bestWeight = sha256(prefixes[0]! + channel)
    for (let i = 1; i < prefixes.length; i++) {
      const w = sha256(prefixes[i]! + channel)
      if (Buffer.compare(w, bestWeight) > 0) {
        best = i
        bestWeight = w
      }
    }
    if (cacheSize > 0) {
      if (cache.size >= cacheSize) cache.delete(cache.keys().next().value!)
      cache.set(channel, best)
    }
    return best
  }
  return {
    names: list,
    indexOf,
    nameOf: (channel) => list[indexOf(channel)]!,
    remembered: () => cache.size,
  }
}
