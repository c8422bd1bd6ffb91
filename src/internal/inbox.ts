/**
 * The receiving side shared by the adapter and the emitter: a notification payload becomes a
 * cluster message, inline or fetched from the attachments table, delivered in commit order.
 */
import * as Exit from "effect/Exit"
import * as Result from "effect/Result"
import type { AttachmentStore } from "../AttachmentStore.js"
import * as Codec from "../Codec.js"
import { OrderedDelivery } from "./ordered.js"

/** What an inbox needs. */
export interface InboxOptions {
  readonly store: AttachmentStore["Service"]
  /** Receives each message, in the order PostgreSQL delivered the notifications. */
  readonly deliver: (message: Codec.WireMessage) => void
  /** Told why a notification was skipped (malformed, attachment missing or unreadable). */
  readonly onSkipped: (reason: string) => void
  /**
   * Whether a notification is worth delivering; asked before any attachment is fetched. `requestId`
   * is only given for attachments (inline answers are cheap to check later).
   */
  readonly wanted: (notification: { uid: string; type: number; requestId?: string }) => boolean
  /**
   * Told at arrival of each wanted notification that carries a recovery offset, before any fetch;
   * `retract` when that notification will not be delivered after all.
   */
  readonly announce?: (offset: string) => void
  readonly retract?: (offset: string) => void
}

/** Returns the function to hand each notification payload to. */
export const makeInbox = (options: InboxOptions): ((payload: string) => void) => {
  const inbox = new OrderedDelivery(options.deliver)
  return (payload) => {
    const decoded = Codec.decodeNotification(payload)
    if (Result.isFailure(decoded)) return options.onSkipped(decoded.failure)
    const notification = decoded.success
    if (notification._tag === "Inline") {
      const { message } = notification
      // Answers to others are only worth skipping when skipping saves a SELECT.
      if (!options.wanted({ uid: message.uid, type: message.type })) return
      if (options.announce !== undefined && Codec.isOffset(message.offset)) {
        options.announce(message.offset)
      }
      return inbox.push(message)
    }
    if (!options.wanted(notification)) return
    const offset = notification.offset
    if (offset !== undefined) options.announce?.(offset)
    const skip = (reason: string) => {
      options.onSkipped(reason)
      if (offset !== undefined) options.retract?.(offset)
    }
    const fill = inbox.reserve()
    const id = notification.attachmentId
    options.store.unsafeFetch(id, (exit) => {
      if (Exit.isFailure(exit)) {
        skip(`attachment ${id} could not be read`)
        return fill(undefined)
      }
      if (exit.value === undefined) {
        skip(`attachment ${id} not found`)
        return fill(undefined)
      }
      const message = Codec.decodeAttachment(exit.value)
      if (Result.isFailure(message)) {
        skip(message.failure)
        return fill(undefined)
      }
      // A stored broadcast's offset travels in the header (the row was written before it was known).
      fill(offset === undefined ? message.success : { ...message.success, offset })
    })
  }
}
