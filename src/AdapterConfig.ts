/**
 * The validated options of the adapter and the emitter, as a service (named so that it does not
 * shadow effect's own `Config` module).
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Result from "effect/Result"
import * as Schema from "effect/Schema"
import * as SchemaIssue from "effect/SchemaIssue"
import type { SubscriptionMode } from "./Channel.js"
import { ConfigError } from "./Errors.js"
import { didYouMean } from "./internal/didYouMean.js"
import * as Signing from "./Signing.js"

/** The largest NOTIFY payload PostgreSQL accepts: a payload must be shorter than 8000 bytes. */
export const MAX_NOTIFY_BYTES = 7999

/** Options of `createAdapter(pool, options)`, every one optional. */
export interface AdapterOptions {
  /** Prefix of the notification channels. @default "socket.io" */
  readonly channelPrefix?: string
  /** Attachments table, may be schema-qualified (`schema.table`). @default "socket_io_attachments" */
  readonly tableName?: string
  /** JSON byte length above which a message goes through the attachments table (capped at 7999). @default 8000 */
  readonly payloadThreshold?: number
  /** Milliseconds between two cleanups, and the age after which attachments are deleted. @default 30000 */
  readonly cleanupInterval?: number
  /** Milliseconds between two heartbeats. @default 5000 */
  readonly heartbeatInterval?: number
  /**
   * Milliseconds without a message from a node before it is considered down.
   * @default 10000, or twice `heartbeatInterval` when that is longer
   */
  readonly heartbeatTimeout?: number
  /** Milliseconds before `fetchSockets` / `serverSideEmitWithAck` requests give up. @default 5000 */
  readonly requestsTimeout?: number
  /** Create the attachments table when it is missing (`CREATE TABLE IF NOT EXISTS`). @default true */
  readonly createTable?: boolean
  /** Milliseconds a publish may take before it fails (PostgreSQL frozen or unreachable). @default 10000 */
  readonly publishTimeout?: number
  /** How many publishes may wait for PostgreSQL before new ones fail fast. @default 65536 */
  readonly maxPendingPublishes?: number
  /** Largest delay between two reconnection attempts of the LISTEN connection, in ms. @default 5000 */
  readonly reconnectMaxDelay?: number
  /**
   * Milliseconds between two liveness pings (`SELECT 1`) of the LISTEN connection.
   * @default heartbeatTimeout / 4 (2500)
   */
  readonly livenessInterval?: number
  /**
   * Milliseconds the LISTEN connection may stay silent with a ping unanswered before it is
   * replaced: a silent network is noticed within `livenessInterval + livenessTimeout`.
   * @default heartbeatTimeout / 2 (5000)
   */
  readonly livenessTimeout?: number
  /**
   * Prefix of the connection state recovery tables (`<prefix>_packets`, `<prefix>_sessions`,
   * `<prefix>_offsets`), may be schema-qualified; used only with `connectionStateRecovery`.
   * @default "socket_io_recovery"
   */
  readonly recoveryTablePrefix?: string
  /**
   * A secret shared by every node and emitter of the cluster (at least 16 bytes): every
   * notification and attachment is then signed, and what is unsigned, altered or replayed is
   * dropped. Never logged, stored or sent. Not with `secrets`. @default undefined (unsigned)
   */
  readonly secret?: string | Uint8Array
  /**
   * Several secrets, for key rotation: the first signs, any of them verifies. Not with `secret`.
   * @default undefined (unsigned)
   */
  readonly secrets?: ReadonlyArray<string | Uint8Array>
  /**
   * Which channels a server listens on. `"static"`: one channel per namespace (the wire of
   * `@socket.io/postgres-adapter` 0.5.0); `"dynamic"`: public rooms get channels of their own, a
   * server listens on a room's channel while one of its sockets is in the room, and a broadcast to
   * exactly one such room (without acknowledgement) goes there; `"dynamic-private"`: socket-id
   * rooms too (see the README's "Subscription modes", recovery included). @default "static"
   */
  readonly subscriptionMode?: SubscriptionMode
  /**
   * How this server keeps the cluster's membership. `"auto"`: one membership per server (one
   * heartbeat per `heartbeatInterval` on a server-level channel, however many namespaces) in every
   * namespace where all nodes are ours, per-namespace heartbeats (0.5.0's wire) where a node of
   * another kind was heard. `"namespace"`: per-namespace heartbeats everywhere, as 0.5.0.
   * @default "auto"
   */
  readonly membership?: "auto" | "namespace"
  /**
   * Where room channels live with several PostgreSQL servers (`createAdapter(pools)`) in the
   * dynamic subscription modes. `"room"`: each room's channel on the server its own name picks
   * (rendezvous hashing), so one busy namespace spreads over the servers; not with
   * `connectionStateRecovery`, whose offsets need one order per namespace. `"namespace"`: with
   * their namespace, on one server. Must be the same on every node and emitter. Without effect
   * with one server or in `"static"`. @default "room"
   */
  readonly roomPlacement?: "room" | "namespace"
  /** Called with each publish or listen error. @default logs a warning */
  readonly errorHandler?: (error: Error) => void
}

