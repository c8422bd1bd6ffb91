/**
 * Helpers for the connection state recovery tests: moving a client between servers the way a
 * reconnecting socket.io-client does, reading the recovery tables, and recording what a client
 * (and its successors) received, offsets included.
 */
import type pg from "pg"
import { io as ioClient, type Socket as ClientSocket } from "socket.io-client"
import { eventually } from "./cluster.js"
import { quoteName } from "./postgres.js"

/**
 * The recovery tables of a suite whose `recoveryTablePrefix` is `prefix`, quoted for SQL (the
 * prefix may be schema-qualified, mixed case or hold characters that need quoting).
 */
export const recoveryTables = (prefix: string) => ({
  packets: quoteName(`${prefix}_packets`),
  sessions: quoteName(`${prefix}_sessions`),
  offsets: quoteName(`${prefix}_offsets`),
})

/** The private session id a client presents when it reconnects (socket.io-client private field). */
export const pidOf = (client: ClientSocket): string => (client as any)._pid as string

/** The last offset a client received (socket.io-client private field). */
export const lastOffsetOf = (client: ClientSocket): string | undefined =>
  (client as any)._lastOffset as string | undefined

/** A session row as the tests see it. */
export interface SessionRow {
  readonly sid: string
  readonly rooms: Array<string>
  /** `expires_at` is set: the socket was disconnected (not a live row of a connected socket). */
  readonly disconnected: boolean
  /** `expires_at < now()` in PostgreSQL. */
  readonly expired: boolean
}

/** The session row of `pid`, if any. */
export const sessionRow = async (
  pool: pg.Pool,
  prefix: string,
  pid: string,
): Promise<SessionRow | undefined> =>
  (
    await pool.query<SessionRow>(
      `SELECT sid, rooms, expires_at IS NOT NULL AS disconnected,
              coalesce(expires_at < now(), false) AS expired
         FROM ${recoveryTables(prefix).sessions} WHERE pid = $1`,
      [pid],
    )
  ).rows[0]

/** The namespace's offset counter: `last` given out and `cleaned` (0 before anything). */
export const offsetCounter = async (
  pool: pg.Pool,
  prefix: string,
  nsp = "/",
): Promise<{ readonly last: bigint; readonly cleaned: bigint }> => {
  const row = (
    await pool.query<{ last: string; cleaned: string }>(
      `SELECT last::text AS last, cleaned::text AS cleaned FROM ${recoveryTables(prefix).offsets} WHERE nsp = $1`,
      [nsp],
    )
  ).rows[0]
  return { last: BigInt(row?.last ?? 0), cleaned: BigInt(row?.cleaned ?? 0) }
}

/** Waits until the namespace's counter reached `last` (that many packets are stored and committed). */
export const waitForOffset = (
  pool: pg.Pool,
  prefix: string,
  last: bigint,
  options: { readonly nsp?: string; readonly timeout?: number } = {},
): Promise<void> =>
  eventually(async () => (await offsetCounter(pool, prefix, options.nsp)).last >= last, {
    timeout: options.timeout ?? 10_000,
    message: `offset ${last} committed`,
  })

/**
 * Runs `emit` (which must store exactly one packet) and waits until it is committed, so that the
 * next one gets a higher offset whichever server sends it.
 */
export const emitStored = async (pool: pg.Pool, prefix: string, emit: () => unknown) => {
  const { last } = await offsetCounter(pool, prefix)
  emit()
  await waitForOffset(pool, prefix, last + 1n)
  return last + 1n
}

/**
 * Disconnects a client in a recoverable way (its transport closes: "transport close" on the
 * server) and waits until its session is written as disconnected, which is asynchronous.
 */
export const dropTransport = async (
  client: ClientSocket,
  pool: pg.Pool,
  prefix: string,
  timeout = 10_000,
): Promise<void> => {
  const pid = pidOf(client)
  if (typeof pid !== "string") throw new Error("the client has no private session id")
  client.io.engine.close()
  await eventually(async () => (await sessionRow(pool, prefix, pid))?.disconnected === true, {
    timeout,
    message: `session ${pid} written as disconnected`,
  })
}

