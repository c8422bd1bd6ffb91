/**
 * socket.io-postgres-effect: a Socket.IO cluster adapter over PostgreSQL LISTEN/NOTIFY.
 *
 * @since 0.1.0
 */
export { createAdapter, PostgresAdapter } from "./Adapter.js"
export type { Pools } from "./Placement.js"
export type { AdapterOptions } from "./AdapterConfig.js"
export type { ListenStatus, MembershipStatus } from "./Namespace.js"
export {
  ConfigError,
  DatabaseError,
  ListenError,
  PublishError,
  Reconnected,
  RecoveryError,
  RequestTimeoutError,
} from "./Errors.js"
export { BroadcastOperator, Emitter, RESERVED_EVENTS } from "./Emitter.js"
export type {
  AckValue,
  DefaultEventsMap,
  EmitterOptions,
  EventNamesWithAck,
  EventNames,
  EventParams,
  EventsMap,
} from "./Emitter.js"
export type { SocketDescription } from "./ClusterEmitter.js"
export { setupPrimary } from "./Primary.js"
export type { PrimaryHandle } from "./Primary.js"