/** The `secret` / `secrets` options, for the emitter's and the primary's options too. */
export type SecretOptions = Pick<AdapterOptions, "secret" | "secrets">

/** The resolved options, durations as `Duration`. */
export interface ClusterConfig {
  readonly channelPrefix: string
  readonly tableName: string
  readonly payloadThreshold: number
  readonly cleanupInterval: Duration.Duration
  readonly heartbeatInterval: Duration.Duration
  readonly heartbeatTimeout: Duration.Duration
  readonly requestsTimeout: Duration.Duration
  readonly createTable: boolean
  readonly publishTimeout: Duration.Duration
  readonly maxPendingPublishes: number
  readonly reconnectMaxDelay: Duration.Duration
  readonly livenessInterval: Duration.Duration
  readonly livenessTimeout: Duration.Duration
  readonly recoveryTablePrefix: string
  /**
   * Which channels a server listens on (see {@link AdapterOptions.subscriptionMode}); `undefined`
   * is `"static"` (configs built by hand stay valid).
   */
  readonly subscriptionMode?: SubscriptionMode | undefined
  /** The cluster's secrets, the signing one first; `undefined` when unsigned. */
  readonly secrets?: Redacted.Redacted<ReadonlyArray<Uint8Array>> | undefined
  /** How this server keeps the membership; `undefined` is `"auto"`. */
  readonly membership?: "auto" | "namespace" | undefined
  /** Where room channels live with several servers; `undefined` is `"room"`. */
  readonly roomPlacement?: "room" | "namespace" | undefined
  /**
   * With several PostgreSQL servers (`createAdapter(pools)`): the id of their list, which the
   * heartbeats carry (`Placement.listId`); set by the facade, not an option.
   */
  readonly serverList?: string | undefined
}

const Millis = (name: string) =>
  Schema.Number.check(
    Schema.isInt({ message: `${name} must be an integer number of milliseconds` }),
    Schema.isGreaterThan(0, { message: `${name} must be greater than 0` }),
    Schema.isLessThanOrEqualTo(2 ** 31 - 1, { message: `${name} must be at most 2147483647 ms` }),
  )

const Identifier = (name: string) =>
  Schema.String.check(
    Schema.isMinLength(1, { message: `${name} must not be empty` }),
    Schema.makeFilter(
      (s: string) => !s.includes("\u0000") || `${name} must not contain NUL characters`,
    ),
  )

/** A table name, optionally `schema.table`; each part at most `maxBytes` bytes. */
const TableName = (name: string, maxBytes: number) =>
  Identifier(name).check(
    Schema.makeFilter((s: string) => {
      const parts = s.split(".")
      if (parts.length > 2) return `${name} must be \`table\` or \`schema.table\``
      if (parts.some((p) => p.length === 0)) return `${name} has an empty part`
      if (parts.some((p) => Buffer.byteLength(p) > maxBytes))
        return `${name} parts must be at most ${maxBytes} bytes (PostgreSQL identifiers have 63)`
      return true
    }),
  )

