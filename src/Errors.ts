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

/** Builds a `DatabaseError` from anything a `pg` call rejected with. */
export const databaseError = (operation: string) => (cause: unknown) =>
  new DatabaseError({
    operation,
    message: `${operation} failed: ${cause instanceof Error ? cause.message : String(cause)}`,
    cause,
  })

/**
 * Where publish and listen errors are reported besides the log: the facade provides the
 * `errorHandler` option here. Defaults to doing nothing.
 */
export const ErrorHandler = Context.Reference<(error: Error) => void>(
  "socket.io-postgres-effect/ErrorHandler",
  { defaultValue: () => () => {} },
)

/** Reports an error to the `ErrorHandler`; a throwing handler is caught and logged. */
export const report = (error: Error) =>
  Effect.flatMap(ErrorHandler, (handler) =>
    Effect.try({ try: () => handler(error), catch: (thrown) => thrown }).pipe(
      Effect.catch((thrown) => Effect.logError("errorHandler threw", thrown)),
    ),
  )
