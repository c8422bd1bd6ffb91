/**
 * The receiving side shared by the adapter and the emitter: a notification payload becomes a
 * protocol message, inline or fetched from the attachments table, delivered in commit order.
 */
import * as Context from "effect/Context"
import * as Exit from "effect/Exit"
import * as Result from "effect/Result"
import { type ClusterConfig, keysOf, maxMessageAge } from "../AdapterConfig.js"
import type { AttachmentStore } from "../AttachmentStore.js"
import * as Codec from "../Codec.js"
import * as Metrics from "../Metrics.js"
import * as Protocol from "../Protocol.js"
import * as Signing from "../Signing.js"
import { OrderedDelivery } from "./ordered.js"
import { joinPart, PartsBuffer } from "./parts.js"

const { MessageType } = Protocol

/** What a notification says before any attachment is fetched. */
export interface Header {
  readonly uid: string
  readonly type: number
  readonly nsp: string | undefined
  /** The request a response answers (responses only). */
  readonly requestId?: string | undefined
}

/** What an inbox needs. */
export interface InboxOptions {
  readonly store: AttachmentStore["Service"]
  /** Receives each message, in the order PostgreSQL delivered the notifications. */
  readonly deliver: (message: Protocol.Message) => void
  /** Told why a notification was skipped (malformed, attachment missing or unreadable). */
  readonly onSkipped: (reason: string) => void
  /** Whether a notification is worth delivering; asked before any attachment is fetched. */
  readonly wanted: (header: Header) => boolean
  /**
   * Told at arrival of each wanted notification that carries a recovery offset, before any fetch;
   * `retract` when that notification will not be delivered with it after all.
   */
  readonly announce?: (offset: string) => void
  readonly retract?: (offset: string) => void
  /** Set when the cluster signs: checks (and strips) each payload's envelope, and attachment rows. */
  readonly verifier?: Signing.Verifier | undefined
}

/** Why an unsigned node skips a signed notification. */
export const SIGNED_UNREADABLE =
  "a signed notification, and this node has no secret (give it the cluster's secret)"

const headerOf = (message: Protocol.Message): Header => ({
  uid: message.uid,
  type: message.type,
  nsp: message.nsp,
  requestId: Protocol.responseTo(message),
})

/** Told each notification read from a payload, with the envelope that covered it when signed. */
export type Each = (
  notification: Codec.Notification,
  envelope: Signing.Envelope | undefined,
  verifier: Signing.Verifier | undefined,
) => void

/**
 * Returns the function to hand each payload to, in arrival order: `each` gets its notification,
 * its signature envelope checked and stripped when the cluster signs (a batch's notifications
 * all together, once its last one came and it held). What is not to be delivered was counted by
 * the verifier, or told to `onSkipped` (unreadable).
 */
export const makeReader = (
  onSkipped: (reason: string) => void,
  each: Each,
): ((payload: string, verifier: Signing.Verifier | undefined) => void) => {
  // Built once: no closure per notification on the hot path.
  const opened: Signing.Deliver = (body, envelope, verifier) => {
    const decoded = Codec.decodeNotification(body)
    if (Result.isFailure(decoded)) return onSkipped(decoded.failure)
    each(decoded.success, envelope, verifier)
  }
  return (payload, verifier) => {
    if (verifier !== undefined) return verifier.take(payload, opened)
    const decoded = Codec.decodeNotification(payload)
    if (Result.isSuccess(decoded)) return each(decoded.success, undefined, undefined)
    onSkipped(Signing.isSigned(payload) ? SIGNED_UNREADABLE : decoded.failure)
  }
}

/**
 * Returns the function to hand each notification payload to, in the order they arrived. Payloads
 * of several channels may share one inbox (one order): each is checked with its channel's verifier
 * (`options.verifier` unless another is given) when the cluster signs.
 */