/** The longest recovery table suffix, `_sessions`, leaves 54 bytes of a 63-byte identifier. */
const RECOVERY_SUFFIX_BYTES = 9

const OptionsSchema = Schema.Struct({
  channelPrefix: Schema.optional(
    Identifier("channelPrefix").check(
      Schema.makeFilter(
        (s: string) =>
          Buffer.byteLength(s) <= 40 ||
          "channelPrefix must be at most 40 bytes (channels are limited to 63 bytes)",
      ),
    ),
  ),
  tableName: Schema.optional(TableName("tableName", 63)),
  payloadThreshold: Schema.optional(
    Schema.Number.check(
      Schema.isInt({ message: "payloadThreshold must be an integer" }),
      Schema.isGreaterThanOrEqualTo(0, { message: "payloadThreshold must be 0 or more" }),
    ),
  ),
  cleanupInterval: Schema.optional(Millis("cleanupInterval")),
  heartbeatInterval: Schema.optional(Millis("heartbeatInterval")),
  heartbeatTimeout: Schema.optional(Millis("heartbeatTimeout")),
  requestsTimeout: Schema.optional(Millis("requestsTimeout")),
  createTable: Schema.optional(Schema.Boolean),
  publishTimeout: Schema.optional(Millis("publishTimeout")),
  maxPendingPublishes: Schema.optional(
    Schema.Number.check(
      Schema.isInt({ message: "maxPendingPublishes must be an integer" }),
      Schema.isGreaterThan(0, { message: "maxPendingPublishes must be greater than 0" }),
    ),
  ),
  reconnectMaxDelay: Schema.optional(Millis("reconnectMaxDelay")),
  livenessInterval: Schema.optional(Millis("livenessInterval")),
  livenessTimeout: Schema.optional(Millis("livenessTimeout")),
  recoveryTablePrefix: Schema.optional(
    TableName("recoveryTablePrefix", 63 - RECOVERY_SUFFIX_BYTES),
  ),
  subscriptionMode: Schema.optional(
    Schema.declare(
      (u): u is SubscriptionMode => u === "static" || u === "dynamic" || u === "dynamic-private",
      { message: 'subscriptionMode must be "static", "dynamic" or "dynamic-private"' },
    ),
  ),
  membership: Schema.optional(
    Schema.Literals(["auto", "namespace"]).annotate({
      message: 'membership must be "auto" or "namespace"',
    }),
  ),
  roomPlacement: Schema.optional(
    Schema.Literals(["room", "namespace"]).annotate({
      message: 'roomPlacement must be "room" or "namespace"',
    }),
  ),
  errorHandler: Schema.optional(
    Schema.declare((u): u is (error: Error) => void => typeof u === "function", {
      message: "errorHandler must be a function",
    }),
  ),
})

const formatIssue = SchemaIssue.makeFormatterStandardSchemaV1()

/** The name of every option of `createAdapter`, `setupPrimary` and the layers' `AdapterConfig`. */
export const optionNames: ReadonlyArray<string> = [
  ...Object.keys(OptionsSchema.fields),
  // Checked apart from the Schema (see `decodeSecrets`).
  "secret",
  "secrets",
]

/** Which options a caller takes, for {@link decode}; by default those of `createAdapter`. */
export interface Accepted {
  /** Every option name it takes. */
  readonly names: ReadonlyArray<string>
  /** Who takes them, for the message about an adapter option it does not: e.g. "the emitter". */
  readonly who: string
}

// A misspelled option would silently keep its default: refused, with the nearest name.
const unknownOption = (input: object, accepted: Accepted): ConfigError | undefined => {
  for (const option of Object.keys(input)) {
    if (accepted.names.includes(option)) continue
    if (optionNames.includes(option)) {
      return new ConfigError({
        option,
        message: `option "${option}" does not apply to ${accepted.who}`,
      })
    }
    const near = didYouMean(option, accepted.names)
    return new ConfigError({
      option,
      message: `unknown option "${option}"${near === undefined ? "" : ` (did you mean "${near}"?)`}`,
    })
  }
  return undefined
}

