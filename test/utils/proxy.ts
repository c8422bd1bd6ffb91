/**
 * A TCP proxy of our own between the code under test and PostgreSQL, that makes the faults real
 * networks make, on command: black holes, latency and jitter, packet loss, resets.
 *
 * What each fault models, and where a userspace proxy differs from the network:
 * - **Black hole** ({@link TcpProxy.blackHole}): a NAT or firewall that forgot the connection, a
 *   fail-over to another host, a pulled cable. Nothing is forwarded in either direction, no FIN
 *   and no RST: both ends keep their sockets open and hear nothing, for ever. The proxy keeps
 *   reading what each end sends (held, never delivered) so that it sees when an end lets go of
 *   its socket (FIN or RST); past {@link HOLD_LIMIT} held bytes it stops reading, and the
 *   sender's writes back up as they would without ACKs. `restore()` delivers what was held, in
 *   order: a partition that healed before TCP gave up. With `newConnections`, new connections
 *   are held too; their TCP handshake completes (the kernel accepts them) but nothing reaches
 *   PostgreSQL, so a client hangs in the startup exchange instead of in `connect()`.
 *   Unlike a real black hole, TCP keep-alive never notices: the proxy's kernel answers the probes
 *   on each leg. Only an application-level check (a query, an echo, a deadline) finds it.
 * - **Latency and jitter** ({@link TcpProxy.latency}): a long or congested path. Each chunk
 *   read (one socket read, up to 64 KiB, not one IP packet) is delivered `delayMs` ± `jitterMs`
 *   later, but never before the chunk ahead of it in the same direction: order is kept per
 *   direction, as TCP keeps it. FIN and RST travel in order with the data. Connection setup is
 *   not delayed; the first bytes are.
 * - **Packet loss** ({@link TcpProxy.drop}): a lossy link under TCP. TCP never loses bytes, it
 *   retransmits: an application sees loss as stalls. Each chunk is lost with probability `rate`
 *   and retransmitted after `rtoMs` (200 ms, Linux's minimum retransmission timeout), lost again
 *   with the same probability after twice that, and so on (exponential backoff); everything
 *   behind it in that direction waits (head-of-line blocking). Nothing is discarded: total loss
 *   is a black hole, a connection that gives up is a reset.
 * - **Reset** ({@link TcpProxy.reset}): a middlebox or a crashed peer answering with RST. Both
 *   ends get an RST at once (`resetAndDestroy`), whatever was held or delayed is dropped; the
 *   client sees `ECONNRESET`, the PostgreSQL backend exits.
 *
 * The proxy accepts on 127.0.0.1 and opens one upstream connection per accepted one. `close()`
 * destroys every socket and clears every timer; the test process keeps nothing of it.
 */
import * as net from "node:net"

/** Where the proxy forwards to. */
export interface ProxyTarget {
  readonly host: string
  readonly port: number
}

/** Options of {@link startProxy}. */
export interface ProxyOptions {
  /** PostgreSQL's address, or a connection string (then {@link TcpProxy.url} is set). */
  readonly target: ProxyTarget | string
  /** Source of randomness for jitter and loss (e.g. a seeded one). Default `Math.random`. */
  readonly random?: () => number
}

/** One proxied connection, as seen by the proxy. */
export interface ProxyConnection {
  /** Assigned in accept order, from 1. */
  readonly id: number
  /**
   * The client's port: the `localPort` of the client's socket (for a `pg.Client`,
   * `client.connection.stream.localPort`), to tell which connection is whose.
   */
  readonly clientPort: number
  /** Nothing is forwarded on it (see {@link TcpProxy.blackHole}). */
  readonly blackHoled: boolean
  /** The client still holds its socket: it sent neither FIN nor RST. */
  readonly clientOpen: boolean
  /** PostgreSQL's side is connected and sent neither FIN nor RST (false while a new connection is held). */
  readonly upstreamOpen: boolean
  /** Bytes the client sent, delivered or not. */
  readonly bytesFromClient: number
  /** Bytes PostgreSQL sent, delivered or not. */
  readonly bytesFromServer: number
  /** Chunks read but not delivered yet (delayed or held), both directions. */
  readonly pending: number
}

/** Counters since the proxy started. */
export interface ProxyStats {
  /** Connections accepted. */
  readonly accepted: number
  /** Connections open now (either end still open). */
  readonly open: number
  /** Chunks delivered later than they were read because of latency or loss. */
  readonly delayed: number
  /** Simulated losses (each one a retransmission stall). */
  readonly stalls: number
  /** Connections reset by {@link TcpProxy.reset}. */
  readonly resets: number
  /** Timers the proxy holds now (0 once idle or closed). */
  readonly timers: number
}

