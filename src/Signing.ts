/**
 * Signed notifications (opt-in `secret`): every notification payload and attachment row carries an
 * HMAC-SHA256 (truncated to 128 bits) with the sender's id, a per-sender sequence number and a
 * timestamp; receivers drop what is unauthenticated, altered, too old or seen before.
 *
 * The envelope is text, in front of the JSON of the message (or of the attachment header):
 *
 * `S1:<sender>:<seq base36>:<ms base36>:<mac base64url>:<json>` (`A1:` for an attachment header)
 *
 * The MAC covers the envelope's head, the channel (a notification is not valid on another one) and
 * the JSON, with two numbers PostgreSQL fills in at commit set back to their placeholders: an
 * attachment header's row id, and a stored broadcast's recovery offset. Those two are not signed:
 * changing them means sending the notification again, which the replay window stops. An attachment
 * row starts with `R1` and its own MAC, over its bytes and the head of its notification: a row is
 * valid only for the notification that points at it.
 *
 * A batch: the consecutive notifications of one statement on one channel (at most
 * {@link MAX_BATCH}) share one envelope and one MAC. The first carries
 * `S2:<sender>:<seq>:<ms>:<count base36>:<mac>:<json>`, each of the others `S+:<json>`; the MAC
 * covers the head (count included), the channel and every JSON text in order, each behind its
 * length. A receiver gathers the batch, checks it once, then delivers it all or nothing. That is
 * sound because PostgreSQL writes a transaction's notifications to its queue as one block: writers
 * serialise on a cluster-wide lock taken in `PreCommit_Notify()` and held until after commit
 * (src/backend/commands/async.c: "Serialize writers by acquiring a special lock that we hold till
 * after commit. This ensures that queue entries appear in commit order"; "Because all writers
 * serialize on a cluster-wide heavyweight lock, no backend can insert entries between these two
 * points"), and a listening backend reads the queue in order, forwarding those of its channels.
 * On a channel, nothing comes between a batch's notifications; an attacker's transaction can only
 * come before or after it, so a new start (`S1:`, `A1:`, `S2:`) always discards a batch left
 * unfinished, and a forged `S+:` can only continue a forged batch, or none.
 *
 * @since 0.6.0
 */
import {
  createHmac,
  createSecretKey,
  type KeyObject,
  randomBytes,
  timingSafeEqual,
} from "node:crypto"
import * as Result from "effect/Result"

/** The most bytes an envelope adds in front of a payload. */
export const ENVELOPE_MAX_BYTES = 72

/** The fewest bytes a secret may have. */
export const MIN_SECRET_BYTES = 16

/** The domain of a stored packet's MAC (fields: namespace, rooms, excepts). */
export const PACKET = "P1"

/** The domain of a session's MAC (fields: pid, namespace, sid, rooms). */
export const SESSION = "Q1"

/** How many sequence numbers back a sender's window remembers (4 × 32 bits). */
export const WINDOW = 128

/**
 * The most notifications one batch (one MAC) covers: a receiver holds at most this many payloads
 * (< 8,000 bytes each) per channel while it gathers one.
 */
export const MAX_BATCH = 64

const MAC_BYTES = 16
const MAC_CHARS = 22
const INLINE = "S1:"
const HEADER = "A1:"
const BATCH = "S2:"
const MORE = "S+:"
const ROW = Buffer.from("R1")

// The placeholders PostgreSQL's numbers replace (see internal/statements.ts and Codec.ts).
const ID_MARKER = "9223372036854775807"
const OFFSET_PLACEHOLDER = "9223372036854775806"
const ID_FIELD = `"attachmentId":"`
const OFFSET_FIELD = `"offset":"`

/** What an envelope says about its message. */
export interface Envelope {
  /** The sending publisher: random, one per publisher (so per process or emitter). */
  readonly sender: string
  /** The sender's sequence number, increasing from 1. */
  readonly seq: number
  /** When it was signed, in ms since the epoch (the sender's clock). */
  readonly ts: number
  /** How many notifications it covers: 1, or a batch's count. */
  readonly count: number
  /** `S1:…:`, `A1:…:` or `S2:…:`, what the MACs cover before the channel. */
  readonly head: string
}

/** True when a payload carries a signature envelope, or continues a batch (readable or not). */
export const isSigned = (payload: string): boolean =>
  payload.startsWith(INLINE) ||
  payload.startsWith(MORE) ||
  payload.startsWith(BATCH) ||
  payload.startsWith(HEADER)

