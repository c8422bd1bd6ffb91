/**
 * Deletes attachments older than `cleanupInterval`, every `cleanupInterval`.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import { AttachmentStore } from "./AttachmentStore.js"
import { Config } from "./Config.js"

/** The Cleanup service: one pass on demand; the layer also runs it on a schedule. */
export class Cleanup extends Context.Service<
  Cleanup,
  {
    /** Deletes the attachments older than `cleanupInterval` now; resolves with the count. */
    readonly runOnce: Effect.Effect<number>
  }
>()("socket.io-postgres-effect/Cleanup") {}

/** Builds the service and forks its schedule (first pass after one interval). */
export const make = Effect.gen(function* () {
  const config = yield* Config
  const store = yield* AttachmentStore
  const runOnce = store.deleteOlderThan(config.cleanupInterval).pipe(
    Effect.tap((n) => (n > 0 ? Effect.logDebug(`deleted ${n} attachments`) : Effect.void)),
    Effect.catch((error) =>
      Effect.logWarning(`cleanup failed: ${error.message}`).pipe(Effect.as(0)),
    ),
    // A defect must not end the loop either.
    Effect.catchCause((cause) => Effect.logError("cleanup failed", cause).pipe(Effect.as(0))),
  )
  // Delay once, outside the repeat: inside it, each pass would wait two intervals.
  yield* runOnce.pipe(
    Effect.repeat(Schedule.spaced(config.cleanupInterval)),
    Effect.delay(config.cleanupInterval),
    Effect.annotateLogs({ module: "Cleanup" }),
    Effect.withTracerEnabled(false),
    Effect.forkScoped,
  )
  return Cleanup.of({ runOnce })
})

/** The Cleanup layer; needs `Config` and `AttachmentStore`. */
export const layer: Layer.Layer<Cleanup, never, Config | AttachmentStore> = Layer.effect(
  Cleanup,
  make,
)