/** The defaults of every option, in milliseconds where they are durations. */
export const defaults = {
  channelPrefix: "socket.io",
  tableName: "socket_io_attachments",
  payloadThreshold: 8000,
  cleanupInterval: 30_000,
  heartbeatInterval: 5_000,
  heartbeatTimeout: 10_000,
  requestsTimeout: 5_000,
  createTable: true,
  publishTimeout: 10_000,
  maxPendingPublishes: 65_536,
  reconnectMaxDelay: 5_000,
  /** heartbeatTimeout / 4 when heartbeatTimeout is given. */
  livenessInterval: 2_500,
  /** heartbeatTimeout / 2 when heartbeatTimeout is given. */
  livenessTimeout: 5_000,
  recoveryTablePrefix: "socket_io_recovery",
  subscriptionMode: "static",
  membership: "auto",
  roomPlacement: "room",
} as const

/**
 * The `secret` / `secrets` options as bytes; checked apart from the Schema so that no message can
 * ever quote a secret's value.
 */
const decodeSecrets = (
  input: Record<string, unknown>,
): Result.Result<Redacted.Redacted<ReadonlyArray<Uint8Array>> | undefined, ConfigError> => {
  const { secret, secrets } = input
  const fail = (option: string, message: string) =>
    Result.fail(new ConfigError({ option, message: `Invalid option ${option}: ${message}` }))
  if (secret !== undefined && secrets !== undefined) {
    return fail("secret", "give either secret or secrets, not both")
  }
  const bytesOf = (value: unknown): Uint8Array | string => {
    if (typeof value === "string") return Buffer.from(value, "utf8")
    if (value instanceof Uint8Array) return Buffer.from(value)
    return "must be a string or a Buffer"
  }
  const check = (
    option: string,
    value: unknown,
  ): Uint8Array | Result.Result<never, ConfigError> => {
    const bytes = bytesOf(value)
    if (typeof bytes === "string") return fail(option, bytes)
    if (bytes.length < Signing.MIN_SECRET_BYTES) {
      return fail(option, `must be at least ${Signing.MIN_SECRET_BYTES} bytes long`)
    }
    return bytes
  }
  if (secret !== undefined) {
    const bytes = check("secret", secret)
    return bytes instanceof Uint8Array ? Result.succeed(Redacted.make([bytes])) : bytes
  }
  if (secrets === undefined) return Result.succeed(undefined)
  if (!Array.isArray(secrets) || secrets.length === 0) {
    return fail("secrets", "must be a non-empty array of strings or Buffers")
  }
  const all: Array<Uint8Array> = []
  for (const value of secrets) {
    const bytes = check("secrets", value)
    if (!(bytes instanceof Uint8Array)) return bytes
    all.push(bytes)
  }
  return Result.succeed(Redacted.make(all))
}

/**
 * Validates user options: `Success` of the resolved config, or `Failure` of a `ConfigError` whose
 * message names the offending option (an unknown one with the nearest known name).
 */
export const decode = (
  input: unknown,
  accepted: Accepted = { names: optionNames, who: "the adapter" },
): Result.Result<ClusterConfig, ConfigError> => {
  if (input === undefined || input === null) return Result.succeed(resolve({}, undefined))
  if (typeof input !== "object" || Array.isArray(input)) {
    return Result.fail(new ConfigError({ option: "options", message: "options must be an object" }))
  }
  const unknown = unknownOption(input, accepted)
  if (unknown !== undefined) return Result.fail(unknown)
  const secrets = decodeSecrets(input as Record<string, unknown>)
  if (Result.isFailure(secrets)) return Result.fail(secrets.failure)
  return Schema.decodeUnknownResult(OptionsSchema, { errors: "first" })(input).pipe(
    Result.mapError((error) => {
      const issue = formatIssue(error.issue).issues[0]
      const option = String(issue?.path?.[0] ?? "options")
      const message = issue?.message.startsWith(option)
        ? issue.message
        : `${option}: ${issue?.message ?? "invalid value"}`
      return new ConfigError({ option, message: `Invalid option ${message}` })
    }),
    Result.flatMap((options) => {
      const config = resolve(options, secrets.success)
      return Duration.isLessThanOrEqualTo(config.heartbeatTimeout, config.heartbeatInterval)
        ? Result.fail(
            new ConfigError({
              option: "heartbeatTimeout",
              message: "Invalid option heartbeatTimeout: must be greater than heartbeatInterval",
            }),
          )
        : Result.succeed(config)
    }),
  )
}