/**
 * A text with the numbers PostgreSQL fills in set back to their placeholders: the trailing
 * `"offset":"<digits>"}` of a stored broadcast, and, in an attachment header, the row id.
 */
export const canonical = (text: string, header: boolean): string => {
  let out = text
  if (out.endsWith(`"}`)) {
    const at = out.lastIndexOf(OFFSET_FIELD)
    if (at !== -1 && isDigits(out, at + OFFSET_FIELD.length, out.length - 2)) {
      out = out.slice(0, at + OFFSET_FIELD.length) + OFFSET_PLACEHOLDER + `"}`
    }
  }
  if (header) {
    // JSON escapes quotes inside strings: the first `"attachmentId":"` is the key.
    const at = out.indexOf(ID_FIELD)
    const start = at + ID_FIELD.length
    const end = at === -1 ? -1 : out.indexOf(`"`, start)
    if (end !== -1 && isDigits(out, start, end)) {
      out = out.slice(0, start) + ID_MARKER + out.slice(end)
    }
  }
  return out
}

const isDigits = (s: string, start: number, end: number): boolean => {
  if (end <= start || end - start > 19) return false
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i)
    if (c < 48 || c > 57) return false
  }
  return true
}

/** The cluster's keys: the first signs, any of them verifies (key rotation). */
export class Keys {
  readonly #keys: ReadonlyArray<KeyObject>

  constructor(secrets: ReadonlyArray<Uint8Array>) {
    if (secrets.length === 0) throw new TypeError("at least one secret is needed")
    this.#keys = secrets.map((secret) => createSecretKey(secret))
  }

  /** The signing key. */
  get signing(): KeyObject {
    return this.#keys[0]!
  }

  /** Every key, the signing one first. */
  get all(): ReadonlyArray<KeyObject> {
    return this.#keys
  }