export const makeInbox = (
  options: InboxOptions,
): ((payload: string, verifier?: Signing.Verifier) => void) => {
  const inbox = new OrderedDelivery(options.deliver)
  const parts = new PartsBuffer()
  const read = makeReader(options.onSkipped, (notification, envelope, verifier) => {
    let whole: Codec.Notification = notification
    if (notification._tag === "Part") {
      if (!options.wanted(notification)) return
      const message = joinPart(parts, notification, options.onSkipped)
      if (message === undefined) return
      whole = { _tag: "Inline", message }
    }
    if (whole._tag === "Inline") {
      const checked = Protocol.decodeMessage(whole.message)
      if (Result.isFailure(checked)) return options.onSkipped(checked.failure)
      const message = checked.success
      if (!options.wanted(headerOf(message))) return
      if (message.type === MessageType.BROADCAST && message.offset !== undefined) {
        options.announce?.(message.offset)
      }
      return inbox.push(message)
    }
    if (whole._tag !== "Attachment" || !options.wanted(whole)) return
    const offset = whole.offset
    if (offset !== undefined) options.announce?.(offset)
    const skip = (reason: string) => {
      options.onSkipped(reason)
      if (offset !== undefined) options.retract?.(offset)
    }
    const fill = inbox.reserve()
    const id = whole.attachmentId
    options.store.unsafeFetch(id, (exit) => {
      if (Exit.isFailure(exit)) {
        skip(`attachment ${id} could not be read`)
        return fill(undefined)
      }
      if (exit.value === undefined) {
        skip(`attachment ${id} not found`)
        return fill(undefined)
      }
      const bytes = verifier === undefined ? exit.value : verifier.openRow(envelope!, exit.value)
      if (bytes === undefined) {
        // Reported by the verifier.
        if (offset !== undefined) options.retract?.(offset)
        return fill(undefined)
      }
      const message = Result.flatMap(Codec.decodeAttachment(bytes), Protocol.decodeMessage)
      if (Result.isFailure(message)) {
        skip(message.failure)
        return fill(undefined)
      }
      if (offset === undefined) return fill(message.success)
      // Only broadcasts are stored: an offset on anything else is not waited for.
      if (message.success.type !== MessageType.BROADCAST) {
        options.retract?.(offset)
        return fill(message.success)
      }
      // A stored broadcast's offset travels in the header (the row was written before it was known).
      fill({ ...message.success, offset })
    })
  })
  return (payload, verifier = options.verifier) => read(payload, verifier)
}

/**
 * Counts every skipped notification and logs at most one line per second about them, with how
 * many there were: a flood of junk on a channel must not flood the log.
 */
export const makeSkipLogger = (log: (line: string) => void): ((reason: string) => void) => {
  let skipped = 0
  let last = 0
  return (reason) => {
    skipped++
    Metrics.malformedNotifications.updateUnsafe(1, Context.empty())
    const now = Date.now()
    if (now - last >= 1000) {
      log(`skipped ${skipped} malformed notification(s), last: ${reason}`)
      skipped = 0
      last = now
    }
  }
}

/**
 * Counts every notification that failed authentication and logs at most one line per second
 * about them, naming the channel and the last reason, never a payload.
 */
export const makeRejectLogger = (
  log: (line: string) => void,
  channel: string,
): ((reason: string, count?: number) => void) => {
  let rejected = 0
  let last = 0
  return (reason, count = 1) => {
    rejected += count
    Metrics.rejectedNotifications.updateUnsafe(count, Context.empty())
    const now = Date.now()
    if (now - last >= 1000) {
      log(
        `dropped ${rejected} notification(s) on channel ${JSON.stringify(channel)} that failed authentication, last: ${reason}`,
      )
      rejected = 0
      last = now
    }
  }
}

/**
 * The verifier of a channel when the cluster signs, reporting through `log`; `own`: the node's
 * own notifications, which it skips.
 */
export const verifierOf = (
  config: ClusterConfig,
  channel: string,
  log: (line: string) => void,
  own?: Signing.Own,
): Signing.Verifier | undefined => {
  const keys = keysOf(config)
  return keys === undefined
    ? undefined
    : new Signing.Verifier(
        keys,
        channel,
        maxMessageAge(config),
        makeRejectLogger(log, channel),
        Date.now,
        own,
      )
}
