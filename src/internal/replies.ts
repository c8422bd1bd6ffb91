/**
 * Per-node response channels: where the answers of a namespace node go.
 *
 * A node of ours that listens on its private channel (`Channel.privateChannelName`) says so in its
 * requests (`reply: 1` on `FETCH_SOCKETS` and `SERVER_SIDE_EMIT` with a `requestId`). A node that
 * gets such a request answers it on that channel, where only the asker hears it, instead of on the
 * namespace's channel, where every node of the namespace reads the answer and drops it (an answer
 * of `fetchSockets` is kilobytes). Requests without the mark (0.5.0 nodes, emitters, a node whose
 * private channel is not listened on right now) are answered on the namespace's channel, which
 * every asker listens on.
 *
 * socket.io-adapter answers with the asker's uid and the response, after the request (at once
 * for `fetchSockets`, when the application acknowledges for `serverSideEmitWithAck`): the marked
 * requests are remembered by their id until answered, or for as long as the asker waits.
 */
import * as Protocol from "../Protocol.js"

const { MessageType } = Protocol

/** The requests a node got that want their answer on the asker's private channel. */
export class Replies {
  // requestId -> when the asker stops waiting (epoch ms); in arrival order.
  readonly #marked = new Map<string, number>()

  /** @param waitMillis how long an asker waits at most (`requestsTimeout`). */
  constructor(private readonly waitMillis: number) {}

  /** A request was delivered to this node: remembered when it is marked. */
  note(message: Protocol.Message, now = Date.now()): void {
    if (message.type !== MessageType.FETCH_SOCKETS && message.type !== MessageType.SERVER_SIDE_EMIT)
      return
    const requestId = message.data.requestId
    if (message.reply !== 1 || requestId === undefined) return
    this.#prune(now)
    this.#marked.set(requestId, now + this.waitMillis)
  }

  /**
   * Whether the answer to `requestId` goes to the asker's private channel; forgotten then (one
   * answer per request and node).
   */
  take(requestId: unknown): boolean {
    return typeof requestId === "string" && this.#marked.delete(requestId)
  }

  /** How many requests are remembered. */
  get size(): number {
    return this.#marked.size
  }

  // Requests never answered (an acknowledgement the application never called) go once their
  // asker gave up: the oldest first, as they came.
  #prune(now: number): void {
    for (const [requestId, until] of this.#marked) {
      if (until > now) return
      this.#marked.delete(requestId)
    }
  }
}
