/**
 * Session restores of one namespace's adapter: a restored client gets every packet it missed
 * exactly once, those delivered on this server while its restore runs included, and none of them
 * again afterwards.
 *
 * @since 0.2.0
 */
import * as Cause from "effect/Cause"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Metric from "effect/Metric"
import type { BroadcastOptions, PrivateSessionId, Session } from "socket.io-adapter"
import * as Metrics from "../Metrics.js"
import { Recovery } from "./Recovery.js"

/** What `restoreSession` resolves with when it restores nothing (Socket.IO takes `null`). */
export const NOT_RESTORED = null as unknown as Session

// Whether a packet sent with `opts` is for a socket in `rooms` (as Socket.IO's own adapter decides
// which stored packets a session missed).
const matches = (rooms: ReadonlyArray<string>, opts: BroadcastOptions): boolean =>
  (opts.rooms.size === 0 || rooms.some((room) => opts.rooms.has(room))) &&
  !rooms.some((room) => opts.except?.has(room))

/** The most packets a restore reads again in the dynamic modes (stored during the restore). */
const READ_AGAIN_LIMIT = 10_000

const notFound = Metric.withAttributes(Metrics.restoresFailed, { reason: "not_found" })
const failed = Metric.withAttributes(Metrics.restoresFailed, { reason: "error" })

// Every restore that reached the Recovery service, but one interrupted (the adapter closed).
const countRestore = (exit: Exit.Exit<unknown, unknown>): Effect.Effect<void> => {
  if (Exit.isSuccess(exit)) {
    return Metric.update(exit.value === undefined ? notFound : Metrics.sessionsRestored, 1)
  }
  return Cause.hasInterruptsOnly(exit.cause) ? Effect.void : Metric.update(failed, 1)
}

/** What the restores need from their adapter. */
export interface RestoresOptions {
  readonly nsp: string
  /** Longest a restore may take. */
  readonly requestsTimeout: Duration.Duration
  readonly run: <A, E>(effect: Effect.Effect<A, E, Recovery>) => Promise<Exit.Exit<A, E>>
  /** Told of each failed restore. */
  readonly report: (failure: unknown) => void
  /**
   * In the dynamic subscription modes, where the server hears only the rooms its sockets are in:
   * listens on a restored session's rooms (`ready` once the LISTENs hold) until `release`.
   */
  readonly listenRooms?:
    | ((rooms: ReadonlyArray<string>) => {
        readonly ready: Promise<void>
        readonly release: () => void
      })
    | undefined
}

/** A stored packet delivered while restores ran. */
interface Recorded {
  readonly offset: bigint
  readonly data: Array<unknown>
  readonly opts: BroadcastOptions
}

/** Restores sessions, and keeps their packets from being delivered twice. */
export class Restores {
  /** Restored sockets and the last offset their restore read: older packets are not resent. */
  readonly #restored = new Map<string, bigint>()
  /** Restores in flight, and the stored packets delivered meanwhile. */
  #restoring = 0
  #recorded: Array<Recorded> = []

  constructor(private readonly options: RestoresOptions) {}

  /**
   * A stored packet (its args `data` ending with its offset) is delivered locally, in offset
   * order: returns its `except` rooms plus the sockets whose restore replayed it.
   */
  delivering(
    offset: bigint,
    data: Array<unknown>,
    opts: BroadcastOptions,
  ): BroadcastOptions["except"] {
    let except = opts.except
    for (const [sid, last] of this.#restored) {
      // Deliveries come in offset order: past `last`, the entry has done its job.
      if (offset > last) this.#restored.delete(sid)
      else (except = new Set(except)).add(sid)
    }
    if (this.#restoring > 0) this.#recorded.push({ offset, data, opts })
    return except
  }

  /** Restores a session with the packets it missed, those delivered during the restore included. */
  async restore(pid: PrivateSessionId, offset: string): Promise<Session> {
    // Packets delivered while the restore runs are recorded: the session's snapshot may predate
    // them, and the restored socket does not exist yet to receive them live.
    this.#restoring++
    const from = this.#recorded.length
    try {
      const exit = await this.options.run(
        Effect.flatMap(Recovery, (recovery) =>
          recovery.restore(this.options.nsp, pid, offset),
        ).pipe(
          Effect.timeout(this.options.requestsTimeout),
          // Counted in the application's context (its metric registry).
          Effect.onExit((exit) => countRestore(exit)),
        ),
      )
      if (Exit.isFailure(exit)) {
        if (!Exit.hasInterrupts(exit)) this.options.report(Cause.squash(exit.cause))
        return NOT_RESTORED
      }
      const session = exit.value
      if (session === undefined) return NOT_RESTORED
      const missedPackets = [...session.missedPackets]
      let last = session.last
      const hold = this.options.listenRooms?.(session.rooms)
      if (hold !== undefined) {
        const more = await this.#readAgain(hold.ready, session.rooms, last)
        // After Socket.IO built the socket, which joins its rooms at once: they keep the LISTENs.
        if (more !== undefined) setImmediate(hold.release)
        else hold.release()
        if (more === undefined) return NOT_RESTORED
        missedPackets.push(...more.packets)
        last = more.last
      }
      // Those after the snapshot that are the socket's go with the missed ones. Socket.IO builds
      // the socket in the microtasks after we return: with no delivery in between, later ones
      // reach it live, and earlier ones that arrive late are not sent to it again.
      for (const entry of this.#recorded.slice(from)) {
        if (entry.offset <= last || !matches(session.rooms, entry.opts)) continue
        missedPackets.push(entry.data)
        last = entry.offset
      }
      this.#restored.set(session.sid, last)
      return {
        sid: session.sid,
        pid: session.pid,
        rooms: session.rooms,
        data: session.data,
        missedPackets,
      }
    } finally {
      if (--this.#restoring === 0) this.#recorded = []
    }
  }

  /**
   * Dynamic subscription modes: this server may not have listened on the session's rooms when the
   * session was read. Once it does (`ready`), what was stored after `after` is read again: later
   * packets are heard live. `undefined` when that read failed (the restore fails: nothing missed
   * is ever left out silently).
   */
  async #readAgain(
    ready: Promise<void>,
    rooms: ReadonlyArray<string>,
    after: bigint,
  ): Promise<{ readonly packets: Array<Array<unknown>>; readonly last: bigint } | undefined> {
    await ready
    const exit = await this.options.run(
      Effect.flatMap(Recovery, (recovery) =>
        recovery.packetsSince(this.options.nsp, after, READ_AGAIN_LIMIT),
      ).pipe(Effect.timeout(this.options.requestsTimeout)),
    )
    if (Exit.isFailure(exit)) {
      if (!Exit.hasInterrupts(exit)) this.options.report(Cause.squash(exit.cause))
      return undefined
    }
    const rows = exit.value
    if (rows.length === READ_AGAIN_LIMIT) {
      this.options.report(
        new Error(`more than ${READ_AGAIN_LIMIT} packets stored during a restore`),
      )
      return undefined
    }
    const packets = rows
      .filter((row) => matches(rooms, { rooms: new Set(row.rooms), except: new Set(row.except) }))
      .map((row) => [...row.data, String(row.offset)])
    return { packets, last: rows.length === 0 ? after : rows[rows.length - 1]!.offset }
  }
}
