/**
 * Logs as Socket.IO's own adapters do, for plain (non-Effect) apps: through the `debug` module,
 * one namespace per module (`socket.io-postgres-effect:Listener`, …), silent unless `DEBUG` asks
 * (e.g. `DEBUG=socket.io-postgres-effect:*`). Failures reach the app through `errorHandler`, not
 * the console. Effect apps never get this logger: their own stays in charge.
 */
import createDebug from "debug"
import * as Cause from "effect/Cause"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as References from "effect/References"

/** The root of our `debug` namespaces. */
export const NAMESPACE = "socket.io-postgres-effect"

const namespaces = new Map<string, createDebug.Debugger>()

/** The `debug` instance of a module (created once). */
export const debugOf = (module: string): createDebug.Debugger => {
  let debug = namespaces.get(module)
  if (debug === undefined) {
    debug = createDebug(`${NAMESPACE}:${module}`)
    namespaces.set(module, debug)
  }
  return debug
}

const text = (message: unknown): string =>
  Array.isArray(message) ? message.map(text).join(" ") : String(message)

/** Effect's log lines to `debug`: level, message, other annotations, the cause if any. */
export const debugLogger: Logger.Logger<unknown, void> = Logger.make((options) => {
  const annotations = options.fiber.getRef(References.CurrentLogAnnotations) as Record<
    string,
    unknown
  >
  const module = typeof annotations["module"] === "string" ? annotations["module"] : "Adapter"
  const debug = debugOf(module)
  if (!debug.enabled) return
  const extra = Object.entries(annotations)
    .filter(([key]) => key !== "module")
    .map(([key, value]) => `${key}=${String(value)}`)
  const cause = Cause.hasFails(options.cause) || Cause.hasDies(options.cause)
  debug(
    "%s %s%s%s",
    options.logLevel.toUpperCase(),
    text(options.message),
    extra.length > 0 ? ` (${extra.join(", ")})` : "",
    cause ? `: ${Cause.pretty(options.cause)}` : "",
  )
})

/** Replaces the default (console) logger with {@link debugLogger}, at every level. */
export const layer: Layer.Layer<never> = Layer.mergeAll(
  Logger.layer([debugLogger]),
  Layer.succeed(References.MinimumLogLevel, "All"),
)

/** How long the same failure stays quiet after it was printed. */
const QUIET_MS = 60_000

/**
 * The `errorHandler` of plain apps that give none: one readable line per incident on stderr. The
 * same failure again (e.g. every reconnection attempt while PostgreSQL is down) stays quiet for a
 * minute, then is printed once more with how often it happened meanwhile.
 */
export const makeDefaultErrorHandler = (
  write: (line: string) => void = (line) => console.warn(line),
): ((error: Error) => void) => {
  const incidents = new Map<string, { at: number; repeated: number }>()
  return (error) => {
    // Numbers (ports, pids, ids, counts) differ between repeats of one incident.
    const key = `${error.name}: ${error.message.replace(/\d+/g, "#")}`
    const now = Date.now()
    const seen = incidents.get(key)
    if (seen !== undefined && now - seen.at < QUIET_MS) {
      seen.repeated++
      return
    }
    const again = seen === undefined || seen.repeated === 0 ? "" : ` (${seen.repeated} more since)`
    incidents.set(key, { at: now, repeated: 0 })
    write(`${NAMESPACE}: ${error.message}${again}`)
  }
}
