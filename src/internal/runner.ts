/**
 * How a namespace runs its effects: on the `ManagedRuntime` of a `createAdapter` call, or with the
 * context of the Effect application that made the adapter factory. Either way with the services
 * (and the logger, tracer and metrics) of that context, never on the default runtime.
 */
import type * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import type * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import type * as Cluster from "../Cluster.js"
import * as Errors from "../Errors.js"

/** Runs effects that need the cluster's services. */
export interface Runner {
  readonly runFork: <A, E>(effect: Effect.Effect<A, E, Cluster.Services>) => Fiber.Fiber<A, E>
  readonly runPromiseExit: <A, E>(
    effect: Effect.Effect<A, E, Cluster.Services>,
  ) => Promise<Exit.Exit<A, E>>
}

/** Runs effects with a context captured from the application. */
export const fromContext = (context: Context.Context<Cluster.Services>): Runner => ({
  runFork: (effect) => Effect.runForkWith(context)(effect),
  runPromiseExit: (effect) => Effect.runPromiseExitWith(context)(effect),
})

/** Where a namespace's warnings and failures go. */
export interface Reporter {
  /** A failure (a publish, a session write, a restore): logged and given to the `ErrorHandler`. */
  readonly report: (failure: unknown) => void
  /** A warning for the log. */
  readonly warn: (line: string) => void
}

/**
 * Reports through the runner, so through the application's logger and `ErrorHandler`. Once the
 * node `closed`, warnings stop (failures still reach the handler); once it `stopped`, the runner
 * may be gone and nothing is reported.
 */
export const makeReporter = (
  runner: Runner,
  nsp: string,
  state: { readonly closed: () => boolean; readonly stopped: () => boolean },
): Reporter => {
  const run = (effect: Effect.Effect<void>) => {
    if (!state.stopped())
      runner.runFork(effect.pipe(Effect.annotateLogs({ module: "Namespace", nsp })))
  }
  return {
    report: (failure) => {
      const error =
        failure instanceof Error ? failure : new Error(`publish failed: ${String(failure)}`)
      const log = state.closed() ? Effect.void : Effect.logWarning(error.message)
      run(log.pipe(Effect.andThen(Errors.report(error))))
    },
    warn: (line) => {
      if (!state.closed()) run(Effect.logWarning(line))
    },
  }
}
