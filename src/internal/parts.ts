/**
 * Joins the parts of packed messages (see `Codec.encode`). One statement sends all the parts of a
 * message, in order, and PostgreSQL delivers a transaction's notifications together: a sender's
 * parts arrive one after the other. Anything else (a part missing, out of order, a new message
 * before the last one ended) drops what was gathered, with a reason.
 */
import * as Result from "effect/Result"
import * as Codec from "../Codec.js"

/** At most this many senders with a message half gathered; the oldest goes first. */
export const MAX_SENDERS = 1024

interface Gathering {
  readonly mid: string
  readonly parts: number
  readonly texts: Array<string>
}

/** The parts being gathered on one channel, one message per sender. */
export class PartsBuffer {
  readonly #senders = new Map<string, Gathering>()

  /** How many senders have a message half gathered. */
  get size(): number {
    return this.#senders.size
  }

  /**
   * Adds a part: the whole base64 text once its last part came, else `undefined`. What it drops
   * goes to `onDropped` with the reason.
   */
  add(part: Codec.Part, onDropped: (reason: string) => void): string | undefined {
    const current = this.#senders.get(part.uid)
    if (current !== undefined && (current.mid !== part.mid || current.parts !== part.parts)) {
      this.#senders.delete(part.uid)
      onDropped(
        `message ${current.mid} of ${part.uid} ended after ${current.texts.length} of ${current.parts} parts`,
      )
    }
    const gathering = this.#senders.get(part.uid)
    if (gathering === undefined) {
      // A message in one part (above a low payloadThreshold): nothing to gather.
      if (part.parts === 1) return part.text
      if (part.part !== 0) {
        onDropped(`part ${part.part} of message ${part.mid} came without the ones before it`)
        return undefined
      }
      if (this.#senders.size >= MAX_SENDERS) {
        const [oldest] = this.#senders.keys()
        this.#senders.delete(oldest!)
        onDropped(`more than ${MAX_SENDERS} senders with a message half gathered`)
      }
      this.#senders.set(part.uid, { mid: part.mid, parts: part.parts, texts: [part.text] })
      return undefined
    }
    if (part.part !== gathering.texts.length) {
      this.#senders.delete(part.uid)
      onDropped(
        `part ${part.part} of message ${part.mid} came after part ${gathering.texts.length - 1}`,
      )
      return undefined
    }
    gathering.texts.push(part.text)
    if (gathering.texts.length < gathering.parts) return undefined
    this.#senders.delete(part.uid)
    return gathering.texts.join("")
  }

  /** Forgets a sender's half-gathered message (it left the cluster). */
  forget(uid: string): void {
    this.#senders.delete(uid)
  }
}

/**
 * The whole message once `part` was the last of its message, else `undefined`; what is dropped or
 * cannot be decoded goes to `onSkipped`.
 */
export const joinPart = (
  buffer: PartsBuffer,
  part: Codec.Part,
  onSkipped: (reason: string) => void,
): Codec.WireMessage | undefined => {
  const text = buffer.add(part, onSkipped)
  if (text === undefined) return undefined
  const unpacked = Codec.unpack(text, part)
  if (Result.isSuccess(unpacked)) return unpacked.success
  onSkipped(unpacked.failure)
  return undefined
}