/** Options of {@link resume}. */
export interface ResumeOptions {
  /** Namespace. Default `/`. */
  readonly nsp?: string
  /** Presented instead of the old client's private id. */
  readonly pid?: string
  /** Presented instead of the old client's last offset. */
  readonly offset?: string
  /** Attached before connecting, so that replayed packets are seen. */
  readonly attach?: (client: ClientSocket) => void
  /** Every created client is pushed here (for cleanup). */
  readonly track?: Array<ClientSocket>
  /** How long to wait for `connect`. Default 10000 ms. */
  readonly timeoutMs?: number
}

/**
 * Connects a new client to `url` presenting `old`'s private id and last offset, as a client that
 * reconnects does, and resolves once connected (rejects on `connect_error` or timeout).
 */
export const resume = (
  old: ClientSocket | undefined,
  url: string,
  options: ResumeOptions = {},
): Promise<ClientSocket> => {
  const { nsp = "/", timeoutMs = 10_000 } = options
  const client = ioClient(`${url}${nsp}`, {
    transports: ["websocket"],
    forceNew: true,
    reconnection: false,
    autoConnect: false,
  })
  options.track?.push(client)
  // Private fields of socket.io-client: what it sends in its CONNECT packet to be recovered.
  ;(client as any)._pid = options.pid ?? (old === undefined ? undefined : pidOf(old))
  ;(client as any)._lastOffset =
    options.offset ?? (old === undefined ? undefined : lastOffsetOf(old))
  options.attach?.(client)
  return new Promise((resolve, reject) => {
    const done = (error?: Error) => {
      clearTimeout(timer)
      client.off("connect", onConnect)
      client.off("connect_error", onError)
      if (error === undefined) return resolve(client)
      client.disconnect()
      reject(error)
    }
    const onConnect = () => done()
    const onError = (error: Error) => done(new Error(`connect_error: ${error.message}`))
    const timer = setTimeout(
      () => done(new Error(`no connect to ${url}${nsp} within ${timeoutMs} ms`)),
      timeoutMs,
    )
    client.on("connect", onConnect)
    client.on("connect_error", onError)
    client.connect()
  })
}

/** One event received by a client. */
export interface Received {
  readonly event: string
  readonly args: Array<unknown>
}

/**
 * Records every event received by a client and by the clients that take over its session, in
 * arrival order. `attach` is what {@link ResumeOptions.attach} takes.
 */
export const recorder = (
  ignore: ReadonlyArray<string> = [],
): { received: Array<Received>; attach: (client: ClientSocket) => void } => {
  const received: Array<Received> = []
  const attach = (client: ClientSocket) => {
    client.onAny((event: string, ...args: Array<unknown>) => {
      if (!ignore.includes(event)) received.push({ event, args })
    })
  }
  return { received, attach }
}

/** The offset a stored packet carries: its last argument, a decimal string. */
export const offsetOf = (args: ReadonlyArray<unknown>): string => {
  const last = args[args.length - 1]
  if (typeof last !== "string" || !/^\d+$/.test(last)) {
    throw new Error(`no offset as last argument: ${JSON.stringify(args)}`)
  }
  return last
}

/** The arguments without the trailing offset. */
export const withoutOffset = (args: ReadonlyArray<unknown>): Array<unknown> => {
  offsetOf(args)
  return args.slice(0, -1)
}

/** Throws unless every packet carries an offset and they strictly increase. */
export const assertIncreasingOffsets = (packets: ReadonlyArray<Received>): void => {
  let previous = -1n
  for (const [index, packet] of packets.entries()) {
    const offset = BigInt(offsetOf(packet.args))
    if (offset <= previous) {
      throw new Error(
        `offset ${offset} of packet ${index} (${packet.event}) does not follow ${previous}`,
      )
    }
    previous = offset
  }
}

/** Binary as received by a Node client (Buffer, ArrayBuffer or view) turned into a Buffer. */
export const bytesOf = (value: unknown): Buffer => {
  if (Buffer.isBuffer(value)) return value
  if (value instanceof ArrayBuffer) return Buffer.from(value)
  if (ArrayBuffer.isView(value))
    return Buffer.from(value.buffer, value.byteOffset, value.byteLength)
  throw new Error(`not binary: ${typeof value}`)
}
