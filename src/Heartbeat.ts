/**
 * Cluster membership per namespace, on the wire exactly like socket.io-adapter's
 * `ClusterAdapterWithHeartbeat`: a `HEARTBEAT` when nothing else was published for
 * `heartbeatInterval`, a node unseen for `heartbeatTimeout` is down.
 *
 * @since 0.1.0
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import { AdapterConfig } from "./AdapterConfig.js"

/** The members of one namespace's cluster, as seen by this node. */
export interface Membership {
  /** Records a message from `uid` (never the emitter, never ourselves). */
  readonly seen: (uid: string) => void
  /** Removes a node at once (it sent `ADAPTER_CLOSE`). */
  readonly remove: (uid: string) => void
  /** Records that this node published something, which postpones the next heartbeat. */
  readonly published: () => void
  /** The other nodes currently alive. */
  readonly nodes: () => ReadonlyArray<string>
}

/** What a tracked namespace provides. */
export interface TrackOptions {
  /** Sends one `HEARTBEAT` on the namespace's channel. */
  readonly publishHeartbeat: Effect.Effect<void>
  /** Called once per node that went down (timed out); not for `remove`. */
  readonly onNodeDown: (uid: string) => void
}

/** The Heartbeat service. */
export class Heartbeat extends Context.Service<
  Heartbeat,
  {
    /** Tracks a namespace's members and sends its heartbeats for the lifetime of the scope. */
    readonly track: (options: TrackOptions) => Effect.Effect<Membership, never, Scope.Scope>
  }
>()("socket.io-postgres-effect/Heartbeat") {}

/** Builds the Heartbeat service. */
export const make = Effect.gen(function* () {
  const config = yield* AdapterConfig
  const interval = Duration.toMillis(config.heartbeatInterval)
  const timeout = Duration.toMillis(config.heartbeatTimeout)
  const checkEvery = Duration.millis(Math.max(1, Math.min(1000, Math.floor(timeout / 4))))

  const track = (options: TrackOptions) =>
    Effect.gen(function* () {
      const clock = yield* Clock.Clock
      const lastSeen = new Map<string, number>()
      let lastPublished = clock.currentTimeMillisUnsafe()

      const membership: Membership = {
        seen: (uid) => void lastSeen.set(uid, clock.currentTimeMillisUnsafe()),
        remove: (uid) => void lastSeen.delete(uid),
        published: () => void (lastPublished = clock.currentTimeMillisUnsafe()),
        nodes: () => [...lastSeen.keys()],
      }

      // Sleep until the next heartbeat is due; publishing anything postpones it.
      const heartbeatLoop = Effect.suspend(() => {
        const wait = lastPublished + interval - clock.currentTimeMillisUnsafe()
        return wait > 0
          ? Effect.sleep(Duration.millis(wait))
          : Effect.sync(membership.published).pipe(Effect.andThen(options.publishHeartbeat))
      }).pipe(Effect.forever)

      const expiryCheck = Clock.currentTimeMillis.pipe(
        Effect.map((now) => {
          for (const [uid, seenAt] of lastSeen) {
            if (now - seenAt > timeout) {
              lastSeen.delete(uid)
              options.onNodeDown(uid)
            }
          }
        }),
        Effect.repeat(Schedule.spaced(checkEvery)),
      )

      yield* Effect.all([heartbeatLoop, expiryCheck], { concurrency: 2, discard: true }).pipe(
        Effect.catchCause((cause) => Effect.logError("heartbeat loop failed", cause)),
        Effect.annotateLogs({ module: "Heartbeat" }),
        Effect.withTracerEnabled(false),
        Effect.forkScoped,
      )
      return membership
    })

  return Heartbeat.of({ track })
})

/** The Heartbeat layer; needs `AdapterConfig`. */
export const layer: Layer.Layer<Heartbeat, never, AdapterConfig> = Layer.effect(Heartbeat, make)
