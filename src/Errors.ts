/**
 * The typed errors of the cluster.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"

/** An option failed validation; `option` names it. */
export class ConfigError extends Schema.TaggedError<ConfigError>()("ConfigError", {
  option: Schema.String,
  message: Schema.String,
}) {}

/** A statement against PostgreSQL failed; `operation` says which one. */
export class DatabaseError extends Schema.TaggedError<DatabaseError>()("DatabaseError", {
  operation: Schema.String,
  message: Schema.String,
  cause: Schema.optional(Schema.Defect()),
}) {}

/** A message could not be published to the cluster. */
export class PublishError extends Schema.TaggedError<PublishError>()("PublishError", {
  reason: Schema.Literals(["Database", "Timeout", "Overloaded", "Closed", "Encode"]),
  message: Schema.String,
  cause: Schema.optional(Schema.Defect()),
}) {}

/**
 * A request (`fetchSockets`, `serverSideEmitWithAck` of the emitter) ended without the answers of
 * `missing` servers within `requestsTimeout`.
 */
export class RequestTimeoutError extends Schema.TaggedError<RequestTimeoutError>()(
  "RequestTimeoutError",
  { missing: Schema.Number, message: Schema.String },
) {}

/** A session could not be saved for connection state recovery (e.g. `socket.data` unencodable). */
export class RecoveryError extends Schema.TaggedError<RecoveryError>()("RecoveryError", {
  message: Schema.String,
  cause: Schema.optional(Schema.Defect()),
}) {}

/** The LISTEN connection failed or a channel could not be listened on. */
export class ListenError extends Schema.TaggedError<ListenError>()("ListenError", {
  channel: Schema.optional(Schema.String),
  message: Schema.String,
  cause: Schema.optional(Schema.Defect()),
}) {}

/**
 * The LISTEN connection is back after a failure: given to the `errorHandler` once per incident,
 * after the failures it reported, so that the incident is seen to end.
 */
export class Reconnected extends Schema.TaggedError<Reconnected>()("Reconnected", {
  message: Schema.String,
}) {}

/**
 * SQLSTATE classes and codes that retrying does not cure: the role or its password is refused,
 * the database or schema does not exist, a privilege is missing, a table is missing.
 */
const PERMANENT = new Set(["28000", "28P01", "3D000", "3F000", "42501", "42P01"])

/** The SQLSTATE of a permanent failure anywhere in an error's chain of causes, if any. */
export const permanentCode = (error: unknown): string | undefined => {
  let current = error
  for (let depth = 0; depth < 8 && typeof current === "object" && current !== null; depth++) {
    const code = (current as { code?: unknown }).code
    if (typeof code === "string" && PERMANENT.has(code)) return code
    current = (current as { cause?: unknown }).cause
  }
  return undefined
}

/** How much of a statement's text an error message shows. */
const SQL_SHOWN = 60

/**
 * A statement's text for a message: its whitespace collapsed and, past {@link SQL_SHOWN}
 * characters, cut at a space with an ellipsis, so that no word or identifier is cut in two.
 */
export const shortSql = (sql: string, max = SQL_SHOWN): string => {
  const text = sql.trim().replace(/\s+/g, " ")
  if (text.length <= max) return text
  const cut = text.lastIndexOf(" ", max)
  // One word longer than `max`: shown whole rather than cut.
  const end = cut > 0 ? cut : text.indexOf(" ", max)
  return end === -1 ? text : `${text.slice(0, end)} …`
}

/** Builds a `DatabaseError` from anything a `pg` call rejected with. */
export const databaseError = (operation: string) => (cause: unknown) =>
  new DatabaseError({
    operation,
    message: `${operation} failed: ${cause instanceof Error ? cause.message : String(cause)}`,
    cause,
  })

/**
 * Builds the `DatabaseError` of a failed statement, named by its {@link shortSql}: shortened only
 * when it failed, never before it runs (a notify script holds every payload of its batch).
 */
export const statementError =
  (sql: string) =>
  (cause: unknown): DatabaseError =>
    databaseError(shortSql(sql))(cause)

/**
 * Where publish and listen errors are reported besides the log: the facade provides the
 * `errorHandler` option here. Defaults to doing nothing.
 */
export const ErrorHandler = Context.Reference<(error: Error) => void>(
  "socket.io-postgres-effect/ErrorHandler",
  { defaultValue: () => () => {} },
)

// The permanent failures each handler was told of, until the LISTEN connection is back.
const told = new WeakMap<(error: Error) => void, Set<string>>()

// A permanent failure is said as such ("permanent: …"), once: every later attempt would fail the
// same way until someone acts (a password, a grant, a table). Transient ones are all told.
const tellOnce = (handler: (error: Error) => void, error: Error): boolean => {
  let said = told.get(handler)
  if (error instanceof Reconnected) {
    said?.clear()
    return true
  }
  const code = permanentCode(error)
  if (code === undefined) return true
  if (!error.message.startsWith("permanent: ")) error.message = `permanent: ${error.message}`
  const key = `${code} ${error.message.replace(/\d+/g, "#")}`
  if (said === undefined) told.set(handler, (said = new Set()))
  if (said.has(key)) return false
  said.add(key)
  return true
}

/**
 * Reports an error to the `ErrorHandler` (a permanent failure once, as such); a throwing
 * handler is caught and logged.
 */
export const report = (error: Error) =>
  Effect.flatMap(ErrorHandler, (handler) =>
    tellOnce(handler, error)
      ? Effect.try({ try: () => handler(error), catch: (thrown) => thrown }).pipe(
          Effect.catch((thrown) => Effect.logError("errorHandler threw", thrown)),
        )
      : Effect.void,
  )
