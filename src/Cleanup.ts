/**
 * One scheduled loop for every cleanup of the package: every `cleanupInterval`, each registered
 * task runs once (the attachments older than `cleanupInterval`; the recovery rows once a namespace
 * asked for connection state recovery).
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import { AttachmentStore } from "./AttachmentStore.js"
import { AdapterConfig } from "./AdapterConfig.js"
import type { DatabaseError } from "./Errors.js"

/** A cleanup run by the loop: deletes what is old and resolves with the count of rows deleted. */
export interface CleanupTask {
  /** What it deletes, for the logs ("attachments"). */
  readonly name: string
  readonly run: Effect.Effect<number, DatabaseError>
}

/** The Cleanup service: the loop's tasks, and one pass on demand. */
export class Cleanup extends Context.Service<
  Cleanup,
  {
    /** Adds a task to every pass from now on, until the caller's scope closes. */
    readonly register: (task: CleanupTask) => Effect.Effect<void, never, Scope.Scope>
    /** Runs every task now; resolves with the rows deleted (a failing task counts 0). */
    readonly runOnce: Effect.Effect<number>
  }
>()("socket.io-postgres-effect/Cleanup") {}

// A failure, or a defect, of one task is logged: it stops neither the others nor the loop.
const runTask = (task: CleanupTask): Effect.Effect<number> =>
  task.run.pipe(
    Effect.tap((n) => (n > 0 ? Effect.logDebug(`deleted ${n} ${task.name}`) : Effect.void)),
    Effect.catch((error) =>
      Effect.logWarning(`cleanup of ${task.name} failed: ${error.message}`).pipe(Effect.as(0)),
    ),
    Effect.catchCause((cause) =>
      Effect.logError(`cleanup of ${task.name} failed`, cause).pipe(Effect.as(0)),
    ),
  )

/** Builds the service with no task and forks its loop (first pass after one interval). */
export const make = Effect.gen(function* () {
  const config = yield* AdapterConfig
  const tasks = yield* Ref.make<ReadonlyArray<CleanupTask>>([])

  const register = (task: CleanupTask) =>
    Effect.acquireRelease(
      Ref.update(tasks, (current) => [...current, task]),
      () => Ref.update(tasks, (current) => current.filter((t) => t !== task)),
    )

  const runOnce = Ref.get(tasks).pipe(
    Effect.flatMap((current) => Effect.forEach(current, runTask)),
    Effect.map((counts) => counts.reduce((sum, n) => sum + n, 0)),
  )

  // Delay once, outside the repeat: inside it, each pass would wait two intervals.
  yield* runOnce.pipe(
    Effect.repeat(Schedule.spaced(config.cleanupInterval)),
    Effect.delay(config.cleanupInterval),
    Effect.annotateLogs({ module: "Cleanup" }),
    Effect.withTracerEnabled(false),
    Effect.forkScoped,
  )
  return Cleanup.of({ register, runOnce })
})

/** The attachments' task: the rows older than `cleanupInterval`. */
export const attachmentsTask = Effect.gen(function* () {
  const config = yield* AdapterConfig
  const store = yield* AttachmentStore
  return { name: "attachments", run: store.deleteOlderThan(config.cleanupInterval) } as CleanupTask
})

/** The loop alone, with no task: others register theirs. Needs `AdapterConfig`. */
export const layerEmpty: Layer.Layer<Cleanup, never, AdapterConfig> = Layer.effect(Cleanup, make)

/** The loop with the attachments' task registered; needs `AdapterConfig` and `AttachmentStore`. */
export const layer: Layer.Layer<Cleanup, never, AdapterConfig | AttachmentStore> = Layer.effect(
  Cleanup,
  Effect.gen(function* () {
    const cleanup = yield* make
    yield* cleanup.register(yield* attachmentsTask)
    return cleanup
  }),
)