/** Like {@link decode}, but throws the `ConfigError`; for the facades' constructors. */
export const decodeSync = (input: unknown, accepted?: Accepted): ClusterConfig =>
  Result.getOrThrowWith(decode(input, accepted), (e) => e)

const resolve = (
  o: typeof OptionsSchema.Type,
  secrets: Redacted.Redacted<ReadonlyArray<Uint8Array>> | undefined,
): ClusterConfig => {
  const heartbeatInterval = o.heartbeatInterval ?? defaults.heartbeatInterval
  const heartbeatTimeout =
    o.heartbeatTimeout ?? Math.max(defaults.heartbeatTimeout, 2 * heartbeatInterval)
  return {
    channelPrefix: o.channelPrefix ?? defaults.channelPrefix,
    tableName: o.tableName ?? defaults.tableName,
    payloadThreshold: Math.min(o.payloadThreshold ?? defaults.payloadThreshold, MAX_NOTIFY_BYTES),
    cleanupInterval: Duration.millis(o.cleanupInterval ?? defaults.cleanupInterval),
    heartbeatInterval: Duration.millis(heartbeatInterval),
    heartbeatTimeout: Duration.millis(heartbeatTimeout),
    requestsTimeout: Duration.millis(o.requestsTimeout ?? defaults.requestsTimeout),
    createTable: o.createTable ?? defaults.createTable,
    publishTimeout: Duration.millis(o.publishTimeout ?? defaults.publishTimeout),
    maxPendingPublishes: o.maxPendingPublishes ?? defaults.maxPendingPublishes,
    reconnectMaxDelay: Duration.millis(o.reconnectMaxDelay ?? defaults.reconnectMaxDelay),
    // A silent LISTEN connection is noticed within 3/4 of heartbeatTimeout by default.
    livenessInterval: Duration.millis(
      o.livenessInterval ?? Math.max(1, Math.floor(heartbeatTimeout / 4)),
    ),
    livenessTimeout: Duration.millis(
      o.livenessTimeout ?? Math.max(1, Math.floor(heartbeatTimeout / 2)),
    ),
    recoveryTablePrefix: o.recoveryTablePrefix ?? defaults.recoveryTablePrefix,
    subscriptionMode: o.subscriptionMode ?? defaults.subscriptionMode,
    secrets,
    membership: o.membership ?? defaults.membership,
    roomPlacement: o.roomPlacement ?? defaults.roomPlacement,
  }
}

/** The cluster's keys, when it signs. */
export const keysOf = (config: ClusterConfig): Signing.Keys | undefined =>
  config.secrets === undefined ? undefined : new Signing.Keys(Redacted.value(config.secrets))

/**
 * How old a signed notification may be (and how far in the future, for clock skew): three
 * `heartbeatTimeout`s, and at least a `publishTimeout` (a publish may wait that long) plus one.
 */
export const maxMessageAge = (config: ClusterConfig): number => {
  const heartbeatTimeout = Duration.toMillis(config.heartbeatTimeout)
  return Math.max(3 * heartbeatTimeout, Duration.toMillis(config.publishTimeout) + heartbeatTimeout)
}

/** The cluster configuration service. */
export class AdapterConfig extends Context.Service<AdapterConfig, ClusterConfig>()(
  "socket.io-postgres-effect/AdapterConfig",
) {}

/** An `AdapterConfig` layer from user options (validated; fails with `ConfigError`). */
export const layer = (options?: AdapterOptions): Layer.Layer<AdapterConfig, ConfigError> =>
  Layer.effect(
    AdapterConfig,
    Effect.suspend(() => Effect.fromResult(decode(options ?? {}))),
  )
