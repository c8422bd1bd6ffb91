/**
 * Table creation in the background, the same for every table of ours: retried (exponential from
 * 200 ms, then every 10 s at most), each failure logged, and waited for up to 5 s so that the
 * first writes find their table; past that, PostgreSQL may come later and creation goes on.
 */
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"

/** How long the caller waits for the tables before going on without them. */
const WAIT = "5 seconds"

/** Runs `create` until it succeeds, in the scope's background; waits for it up to 5 s. */
export const setUpTables = <E extends { readonly message: string }, R>(
  what: string,
  create: Effect.Effect<void, E, R>,
): Effect.Effect<void, never, R | Scope.Scope> =>
  Effect.gen(function* () {
    const setup = yield* create.pipe(
      Effect.tapError((error) => Effect.logWarning(`creating ${what} failed: ${error.message}`)),
      Effect.retry(
        Schedule.min([Schedule.exponential("200 millis"), Schedule.spaced("10 seconds")]),
      ),
      Effect.forkScoped,
    )
    yield* Fiber.await(setup).pipe(Effect.timeout(WAIT), Effect.ignore)
  })
