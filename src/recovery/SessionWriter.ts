/**
 * The session writes of one namespace's adapter (connection state recovery): live sessions of
 * connected sockets, sessions of disconnected ones, and live rows of sockets gone for good. Each
 * kind is batched once per turn of the event loop (`io.close()` or `disconnectSockets()` end
 * thousands of sockets at once), and the writes run one after the other, so a socket's rows are
 * written in the order of its events.
 */
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Exit from "effect/Exit"
import { Recovery, type SessionToPersist } from "./Recovery.js"

/** What a socket of Socket.IO looks like to us. */
interface SocketLike {
  readonly pid?: unknown
  readonly rooms: Set<unknown>
  readonly data: unknown
}

/** What the writer needs from its adapter. */
export interface SessionWriterOptions {
  readonly nsp: string
  readonly maxDisconnection: Duration.Duration
  /** Longest a write may take (a frozen PostgreSQL must not hold `close()` for ever). */
  readonly timeout: Duration.Duration
  readonly run: (
    effect: Effect.Effect<void, unknown, Recovery>,
  ) => Promise<Exit.Exit<void, unknown>>
  /** Told of each failed write. */
  readonly report: (exit: Exit.Exit<void, unknown>) => void
  /** The namespace's connected sockets. */
  readonly socket: (sid: string) => SocketLike | undefined
  /** The backend pid of this server's LISTEN connection, while it is up. */
  readonly backendPid: () => number | undefined
  /** Around each write, so that `close()` can wait for them. */
  readonly begin: () => void
  readonly end: () => void
}

/** Batches and orders one namespace's session writes. */
export class SessionWriter {
  /** Connected sockets whose live row was written: sid -> pid. */
  readonly #live = new Map<string, string>()
  /** Sockets whose live row is to be (re)written. */
  readonly #dirty = new Set<string>()
  #disconnected: Array<SessionToPersist> = []
  #gone: Array<string> = []
  #writes: Promise<void> = Promise.resolve()
  #closed = false

  constructor(private readonly options: SessionWriterOptions) {}

  /** A socket connected, or its rooms changed: its live row is (re)written. */
  changed(sid: string): void {
    if (this.#closed) return
    this.#dirty.add(sid)
    if (this.#dirty.size === 1) this.#later(() => this.#writeLive())
  }

  /** Whether the socket has a live row. */
  isLive(sid: string): boolean {
    return this.#live.has(sid)
  }

  /** The socket disconnected for a reason Socket.IO recovers from: its session expires later. */
  disconnected(session: SessionToPersist): void {
    this.#live.delete(session.sid)
    this.#disconnected.push(session)
    if (this.#disconnected.length > 1) return
    this.#later(() => {
      const sessions = this.#disconnected
      this.#disconnected = []
      this.#write((recovery) => recovery.persistAll(sessions, this.options.maxDisconnection))
    })
  }

  /** The socket left for good (or was saved as disconnected just before): its live row goes. */
  left(sid: string): void {
    this.#dirty.delete(sid)
    const pid = this.#live.get(sid)
    if (pid === undefined) return
    this.#live.delete(sid)
    this.#gone.push(pid)
    if (this.#gone.length > 1) return
    this.#later(() => {
      const pids = this.#gone
      this.#gone = []
      this.#write((recovery) => recovery.forget(pids))
    })
  }

  /** No more live rows (the adapter closes); what is queued is still written. */
  close(): void {
    this.#closed = true
  }

  // At the next turn of the event loop, counted as a write in flight meanwhile.
  #later(f: () => void): void {
    this.options.begin()
    setImmediate(() => {
      f()
      this.options.end()
    })
  }

  #writeLive(): void {
    const dirty = [...this.#dirty]
    this.#dirty.clear()
    const pid = this.options.backendPid()
    if (pid === undefined || this.#closed) return
    const sessions = dirty.flatMap((sid) => {
      const socket = this.options.socket(sid)
      if (socket === undefined || typeof socket.pid !== "string") return []
      this.#live.set(sid, socket.pid)
      return [{ sid, pid: socket.pid, rooms: [...socket.rooms].map(String), data: socket.data }]
    })
    if (sessions.length > 0) {
      this.#write((recovery) => recovery.persistLive(sessions, this.options.nsp, pid))
    }
  }

  #write(f: (recovery: Recovery["Service"]) => Effect.Effect<void, unknown>): void {
    this.options.begin()
    this.#writes = this.#writes.then(() =>
      this.options
        .run(Effect.flatMap(Recovery, f).pipe(Effect.timeout(this.options.timeout)))
        .then((exit) => {
          this.options.report(exit)
          this.options.end()
        }),
    )
  }
}