/** Selects connections; every open one when omitted. */
export type ConnectionFilter = (connection: ProxyConnection) => boolean

/** A running proxy. */
export interface TcpProxy {
  /** 127.0.0.1 */
  readonly host: string
  /** The port to connect to instead of PostgreSQL's. */
  readonly port: number
  /** The target's connection string with the proxy's host and port (only with a string target). */
  readonly url: string
  /** Connections open now (either end still open), in accept order. */
  readonly connections: () => ReadonlyArray<ProxyConnection>
  /**
   * Black-holes the open connections (those `only` selects) and returns how many. With
   * `newConnections`, connections accepted from now on are held as well (until `restore()`).
   */
  readonly blackHole: (options?: {
    readonly only?: ConnectionFilter
    readonly newConnections?: boolean
  }) => number
  /** Delays every chunk, of open and new connections, by `delayMs` ± `jitterMs`; 0 turns it off. */
  readonly latency: (options: { readonly delayMs: number; readonly jitterMs?: number }) => void
  /**
   * Loses each chunk with probability `rate` (0 <= rate < 1), retransmitted after `rtoMs`
   * (default 200), doubling per consecutive loss up to `maxRtoMs` (default 5000); 0 turns it off.
   */
  readonly drop: (options: {
    readonly rate: number
    readonly rtoMs?: number
    readonly maxRtoMs?: number
  }) => void
  /** Sends an RST to both ends of the open connections (those `only` selects); returns how many. */
  readonly reset: (only?: ConnectionFilter) => number
  /** Back to plain forwarding: black holes lifted (held data delivered in order), no latency, no loss. */
  readonly restore: () => void
  /** Counters, see {@link ProxyStats}. */
  readonly stats: () => ProxyStats
  /** Stops accepting, destroys every connection, clears every timer. Idempotent. */
  readonly close: () => Promise<void>
}

