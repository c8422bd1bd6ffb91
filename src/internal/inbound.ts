/**
 * What reaches a namespace, in one path: a notification on its channel → own notifications dropped
 * by their prefix, unparsed (here when unsigned; signed, by the channel's verifier, which knows
 * the sender of a batch) → decoded and checked against the protocol, delivered in commit order
 * with attachments fetched ahead (the inbox) → the typed message: heartbeats, departures and
 * answers are the node's; the rest goes to socket.io-adapter, in offset order when connection
 * state recovery is on.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type { ClusterConfig } from "../AdapterConfig.js"
import { privateChannelName } from "../Channel.js"
import { AttachmentStore } from "../AttachmentStore.js"
import type { Membership } from "../Heartbeat.js"
import { Listener } from "../Listener.js"
import * as Metrics from "../Metrics.js"
import type { ListenStatus, Local } from "../Namespace.js"
import * as Protocol from "../Protocol.js"
import { Publisher } from "../Publisher.js"
import type { Requests } from "../Requests.js"
import * as Signing from "../Signing.js"
import { type Header, makeInbox, verifierOf } from "./inbox.js"
import type { NamespaceRecovery } from "./recovering.js"
import type { Replies } from "./replies.js"
import type { RoomChannels } from "./rooms.js"

const { MessageType } = Protocol

/** What the receiving side of a namespace needs. */
export interface InboundOptions {
  readonly nsp: string
  /** The namespace's notification channel. */
  readonly channel: string
  /** This node's uid: its own notifications start with it. */
  readonly uid: string
  readonly store: AttachmentStore["Service"]
  readonly local: Local
  readonly membership: Membership
  readonly requests: Requests
  readonly recovery: NamespaceRecovery | undefined
  /** Publishes the node's heartbeats. */
  readonly publish: (body: Protocol.Body) => void
  /** Told why a notification was skipped. */
  readonly onSkipped: (reason: string) => void
  /** Logs a warning (notifications that fail authentication, rate-limited). */
  readonly warn: (line: string) => void
  readonly config: ClusterConfig
  /** This node's sender id in signature envelopes, when the cluster signs. */
  readonly sender: string | undefined
  /** Whether the node closed: nothing is delivered any more. */
  readonly closed: () => boolean
  /** Told when the channel is listened on, and when that is lost. */
  readonly watch: ListenWatch
  /** The namespace's room channels (dynamic subscription modes): fed into this same path. */
  readonly rooms?: RoomChannels | undefined
  /** The requests delivered here that want their answers on the asker's private channel. */
  readonly replies: Replies
}

/**
 * Listens on the namespace's channel for the lifetime of the scope. Once the LISTEN is active, and
 * again after every re-LISTEN, the node announces itself (`INITIAL_HEARTBEAT`): every node answers,
 * and this one can hear the answers.
 */
export const listen = (
  options: Omit<InboundOptions, "store" | "sender">,
): Effect.Effect<void, never, AttachmentStore | Listener | Publisher | Scope.Scope> =>
  Effect.gen(function* () {
    const { sender } = yield* Publisher
    const inbound = new Inbound({ ...options, sender, store: yield* AttachmentStore })
    const { publish, recovery, watch } = options
    const listener = yield* Listener
    watch.backendPid = listener.unsafeBackendPid
    watch.rooms = options.rooms
    yield* listener.subscribe(options.channel, {
      onNotification: (payload) => inbound.receive(payload),
      onListen: () => {
        options.membership.resync()
        publish({ type: MessageType.INITIAL_HEARTBEAT, ours: options.membership.marker })
        watch.listened()
        recovery?.listening()
      },
      onLost: () => {
        watch.listening = false
        recovery?.lost()
      },
    })
    // The node's private channel, where nodes of ours answer its requests (internal/replies.ts).
    // In the dynamic modes it is one of the node's room-like channels (LISTENed once, recovery
    // keeps it too).
    const own = privateChannelName(options.config.channelPrefix, options.uid)
    if (options.rooms !== undefined) {
      watch.answersHere = options.rooms.keep(own)
      yield* options.rooms.start(inbound, () => watch.waits())
    } else {
      let listening = false
      watch.answersHere = () => listening
      yield* listener.subscribe(own, {
        onNotification: inbound.roomReceiver(own),
        onListen: () => (listening = true),
        onLost: () => (listening = false),
      })
    }
  })

/** Whether a namespace's channel is listened on: `ready` the first time, then as it goes. */
export class ListenWatch {
  /** Resolves once the channel is listened on (first time). */
  readonly ready: Promise<void>
  listening = false
  /** Whether the channel was listened on once. */
  #once = false
  /** The LISTEN connection's backend pid, once the node runs. */
  backendPid: () => number | undefined = () => undefined
  /** The namespace's room channels, once the node runs (dynamic subscription modes). */
  rooms: RoomChannels | undefined
  /** Whether the node's private channel, where its answers may come, is listened on now. */
  answersHere: () => boolean = () => false
  #resolve: () => void = () => {}

