/**
 * The cluster's metrics (Effect `Metric`s, exported by whatever metrics layer the app uses).
 *
 * @since 0.1.0
 */
import * as Metric from "effect/Metric"

/** Notifications sent (one per message; several may share a statement). */
export const notificationsSent = Metric.counter("socket_io_postgres_notifications_sent", {
  description: "Notifications published (NOTIFY or pg_notify)",
  incremental: true,
})

/** Statements used to send notifications; `sent / statements` is the batching factor. */
export const notifyStatements = Metric.counter("socket_io_postgres_notify_statements", {
  description: "Statements executed to send notifications (one transaction each)",
  incremental: true,
})

/** Messages sent through the attachments table. */
export const attachmentsWritten = Metric.counter("socket_io_postgres_attachments_written", {
  description: "Messages written to the attachments table",
  incremental: true,
})

/** Notifications received on our channels (own ones included). */
export const notificationsReceived = Metric.counter("socket_io_postgres_notifications_received", {
  description: "Notifications received on the LISTEN connection",
  incremental: true,
})

/** Notifications skipped because they were not a valid cluster message. */
export const malformedNotifications = Metric.counter("socket_io_postgres_malformed_notifications", {
  description: "Notifications that were logged and skipped",
  incremental: true,
})

/**
 * Notifications (or attachment rows) dropped by a signed cluster: unsigned, altered, forged,
 * signed with an unknown key, too old, or replayed.
 */
export const rejectedNotifications = Metric.counter("socket_io_postgres_rejected_notifications", {
  description: "Notifications dropped because they failed authentication or were replayed",
  incremental: true,
})

/** Publishes that failed (database error, timeout, overload). */
export const publishFailures = Metric.counter("socket_io_postgres_publish_failures", {
  description: "Messages that could not be published",
  incremental: true,
})

/** Publishes waiting for PostgreSQL. */
export const pendingPublishes = Metric.gauge("socket_io_postgres_pending_publishes", {
  description: "Messages queued for publishing",
})

/** Times the LISTEN connection was lost. */
export const listenerDrops = Metric.counter("socket_io_postgres_listener_drops", {
  description: "LISTEN connection losses",
  incremental: true,
})

/** Times the LISTEN connection was (re-)established. */
export const listenerConnects = Metric.counter("socket_io_postgres_listener_connects", {
  description: "LISTEN connections established (first one included)",
  incremental: true,
})

/**
 * LISTEN and UNLISTEN statements sent for subscriptions (reconnections' included, liveness pings
 * not): with `subscriptionMode` dynamic, what rooms coming and going cost. By `verb`.
 */
export const listenStatements = Metric.counter("socket_io_postgres_listen_statements", {
  description: "LISTEN / UNLISTEN statements sent by the LISTEN connection",
  incremental: true,
})

/** Broadcast packets stored for connection state recovery. */
export const packetsStored = Metric.counter("socket_io_postgres_packets_stored", {
  description: "Packets written to the recovery packets table",
  incremental: true,
})

/** Sessions restored (connection state recovery). */
export const sessionsRestored = Metric.counter("socket_io_postgres_sessions_restored", {
  description: "Sessions restored from the recovery tables",
  incremental: true,
})

/**
 * Restores that restored nothing (the client got a new socket), by `reason`: `not_found` (no
 * such session, expired, or an offset that is unknown or older than what was kept) or `error`
 * (PostgreSQL failed or did not answer within `requestsTimeout`).
 */
export const restoresFailed = Metric.counter("socket_io_postgres_restores_failed", {
  description: "Session restores that gave the client a new socket",
  incremental: true,
})