/** A seeded generator (mulberry32) for {@link ProxyOptions.random}: the same faults on every run. */
export const seededRandom = (seed: number): (() => number) => {
  let state = seed | 0
  return () => {
    state = (state + 0x6d2b79f5) | 0
    let t = Math.imul(state ^ (state >>> 15), 1 | state)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Bytes held per direction before the proxy stops reading and lets the sender back up. */
export const HOLD_LIMIT = 16 * 1024 * 1024

type Item =
  | { readonly kind: "data"; readonly chunk: Buffer; readonly at: number }
  | { readonly kind: "end" | "reset"; readonly at: number }

interface Faults {
  delayMs: number
  jitterMs: number
  dropRate: number
  rtoMs: number
  maxRtoMs: number
  holdNew: boolean
}

const noFaults = (): Faults => ({
  delayMs: 0,
  jitterMs: 0,
  dropRate: 0,
  rtoMs: 200,
  maxRtoMs: 5000,
  holdNew: false,
})

interface Counters {
  accepted: number
  delayed: number
  stalls: number
  resets: number
}

/** One direction of a connection: what `from` sent, on its way to `to`. */
class Direction {
  readonly queue: Array<Item> = []
  queuedBytes = 0
  bytes = 0
  /** `from` sent FIN or RST. */
  ended = false
  timer: NodeJS.Timeout | undefined
  // Order is kept: no item is due before the one ahead of it.
  #lastAt = 0

  constructor(
    readonly from: net.Socket,
    readonly to: () => net.Socket | undefined,
    readonly held: () => boolean,
    readonly faults: Faults,
    readonly counters: Counters,
    readonly random: () => number,
  ) {}

  /** Queues what `from` sent (or its FIN / RST) with the current faults' delay, then flushes. */
  push(
    item: { readonly kind: "data"; readonly chunk: Buffer } | { readonly kind: "end" | "reset" },
  ) {
    const now = Date.now()
    let delay = 0
    if (this.faults.delayMs > 0 || this.faults.jitterMs > 0) {
      const jitter = (this.random() * 2 - 1) * this.faults.jitterMs
      delay = Math.max(0, this.faults.delayMs + jitter)
    }
    if (item.kind === "data") {
      this.bytes += item.chunk.length
      this.queuedBytes += item.chunk.length
      let rto = this.faults.rtoMs
      while (this.faults.dropRate > 0 && this.random() < this.faults.dropRate) {
        this.counters.stalls++
        delay += rto
        rto = Math.min(2 * rto, this.faults.maxRtoMs)
      }
    } else {
      this.ended = true
    }
    const at = Math.max(now + Math.round(delay), this.#lastAt)
    if (at > now) this.counters.delayed++
    this.#lastAt = at
    this.queue.push({ ...item, at })
    this.flush()
  }

  /** Delivers every due item unless held, and arms one timer for the next one. */
  flush() {
    this.clearTimer()
    const to = this.to()
    if (this.held() || to === undefined) return this.updateFlow()
    const now = Date.now()
    while (this.queue.length > 0 && this.queue[0]!.at <= now) {
      const item = this.queue.shift()!
      if (to.destroyed) continue
      if (item.kind === "data") {
        this.queuedBytes -= item.chunk.length
        to.write(item.chunk)
      } else if (item.kind === "end") {
        to.end()
      } else {
        to.resetAndDestroy()
      }
    }
    if (this.queue.length > 0) {
      this.timer = setTimeout(() => this.flush(), this.queue[0]!.at - now)
    }
    this.updateFlow()
  }

  /** Stops reading while `to` is backed up or too much is held; reads again once it is not. */
  updateFlow() {
    if (this.from.destroyed) return
    const to = this.to()
    const backedUp =
      (to !== undefined && !to.destroyed && to.writableNeedDrain) || this.queuedBytes > HOLD_LIMIT
    if (backedUp && !this.from.isPaused()) this.from.pause()
    else if (!backedUp && this.from.isPaused()) this.from.resume()
  }

  clearTimer() {
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
  }

  /** Forgets what was queued (the connection was reset or closed). */
  discard() {
    this.clearTimer()
    this.queue.length = 0
    this.queuedBytes = 0
  }
}

class Connection {
  blackHoled: boolean
  upstream: net.Socket | undefined
  readonly up: Direction
  down: Direction | undefined
  readonly clientPort: number
  #clientClosed = false
  #upstreamClosed = false

  constructor(
    readonly id: number,
    readonly client: net.Socket,
    readonly target: ProxyTarget,
    readonly faults: Faults,
    readonly counters: Counters,
    readonly random: () => number,
    readonly onGone: (connection: Connection) => void,
  ) {
    this.blackHoled = faults.holdNew
    this.clientPort = client.remotePort ?? 0
    client.setNoDelay(true)
    this.up = new Direction(
      client,
      () => this.upstream,
      () => this.blackHoled,
      faults,
      counters,
      random,
    )
    client.on("data", (chunk: Buffer) => this.up.push({ kind: "data", chunk }))
    client.on("end", () => this.up.push({ kind: "end" }))
    // An RST from the client (ECONNRESET) is passed on as an RST.
    client.on("error", () => this.up.push({ kind: "reset" }))
    client.on("close", () => {
      this.#clientClosed = true
      this.up.ended = true
      this.#checkGone()
    })
    client.on("drain", () => this.down?.updateFlow())
    if (!this.blackHoled) this.connectUpstream()
  }

  connectUpstream() {
    if (this.upstream !== undefined) return
    const upstream = net.connect({ ...this.target, allowHalfOpen: true })
    this.upstream = upstream
    upstream.setNoDelay(true)
    const down = new Direction(
      upstream,
      () => this.client,
      () => this.blackHoled,
      this.faults,
      this.counters,
      this.random,
    )
    this.down = down
    upstream.on("data", (chunk: Buffer) => down.push({ kind: "data", chunk }))
    upstream.on("end", () => down.push({ kind: "end" }))
    // A refused or reset upstream reaches the client as an RST.
    upstream.on("error", () => down.push({ kind: "reset" }))
    upstream.on("close", () => {
      this.#upstreamClosed = true
      down.ended = true
      this.#checkGone()
    })
    upstream.on("drain", () => this.up.updateFlow())
    this.up.flush()
  }

  info(): ProxyConnection {
    return {
      id: this.id,
      clientPort: this.clientPort,
      blackHoled: this.blackHoled,
      clientOpen: !this.up.ended,
      upstreamOpen: this.upstream !== undefined && this.down !== undefined && !this.down.ended,
      bytesFromClient: this.up.bytes,
      bytesFromServer: this.down?.bytes ?? 0,
      pending: this.up.queue.length + (this.down?.queue.length ?? 0),
    }
  }

  hold() {
    this.blackHoled = true
    this.up.flush()
    this.down?.flush()
  }

  release() {
    this.blackHoled = false
    if (this.upstream === undefined && !this.#clientClosed) this.connectUpstream()
    this.up.flush()
    this.down?.flush()
  }

  reset() {
    this.up.discard()
    this.down?.discard()
    if (!this.client.destroyed) this.client.resetAndDestroy()
    if (this.upstream !== undefined && !this.upstream.destroyed) this.upstream.resetAndDestroy()
  }

  destroy() {
    this.up.discard()
    this.down?.discard()
    this.client.destroy()
    this.upstream?.destroy()
  }

  timers(): number {
    return (this.up.timer !== undefined ? 1 : 0) + (this.down?.timer !== undefined ? 1 : 0)
  }

  #checkGone() {
    if (!this.#clientClosed) return
    // A client gone before its held connection reached PostgreSQL never opens one.
    if (this.upstream !== undefined && !this.#upstreamClosed) {
      // Its pending RST or FIN is still on its way (or held): the upstream stays until delivered.
      return
    }
    this.up.discard()
    this.down?.discard()
    this.onGone(this)
  }
}

const parseTarget = (target: ProxyTarget | string): ProxyTarget => {
  if (typeof target !== "string") return target
  const url = new URL(target)
  return { host: url.hostname || "127.0.0.1", port: Number(url.port || 5432) }
}

/** Starts a proxy on a free port of 127.0.0.1 that forwards to `options.target`. */
export const startProxy = async (options: ProxyOptions): Promise<TcpProxy> => {
  const target = parseTarget(options.target)
  const random = options.random ?? Math.random
  const faults = noFaults()
  const counters: Counters = { accepted: 0, delayed: 0, stalls: 0, resets: 0 }
  const open = new Map<number, Connection>()
  const sockets = new Set<net.Socket>()
  const server = net.createServer({ allowHalfOpen: true }, (client) => {
    const id = ++counters.accepted
    open.set(
      id,
      new Connection(id, client, target, faults, counters, random, (gone) => open.delete(gone.id)),
    )
  })
  // Every socket's close is awaited by close(), the client's and the upstream's.
  server.on("connection", (socket: net.Socket) => {
    sockets.add(socket)
    socket.once("close", () => sockets.delete(socket))
  })
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      server.off("error", reject)
      resolve()
    })
  })
  const port = (server.address() as net.AddressInfo).port
  let url = ""
  if (typeof options.target === "string") {
    const rewritten = new URL(options.target)
    rewritten.hostname = "127.0.0.1"
    rewritten.port = String(port)
    url = rewritten.toString()
  }

  const select = (only: ConnectionFilter | undefined) =>
    [...open.values()].filter((connection) => only === undefined || only(connection.info()))

  let closing: Promise<void> | undefined
  const close = () =>
    (closing ??= (async () => {
      const serverClosed = new Promise<void>((resolve) => server.close(() => resolve()))
      const upstreams = [...open.values()].flatMap((connection) =>
        connection.upstream !== undefined ? [connection.upstream] : [],
      )
      for (const connection of open.values()) connection.destroy()
      const all = [...sockets, ...upstreams].filter((socket) => !socket.closed)
      await Promise.all(
        all.map((socket) => new Promise<void>((resolve) => socket.once("close", () => resolve()))),
      )
      await serverClosed
      open.clear()
    })())

  return {
    host: "127.0.0.1",
    port,
    url,
    connections: () => [...open.values()].map((connection) => connection.info()),
    blackHole: ({ only, newConnections = false } = {}) => {
      if (newConnections) faults.holdNew = true
      const selected = select(only)
      for (const connection of selected) connection.hold()
      return selected.length
    },
    latency: ({ delayMs, jitterMs = 0 }) => {
      if (delayMs < 0 || jitterMs < 0) throw new Error("latency: delays must be >= 0")
      faults.delayMs = delayMs
      faults.jitterMs = jitterMs
    },
    drop: ({ rate, rtoMs = 200, maxRtoMs = 5000 }) => {
      if (!(rate >= 0 && rate < 1)) {
        throw new Error("drop: rate must be in [0, 1); total loss is blackHole()")
      }
      faults.dropRate = rate
      faults.rtoMs = rtoMs
      faults.maxRtoMs = maxRtoMs
    },
    reset: (only) => {
      const selected = select(only)
      for (const connection of selected) connection.reset()
      counters.resets += selected.length
      return selected.length
    },
    restore: () => {
      Object.assign(faults, noFaults())
      for (const connection of open.values()) connection.release()
    },
    stats: () => ({
      accepted: counters.accepted,
      delayed: counters.delayed,
      stalls: counters.stalls,
      resets: counters.resets,
      open: open.size,
      timers: [...open.values()].reduce((sum, connection) => sum + connection.timers(), 0),
    }),
    close,
  }
}