  constructor() {
    this.ready = new Promise((resolve) => (this.#resolve = resolve))
  }

  /** The channel is listened on (every time). */
  listened(): void {
    this.listening = true
    this.#once = true
    this.#resolve()
  }

  /**
   * Whether a LISTEN of this node is worth waiting for: the channel is listened on, or has never
   * been yet (starting); not while the connection is down.
   */
  waits(): boolean {
    return this.listening || !this.#once
  }

  /** What the channel's LISTEN is now; nothing once the node closed. */
  status(closed: boolean): ListenStatus {
    const rooms = this.rooms
    if (closed) return { listening: false, backendPid: undefined, privateChannel: false }
    const status = {
      listening: this.listening,
      backendPid: this.backendPid(),
      privateChannel: this.answersHere(),
    }
    return rooms === undefined ? status : { ...status, roomChannels: rooms.listened() }
  }
}

type Inbox = (payload: string, verifier?: Signing.Verifier) => void

/** The receiving side of a namespace node. */
export class Inbound {
  readonly #selfPrefix: string
  readonly #inbox: Inbox
  /**
   * One inbox per other PostgreSQL server holding rooms of the namespace, by that server's
   * attachment store (a new runtime there, a new one): what is per connection stays per server.
   */
  readonly #elsewhere = new WeakMap<object, Inbox>()
  readonly #verifier: Signing.Verifier | undefined
  readonly #own: Signing.Own | undefined

  constructor(private readonly options: InboundOptions) {
    const { recovery, sender } = options
    // Signed, own notifications are known by their sender id (batches included) and skipped by
    // the verifier; anyone can write that id: what moves recovery's offsets must be authentic.
    this.#own =
      sender === undefined
        ? undefined
        : { sender, seen: recovery && ((body: string) => recovery.ownSeen(body)) }
    this.#verifier = verifierOf(options.config, options.channel, options.warn, this.#own)
    // Unsigned, `uid` first on the wire: own notifications, inline or attachment headers, start
    // with this.
    this.#selfPrefix = `{"uid":${JSON.stringify(options.uid)},`
    this.#inbox = makeInbox({
      verifier: this.#verifier,
      store: options.store,
      wanted: (header) => this.#wanted(header),
      deliver: (message) => this.#deliver(message),
      onSkipped: options.onSkipped,
      ...(recovery && { announce: recovery.announce, retract: recovery.retract }),
    })
  }

  /**
   * What arrives on a room channel of the namespace (dynamic subscription modes): the same path,
   * in the same commit order as the namespace's channel; signatures checked for that channel.
   */
  roomReceiver(channel: string): (payload: string) => void {
    const verifier = verifierOf(this.options.config, channel, this.options.warn, this.#own)
    return (payload) => this.receive(payload, verifier)
  }

  /**
   * What arrives on a room channel placed on another PostgreSQL server (`internal/placed.ts`):
   * the same path, but that server's attachments, packed parts and commit order are its own, so
   * it has an inbox of its own (messages of one sender on two servers may cross; per channel,
   * order holds). No recovery there: rooms stay with their namespace when it is on.
   */
  placedReceiver(
    channel: string,
    store: AttachmentStore["Service"],
    sender: string | undefined,
  ): (payload: string) => void {
    // Signed, the node's own notifications there carry that server's Publisher's sender id.
    const own = sender === undefined ? undefined : { sender }
    const verifier = verifierOf(this.options.config, channel, this.options.warn, own)
    let inbox = this.#elsewhere.get(store)
    if (inbox === undefined) {
      inbox = makeInbox({
        store,
        wanted: (header) => this.#wanted(header),
        deliver: (message) => this.#deliver(message),
        onSkipped: this.options.onSkipped,
      })
      this.#elsewhere.set(store, inbox)
    }
    const into = inbox
    return (payload) => this.receive(payload, verifier, into)
  }

  /** A notification on the namespace's channel (or one of its rooms'), in commit order. */
  receive(
    payload: string,
    verifier: Signing.Verifier | undefined = this.#verifier,
    inbox: Inbox = this.#inbox,
  ): void {
    Metrics.notificationsReceived.updateUnsafe(1, Context.empty())
    if (verifier === undefined && payload.startsWith(this.#selfPrefix)) {
      return this.options.recovery?.ownSeen(payload)
    }
    inbox(payload, verifier)
  }

  // Asked before any attachment is fetched: this namespace's, and no answer to another node.
  #wanted(header: Header): boolean {
    return (
      (header.nsp === undefined || header.nsp === this.options.nsp) &&
      this.options.requests.wanted(header.type, header.requestId)
    )
  }

  #deliver(message: Protocol.Message): void {
    const { local, membership, nsp, recovery, requests } = this.options
    if (this.options.closed()) return
    // An attachment's header may have had no nsp.
    if (message.nsp !== undefined && message.nsp !== nsp) return recovery?.drop(message)
    if (message.uid !== Protocol.EMITTER_UID) membership.receive(message)
    switch (message.type) {
      case MessageType.INITIAL_HEARTBEAT:
        return this.options.publish({ type: MessageType.HEARTBEAT, ours: membership.marker })
      case MessageType.HEARTBEAT:
        return
      case MessageType.ADAPTER_CLOSE:
        membership.remove(message.uid)
        return requests.forget(message.uid)
      case MessageType.FETCH_SOCKETS_RESPONSE:
      case MessageType.SERVER_SIDE_EMIT_RESPONSE:
        return requests.answer(message)
    }
    this.options.replies.note(message)
    // Emitters before ours send no nsp: the channel tells the namespace.
    const full = message.nsp === undefined ? { ...message, nsp } : message
    if (recovery !== undefined) return recovery.deliver(full)
    try {
      local.onMessage(full)
    } catch (e) {
      this.options.onSkipped(`message of type ${message.type} failed: ${(e as Error)?.message}`)
    }
  }
}
