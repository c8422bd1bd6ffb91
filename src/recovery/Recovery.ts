/**
 * Connection state recovery storage, as one service: the packets a client may have missed and the
 * sessions of disconnected sockets, in three tables of this package (see `Tables`). It is composed
 * from the `PacketStore` and the `SessionStore`; its cleanup runs in the `Cleanup` loop once a
 * namespace asked for retention.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Scope from "effect/Scope"
import { Cleanup } from "../Cleanup.js"
import { AdapterConfig } from "../AdapterConfig.js"
import { Database, withTimeout } from "../Database.js"
import type { DatabaseError, RecoveryError } from "../Errors.js"
import * as PacketStore from "./PacketStore.js"
import * as SessionStore from "./SessionStore.js"
import { makeEnsureTables, tableNames } from "./Tables.js"

export type { StoredRow } from "./PacketStore.js"
export type { RestoredSession, SessionToPersist } from "./SessionStore.js"
export { tableNames } from "./Tables.js"

/** The Recovery service. */
export class Recovery extends Context.Service<
  Recovery,
  {
    /** Creates the three tables and their indexes when missing (once per service). */
    readonly ensureTables: Effect.Effect<void, DatabaseError>
    /**
     * Keeps packets at least `maxDisconnection` (plus one `cleanupInterval`) and adds the
     * recovery rows to the cleanup; the longest duration asked for wins.
     */
    readonly retain: (maxDisconnection: Duration.Duration) => Effect.Effect<void>
    /**
     * Saves the sessions of connected sockets, tied to `ownerPid` (the backend pid of this
     * server's LISTEN connection), so that they survive this server being killed.
     */
    readonly persistLive: SessionStore.SessionStore["Service"]["persistLive"]
    /** Forgets live sessions (their sockets left for good). */
    readonly forget: SessionStore.SessionStore["Service"]["forget"]
    /** Saves disconnected sockets' sessions until `maxDisconnection` has passed. */
    readonly persistAll: SessionStore.SessionStore["Service"]["persistAll"]
    /** Saves a disconnected socket's session until `maxDisconnection` has passed. */
    readonly persist: (
      session: SessionStore.SessionToPersist,
      maxDisconnection: Duration.Duration,
    ) => Effect.Effect<void, DatabaseError | RecoveryError>
    /**
     * Takes a session (at most one restore wins) with the packets it missed: `undefined` when it
     * is unknown, expired, or its offset is unknown or older than what the cleanup kept. Traced
     * as the span `restore`.
     */
    readonly restore: SessionStore.SessionStore["Service"]["restore"]
    /** The namespace's last offset (0 before its first packet). */
    readonly lastOffset: PacketStore.PacketStore["Service"]["lastOffset"]
    /**
     * The stored packets of a namespace after `offset` (at most `limit`), in order: what a server
     * missed while its LISTEN connection was down.
     */
    readonly packetsSince: PacketStore.PacketStore["Service"]["packetsSince"]
    /** One cleanup pass: expired packets and sessions; resolves with the counts deleted. */
    readonly cleanup: Effect.Effect<{ readonly packets: number; readonly sessions: number }>
  }
>()("socket.io-postgres-effect/Recovery") {}

/** Builds the service; its cleanup joins the `Cleanup` loop at the first `retain`. */
export const make = Effect.gen(function* () {
  const config = yield* AdapterConfig
  const packets = yield* PacketStore.PacketStore
  const sessions = yield* SessionStore.SessionStore
  const loop = yield* Cleanup
  // The cleanup task lives as long as this service, whoever calls `retain`.
  const scope = yield* Effect.scope
  const ensureTables = yield* makeEnsureTables(
    withTimeout(yield* Database, config.publishTimeout),
    tableNames(config.recoveryTablePrefix),
  )
  // How long packets are kept, and the longest maxDisconnectionDuration asked for.
  const retention = yield* Ref.make(
    Option.none<{ readonly keep: Duration.Duration; readonly max: Duration.Duration }>(),
  )

  const pass = Ref.get(retention).pipe(
    Effect.flatMap(
      Option.match({
        onNone: () => Effect.succeed({ packets: 0, sessions: 0 }),
        onSome: ({ keep, max }) =>
          Effect.all({ sessions: sessions.cleanup(max), packets: packets.cleanup(keep) }),
      }),
    ),
    Effect.tap(({ packets, sessions }) =>
      packets + sessions > 0
        ? Effect.logDebug(`deleted ${packets} packets and ${sessions} sessions`)
        : Effect.void,
    ),
  )

  const cleanup = pass.pipe(
    Effect.catch((error) =>
      Effect.logWarning(`recovery cleanup failed: ${error.message}`).pipe(
        Effect.as({ packets: 0, sessions: 0 }),
      ),
    ),
    Effect.catchCause((cause) =>
      Effect.logError("recovery cleanup failed", cause).pipe(
        Effect.as({ packets: 0, sessions: 0 }),
      ),
    ),
    Effect.annotateLogs({ module: "Recovery" }),
  )

  const task = {
    name: "recovery rows",
    run: pass.pipe(Effect.map(({ packets, sessions }) => packets + sessions)),
  }

  const retain = (maxDisconnection: Duration.Duration) =>
    Ref.modify(retention, (current) => {
      const max = Option.match(current, {
        onNone: () => maxDisconnection,
        onSome: (c) => Duration.max(c.max, maxDisconnection),
      })
      const next = Option.some({ keep: Duration.sum(max, config.cleanupInterval), max })
      return [Option.isNone(current), next] as const
    }).pipe(
      Effect.flatMap((first) => (first ? Scope.provide(loop.register(task), scope) : Effect.void)),
    )

  const restore = Effect.fn("restore")(function* (nsp: string, pid: string, offset: string) {
    yield* Effect.annotateCurrentSpan({ nsp })
    return yield* sessions.restore(nsp, pid, offset)
  })

  return Recovery.of({
    ensureTables,
    retain,
    persistLive: sessions.persistLive,
    forget: sessions.forget,
    persist: (session, maxDisconnection) => sessions.persistAll([session], maxDisconnection),
    persistAll: sessions.persistAll,
    restore,
    lastOffset: packets.lastOffset,
    packetsSince: packets.packetsSince,
    cleanup,
  })
})

/** The Recovery layer, with its stores; needs `AdapterConfig`, `Database` and `Cleanup`. */
export const layer: Layer.Layer<Recovery, never, AdapterConfig | Database | Cleanup> = Layer.effect(
  Recovery,
  make,
).pipe(Layer.provide(Layer.merge(PacketStore.layer, SessionStore.layer)))
