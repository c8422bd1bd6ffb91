/**
 * socket.io-postgres-effect: a Socket.IO cluster adapter over PostgreSQL LISTEN/NOTIFY.
 *
 * @since 0.1.0
 */
export { createAdapter, PostgresAdapter } from "./Adapter.js"
export type { AdapterOptions } from "./Config.js"
export { ConfigError, DatabaseError, ListenError, PublishError } from "./Errors.js"
