/**
 * The receiving side shared by the adapter and the emitter: a notification payload becomes a
 * cluster message, inline or fetched from the attachments table, delivered in commit order.
 */
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import type { AttachmentStore } from "../AttachmentStore.js"
import * as Codec from "../Codec.js"
import { OrderedDelivery } from "./ordered.js"

/** What an inbox needs. */
export interface InboxOptions {
  readonly store: AttachmentStore["Type"]
  /** Receives each message, in the order PostgreSQL delivered the notifications. */
  readonly deliver: (message: Codec.WireMessage) => void
  /** Told why a notification was skipped (malformed, attachment missing or unreadable). */
  readonly skip: (reason: string) => void
  /**
   * Whether a notification is worth delivering; asked before any attachment is fetched. `requestId`
   * is only given for attachments (inline answers are cheap to check later).
   */
  readonly wanted: (notification: { uid: string; type: number; requestId?: string }) => boolean
}

/** Returns the function to hand each notification payload to. */
export const makeInbox = (options: InboxOptions): ((payload: string) => void) => {
  const inbox = new OrderedDelivery(options.deliver)
  return (payload) => {
    const decoded = Codec.decodeNotification(payload)
    if (Either.isLeft(decoded)) return options.skip(decoded.left)
    const notification = decoded.right
    if (notification._tag === "Inline") {
      const { message } = notification
      // Answers to others are only worth skipping when skipping saves a SELECT.
      return options.wanted({ uid: message.uid, type: message.type })
        ? inbox.push(message)
        : undefined
    }
    if (!options.wanted(notification)) return
    const fill = inbox.reserve()
    const id = notification.attachmentId
    options.store.unsafeFetch(id, (exit) => {
      if (Exit.isFailure(exit)) {
        options.skip(`attachment ${id} could not be read`)
        return fill(undefined)
      }
      if (exit.value === undefined) {
        options.skip(`attachment ${id} not found`)
        return fill(undefined)
      }
      const message = Codec.decodeAttachment(exit.value)
      if (Either.isLeft(message)) {
        options.skip(message.left)
        return fill(undefined)
      }
      // A stored broadcast's offset travels in the header (the row was written before it was known).
      const offset = notification.offset
      fill(offset === undefined ? message.right : { ...message.right, offset })
    })
  }
}