  /** The MAC of a notification, by the signing key. */
  sign(head: string, channel: string, text: string): Buffer {
    return notificationMac(this.#keys[0]!, head, channel, text)
  }

  /** Whether `mac` is the MAC of the notification under one of the keys. */
  verify(mac: Buffer, head: string, channel: string, text: string): boolean {
    return this.#keys.some((key) => timingSafeEqual(mac, notificationMac(key, head, channel, text)))
  }

  /** The MAC of a batch (its texts canonical), by the signing key. */
  signBatch(head: string, channel: string, texts: ReadonlyArray<string>): Buffer {
    return batchMac(this.#keys[0]!, head, channel, texts)
  }

  /** Whether `mac` is the MAC of the batch (its texts canonical) under one of the keys. */
  verifyBatch(mac: Buffer, head: string, channel: string, texts: ReadonlyArray<string>): boolean {
    return this.#keys.some((key) => timingSafeEqual(mac, batchMac(key, head, channel, texts)))
  }

  /** The MAC of an attachment row, by the signing key. */
  signRow(head: string, channel: string, bytes: Uint8Array): Buffer {
    return rowMac(this.#keys[0]!, head, channel, bytes)
  }

  /** Whether `mac` is the MAC of the row under one of the keys. */
  verifyRow(mac: Uint8Array, head: string, channel: string, bytes: Uint8Array): boolean {
    return this.#keys.some((key) => timingSafeEqual(mac, rowMac(key, head, channel, bytes)))
  }

  /** Never the key material. */
  toString(): string {
    return "Keys(<redacted>)"
  }

  toJSON(): string {
    return this.toString()
  }

  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toString()
  }
}

const notificationMac = (key: KeyObject, head: string, channel: string, text: string): Buffer =>
  createHmac("sha256", key)
    .update(head)
    .update(channel)
    .update("\u0000")
    .update(text)
    .digest()
    .subarray(0, MAC_BYTES)

// Each text behind its length: no two batches of texts give the same bytes. One string, one
// update: a call into the binding per text costs more than the concatenation.
const batchMac = (
  key: KeyObject,
  head: string,
  channel: string,
  texts: ReadonlyArray<string>,
): Buffer => {
  let input = `${head}${channel}\u0000`
  for (const text of texts) input += `${text.length}:${text}`
  return createHmac("sha256", key).update(input).digest().subarray(0, MAC_BYTES)
}

const rowMac = (key: KeyObject, head: string, channel: string, bytes: Uint8Array): Buffer =>
  createHmac("sha256", key)
    .update("R1:")
    .update(head)
    .update(channel)
    .update("\u0000")
    .update(bytes)
    .digest()
    .subarray(0, MAC_BYTES)

/** The sending side: one per publisher, with its own random id and sequence. */
export class Signer {
  /** 12 random bytes, base64url: another publisher, or this one restarted, is another sender. */
  readonly sender: string = randomBytes(12).toString("base64url")
  #seq = 0

  constructor(
    readonly keys: Keys,
    private readonly now: () => number = Date.now,
  ) {}

  /** The next envelope head: `S1:` inline, `A1:` for an attachment header, `S2:` for a batch. */
  next(header: boolean, count = 1): Envelope {
    const seq = ++this.#seq
    const ts = this.now()
    const tag = header ? HEADER : count === 1 ? INLINE : BATCH
    const tail = count === 1 ? "" : `${count.toString(36)}:`
    const head = `${tag}${this.sender}:${seq.toString(36)}:${ts.toString(36)}:${tail}`
    return { sender: this.sender, seq, ts, count, head }
  }

  /** Signs an inline payload for `channel`. */
  seal(channel: string, payload: string): string {
    const envelope = this.next(false)
    return seal(this.keys, envelope, channel, payload)
  }

  /**
   * Signs consecutive inline payloads of one statement on `channel` (at most {@link MAX_BATCH})
   * with one MAC: the first gets the envelope, the others `S+:`. One payload is sealed alone.
   */
  sealBatch(channel: string, payloads: ReadonlyArray<string>): Array<string> {
    const count = payloads.length
    if (count === 1) return [this.seal(channel, payloads[0]!)]
    if (count < 1 || count > MAX_BATCH)
      throw new RangeError(`a batch has 1 to ${MAX_BATCH} payloads`)
    const envelope = this.next(false, count)
    const texts = payloads.map((payload) => canonical(payload, false))
    const mac = this.keys.signBatch(envelope.head, channel, texts).toString("base64url")
    const sealed = [`${envelope.head}${mac}:${payloads[0]}`]
    for (let i = 1; i < count; i++) sealed.push(MORE + payloads[i])
    return sealed
  }

  /**
   * Signs an attachment: its header (a function of the row id, as the Codec gives it) and its
   * row bytes, bound together by one envelope.
   */
  sealAttachment(
    channel: string,
    bytes: Uint8Array,
    header: (id: string) => string,
  ): { readonly bytes: Uint8Array; readonly header: (id: string) => string } {
    const envelope = this.next(true)
    const mac = this.keys.sign(envelope.head, channel, canonical(header(ID_MARKER), true))
    const prefix = `${envelope.head}${mac.toString("base64url")}:`
    return {
      bytes: Buffer.concat([ROW, this.keys.signRow(envelope.head, channel, bytes), bytes]),
      header: (id) => prefix + header(id),
    }
  }
}

const seal = (keys: Keys, envelope: Envelope, channel: string, payload: string): string =>
  `${envelope.head}${keys.sign(envelope.head, channel, canonical(payload, false)).toString("base64url")}:${payload}`

/** A verified notification: its envelope, and the text after it. */
export interface Opened {
  readonly envelope: Envelope
  readonly body: string
}

/** A notification's envelope read, its MAC not yet checked. */
export interface Sealed extends Opened {
  readonly mac: Buffer
  /** An attachment header (`A1:`): its row id is not signed. */
  readonly header: boolean
}

const SENDER = /^[A-Za-z0-9_-]{1,32}$/
const BASE36 = /^[0-9a-z]{1,11}$/
const COUNT = /^[0-9a-z]{1,2}$/

/**
 * Reads the envelope of a notification that starts a batch (`S1:`, `A1:`, or `S2:` with its
 * count), without checking its MAC; `Failure` of a reason that never quotes the payload.
 */
export const parse = (payload: string): Result.Result<Sealed, string> => {
  const header = payload.startsWith(HEADER)
  const batch = !header && payload.startsWith(BATCH)
  if (!header && !batch && !payload.startsWith(INLINE)) {
    return Result.fail(payload.startsWith(MORE) ? "continues no batch" : "unsigned notification")
  }
  const a = payload.indexOf(":", 3)
  const b = a === -1 ? -1 : payload.indexOf(":", a + 1)
  const c = b === -1 ? -1 : payload.indexOf(":", b + 1)
  const d = c === -1 || !batch ? c : payload.indexOf(":", c + 1)
  if (d === -1 || payload.charCodeAt(d + 1 + MAC_CHARS) !== 58) {
    return Result.fail("malformed signature envelope")
  }
  const sender = payload.slice(3, a)
  const seq = payload.slice(a + 1, b)
  const ts = payload.slice(b + 1, c)
  const count = batch ? parseInt(payload.slice(c + 1, d), 36) : 1
  if (!SENDER.test(sender) || !BASE36.test(seq) || !BASE36.test(ts)) {
    return Result.fail("malformed signature envelope")
  }
  // One spelling of the count, and a batch of two or more: a receiver never holds more.
  if (batch && (!COUNT.test(payload.slice(c + 1, d)) || count < 2 || count > MAX_BATCH)) {
    return Result.fail("malformed signature envelope")
  }
  const macText = payload.slice(d + 1, d + 1 + MAC_CHARS)
  const mac = Buffer.from(macText, "base64url")
  // The last character holds 4 unused bits: only the canonical text is taken (no two spellings).
  if (mac.length !== MAC_BYTES || mac.toString("base64url") !== macText) {
    return Result.fail("malformed signature envelope")
  }
  return Result.succeed({
    envelope: {
      sender,
      seq: parseInt(seq, 36),
      ts: parseInt(ts, 36),
      count,
      head: payload.slice(0, d + 1),
    },
    body: payload.slice(d + 2 + MAC_CHARS),
    mac,
    header,
  })
}

/**
 * Checks a payload's envelope and MAC, for a notification signed alone (`S1:`, `A1:`), not its
 * freshness (see {@link ReplayGuard}); `Failure` of a reason that never quotes the payload.
 */
export const open = (
  keys: Keys,
  channel: string,
  payload: string,
): Result.Result<Opened, string> => {
  const parsed = parse(payload)
  if (Result.isFailure(parsed)) return parsed
  const { envelope, body, mac, header } = parsed.success
  if (envelope.count !== 1) return Result.fail("starts a batch")
  if (!keys.verify(mac, envelope.head, channel, canonical(body, header))) {
    return Result.fail(BAD_MAC)
  }
  return Result.succeed({ envelope, body })
}

const BAD_MAC = "bad signature (altered, forged, or signed with another key)"

/** Checks an attachment row against the envelope of its notification; gives the bytes after the MAC. */
export const openRow = (
  keys: Keys,
  envelope: Envelope,
  channel: string,
  row: Uint8Array,
): Result.Result<Uint8Array, string> => {
  if (row.length < ROW.length + MAC_BYTES || row[0] !== ROW[0] || row[1] !== ROW[1]) {
    return Result.fail("unsigned attachment")
  }
  const mac = row.subarray(ROW.length, ROW.length + MAC_BYTES)
  const bytes = row.subarray(ROW.length + MAC_BYTES)
  return keys.verifyRow(mac, envelope.head, channel, bytes)
    ? Result.succeed(bytes)
    : Result.fail("bad attachment signature (altered, planted, or signed with another key)")
}

/**
 * One sender's sliding window: the highest sequence number seen and, in a ring of {@link WINDOW}
 * bits, which of the ones below it were seen.
 */
export class Window {
  #max: number
  // Plain numbers (int32 bit sets): a typed array would cost ~200 bytes more per sender.
  readonly #bits: Array<number> = [-1, -1, -1, -1]

  /** Starts at the first number seen: everything below it counts as seen (it predates us). */
  constructor(first: number) {
    this.#max = first
  }

  /** Accepts `seq` once: false when it was seen, or is too far behind to tell. */
  accept(seq: number): boolean {
    if (seq > this.#max) {
      const gap = seq - this.#max
      if (gap >= WINDOW) this.#bits.fill(0)
      else for (let s = this.#max + 1; s < seq; s++) this.#clear(s)
      this.#max = seq
      this.#set(seq)
      return true
    }
    if (this.#max - seq >= WINDOW) return false
    const i = seq % WINDOW
    if ((this.#bits[i >>> 5]! & (1 << (i & 31))) !== 0) return false
    this.#set(seq)
    return true
  }

  #set(seq: number): void {
    const i = seq % WINDOW
    this.#bits[i >>> 5]! |= 1 << (i & 31)
  }

  #clear(seq: number): void {
    const i = seq % WINDOW
    this.#bits[i >>> 5]! &= ~(1 << (i & 31))
  }
}

/**
 * Freshness of verified notifications, for one receiving channel: a timestamp bound (`maxAge` both
 * ways, for clock skew) and a window per sender. A sender's state is dropped once it was silent
 * for twice `maxAge`: anything it sent before that is too old by then anyway. A sender first seen
 * must have signed after this guard started (less `skew`): older notifications could not have
 * reached it, save replayed.
 */
export class ReplayGuard {
  readonly #senders = new Map<string, { window: Window; seen: number }>()
  readonly #startedAt: number
  #swept: number

  constructor(
    private readonly maxAge: number,
    private readonly skew: number,
    private readonly now: () => number = Date.now,
  ) {
    this.#startedAt = now()
    this.#swept = this.#startedAt
  }

  /** How many senders it keeps a window for. */
  get size(): number {
    return this.#senders.size
  }

  /** `undefined` when the notification is fresh (and now seen), else why not. */
  check(envelope: Pick<Envelope, "sender" | "seq" | "ts">): string | undefined {
    const now = this.now()
    if (envelope.ts < now - this.maxAge) return "too old (replayed, or clocks apart)"
    if (envelope.ts > now + this.maxAge) return "signed in the future (clocks apart)"
    if (now - this.#swept >= this.maxAge) this.#sweep(now)
    const known = this.#senders.get(envelope.sender)
    if (known === undefined) {
      if (envelope.ts < this.#startedAt - this.skew) return "signed before this node listened"
      this.#senders.set(envelope.sender, { window: new Window(envelope.seq), seen: now })
      return undefined
    }
    if (!known.window.accept(envelope.seq)) return "replayed"
    known.seen = now
    return undefined
  }

  #sweep(now: number): void {
    this.#swept = now
    for (const [sender, state] of this.#senders) {
      if (now - state.seen > 2 * this.maxAge) this.#senders.delete(sender)
    }
  }
}

/** How far a sender's clock may be behind a receiver's when the receiver first hears of it. */
export const FIRST_CONTACT_SKEW_MS = 2_000

/** Told each notification a verifier lets through, in order, with the envelope that covered it. */
export type Deliver = (body: string, envelope: Envelope, verifier: Verifier) => void

/** A node's own notifications on a channel: never delivered, only told to `seen` when authentic. */
export interface Own {
  /** The node's sender id (its Publisher's). */
  readonly sender: string
  /** When given, each of the node's own notifications whose MAC holds (freshness aside). */
  readonly seen?: ((body: string) => void) | undefined
}

// A batch being gathered: its first notification, and the texts so far (none kept for an own
// batch nobody looks at).
interface Gathering {
  readonly first: Sealed
  readonly own: boolean
  readonly texts: Array<string> | undefined
  got: number
}

/**
 * The receiving side of one channel: MAC first (before any JSON is parsed), then freshness, once
 * per batch. A batch is delivered whole once its last notification came and its MAC held, or not
 * at all. What fails goes to `onRejected` with its reason and how many notifications it drops,
 * never the payload. Holds at most one batch: {@link MAX_BATCH} payloads.
 */
export class Verifier {
  readonly #guard: ReplayGuard
  #batch: Gathering | undefined

  constructor(
    readonly keys: Keys,
    readonly channel: string,
    maxAge: number,
    private readonly onRejected: (reason: string, count?: number) => void,
    now: () => number = Date.now,
    private readonly own?: Own | undefined,
  ) {
    this.#guard = new ReplayGuard(maxAge, FIRST_CONTACT_SKEW_MS, now)
  }

  /** Takes the channel's payloads in arrival order; `deliver` gets what is authentic and fresh. */
  take(payload: string, deliver: Deliver): void {
    if (payload.startsWith(MORE)) return this.#continue(payload, deliver)
    // A transaction's notifications come together: whatever comes next ends a batch left open.
    if (this.#batch !== undefined) this.#cut()
    const parsed = parse(payload)
    if (Result.isFailure(parsed)) return this.onRejected(parsed.failure)
    const first = parsed.success
    const { envelope, body } = first
    const own = this.own !== undefined && envelope.sender === this.own.sender
    if (envelope.count > 1) {
      const texts = own && this.own!.seen === undefined ? undefined : [body]
      this.#batch = { first, own, texts, got: 1 }
      return
    }
    if (own) {
      const { seen } = this.own!
      if (seen !== undefined && this.#authentic(first, [body])) seen(body)
      return
    }
    if (!this.#authentic(first, [body])) return this.onRejected(BAD_MAC)
    const stale = this.#guard.check(envelope)
    if (stale !== undefined) return this.onRejected(stale)
    deliver(body, envelope, this)
  }

  /** The verified, fresh notification signed alone, or `undefined` (rejected and reported). */
  open(payload: string): Opened | undefined {
    let opened: Opened | undefined
    this.take(payload, (body, envelope) => (opened = { body, envelope }))
    return opened
  }

  /** The verified bytes of an attachment row, or `undefined` (rejected and reported). */
  openRow(envelope: Envelope, row: Uint8Array): Uint8Array | undefined {
    const bytes = openRow(this.keys, envelope, this.channel, row)
    if (Result.isFailure(bytes)) return void this.onRejected(bytes.failure)
    return bytes.success
  }

  /** How many notifications the batch being gathered holds (0: none). */
  get gathering(): number {
    return this.#batch?.got ?? 0
  }

  #continue(payload: string, deliver: Deliver): void {
    const batch = this.#batch
    if (batch === undefined) return this.onRejected("continues no batch")
    batch.texts?.push(payload.slice(MORE.length))
    if (++batch.got < batch.first.envelope.count) return
    this.#batch = undefined
    const { first, own, texts } = batch
    if (own) {
      const { seen } = this.own!
      if (seen !== undefined && this.#authentic(first, texts!)) texts!.forEach(seen)
      return
    }
    const count = first.envelope.count
    if (!this.#authentic(first, texts!)) return this.onRejected(BAD_MAC, count)
    const stale = this.#guard.check(first.envelope)
    if (stale !== undefined) return this.onRejected(stale, count)
    for (const text of texts!) deliver(text, first.envelope, this)
  }

  #cut(): void {
    const { first, own, got } = this.#batch!
    this.#batch = undefined
    if (own) return
    this.onRejected(
      `a batch of ${first.envelope.count} ended after ${got} (one lost, or forged)`,
      got,
    )
  }

  #authentic(first: Sealed, texts: ReadonlyArray<string>): boolean {
    const { envelope, mac, header } = first
    if (envelope.count === 1) {
      return this.keys.verify(mac, envelope.head, this.channel, canonical(texts[0]!, header))
    }
    const canonicals = texts.map((text) => canonical(text, false))
    return this.keys.verifyBatch(mac, envelope.head, this.channel, canonicals)
  }
}

/**
 * Signs a row of the recovery tables (a stored packet, a session): its bytes and the columns that
 * travel beside them (`fields`, e.g. namespace and rooms), under `domain`. The row's offset or
 * expiry, set by PostgreSQL, are outside the MAC.
 */
export const sealRecord = (
  keys: Keys,
  domain: string,
  fields: ReadonlyArray<unknown>,
  bytes: Uint8Array,
): Buffer => Buffer.concat([ROW, recordMac(keys.signing, domain, fields, bytes), bytes])

/** The bytes of a signed recovery row, or `undefined` when it is unsigned or does not verify. */
export const openRecord = (
  keys: Keys,
  domain: string,
  fields: ReadonlyArray<unknown>,
  row: Uint8Array,
): Uint8Array | undefined => {
  if (row.length < ROW.length + MAC_BYTES || row[0] !== ROW[0] || row[1] !== ROW[1]) return
  const mac = row.subarray(ROW.length, ROW.length + MAC_BYTES)
  const bytes = row.subarray(ROW.length + MAC_BYTES)
  return keys.all.some((key) => timingSafeEqual(mac, recordMac(key, domain, fields, bytes)))
    ? bytes
    : undefined
}

const recordMac = (
  key: KeyObject,
  domain: string,
  fields: ReadonlyArray<unknown>,
  bytes: Uint8Array,
): Buffer =>
  createHmac("sha256", key)
    .update(`${domain}:`)
    .update(JSON.stringify(fields))
    .update("\u0000")
    .update(bytes)
    .digest()
    .subarray(0, MAC_BYTES)
