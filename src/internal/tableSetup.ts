/**
 * Table creation in the background, the same for every table of ours: retried (exponential from
 * 200 ms, then every 10 s at most), each failure logged, and waited for up to 5 s so that the
 * first writes find their table; past that, PostgreSQL may come later and creation goes on. A
 * permanent failure (a role without `CREATE`) is also reported, once, as such.
 */
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import { DatabaseError, permanentCode, report } from "../Errors.js"

/** How long the caller waits for the tables before going on without them. */
const WAIT = "5 seconds"

/** Runs `create` until it succeeds, in the scope's background; waits for it up to 5 s. */
export const setUpTables = <E extends Error, R>(
  what: string,
  create: Effect.Effect<void, E, R>,
): Effect.Effect<void, never, R | Scope.Scope> =>
  Effect.gen(function* () {
    const setup = yield* create.pipe(
      Effect.mapError((error) => {
        error.message = `creating ${what} failed: ${error.message}`
        return error
      }),
      Effect.tapError((error) =>
        permanentCode(error) === undefined
          ? Effect.logWarning(error.message)
          : report(error).pipe(Effect.andThen(Effect.logWarning(error.message))),
      ),
      Effect.retry(
        Schedule.min([Schedule.exponential("200 millis"), Schedule.spaced("10 seconds")]),
      ),
      Effect.forkScoped,
    )
    yield* Fiber.await(setup).pipe(Effect.timeout(WAIT), Effect.ignore)
  })

/**
 * With `createTable: false`, says at start, once and as a permanent failure, that a table is
 * missing, rather than letting the first message that needs it fail. In the background: a
 * PostgreSQL out of reach is the Listener's to report.
 */
export const checkTable = <R>(
  what: string,
  exists: Effect.Effect<boolean, DatabaseError, R>,
): Effect.Effect<void, never, R | Scope.Scope> =>
  exists.pipe(
    Effect.flatMap((found) => {
      if (found) return Effect.void
      const error = new DatabaseError({
        operation: "check",
        message: `permanent: ${what} does not exist and createTable is false: create it (see the README) or leave createTable on`,
      })
      return report(error).pipe(Effect.andThen(Effect.logWarning(error.message)))
    }),
    Effect.ignore,
    Effect.forkScoped,
    Effect.asVoid,
  )
