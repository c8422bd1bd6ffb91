/**
 * What our nodes tell each other that 0.5.0 nodes do not: a marker in every `HEARTBEAT` and
 * `INITIAL_HEARTBEAT` our nodes send (the field `ours`: the version of our extensions and the id
 * of the server, the process, that sent it). 0.5.0 nodes ignore fields they do not know; a
 * heartbeat without the marker is a node of another kind (0.5.0, a `@socket.io/cluster-adapter`
 * worker behind `setupPrimary`).
 *
 * From the heartbeats it hears, a node knows, per namespace, whether every node seen there is ours
 * ({@link Peers}), and across its namespaces whether every node seen in the cluster is
 * ({@link Capabilities}). Features that need every node to be ours (server-level membership, the
 * packed wire) ask these, and fall back to 0.5.0's wire otherwise. (Answers on the asker's private
 * channel need no such knowledge: the request says it, see `internal/replies.ts`.)
 *
 * @since 0.6.0
 */
import * as Schema from "effect/Schema"

/**
 * The version of our wire extensions this node speaks. 1: server-level membership, packed
 * messages. 2: packed messages may hold deflated JSON (`Codec.encode`).
 */
export const VERSION = 2

/** The marker our nodes add to their heartbeats. */
export const Marker = Schema.Struct({
  /** The version of our wire extensions the sender speaks. */
  v: Schema.Int.check(Schema.isGreaterThanOrEqualTo(1)),
  /** The sender's server id: one per process (adapter runtime), shared by its namespaces. */
  server: Schema.String,
  /**
   * With several PostgreSQL servers: the id of the sender's list of them (`Placement.listId`).
   * Nodes whose lists differ place namespaces differently, and do not hear each other in those
   * that moved.
   */
  list: Schema.optional(Schema.String),
})

/** The marker our nodes add to their heartbeats. */
export type Marker = typeof Marker.Type

/** A fresh server id: 16 hex digits. */
export const makeServerId = (): string => crypto.randomUUID().replaceAll("-", "").slice(0, 16)

/** What a node knows of the other nodes of one namespace, from their heartbeats. */
export class Peers {
  // uid -> the marker of a node of ours, or null for a node of another kind.
  readonly #kinds = new Map<string, Marker | null>()
  #foreign = 0
  // The lowest version of our extensions heard, once asked for, until the nodes change (it is
  // asked on every publish).
  #lowest: number | undefined

  /**
   * @param onForeign told once each time a node of another kind is first heard in the namespace
   *   (again after it was forgotten).
   */
  constructor(private readonly onForeign: (uid: string) => void = () => {}) {}

  /** A heartbeat from `uid`, with its marker or without one. */
  heard(uid: string, marker: Marker | undefined): void {
    const kind = marker ?? null
    const before = this.#kinds.get(uid)
    if (before === null && kind === null) return
    if (before?.v !== kind?.v) this.#lowest = undefined
    this.#kinds.set(uid, kind)
    if (before === null) this.#foreign--
    if (kind === null) {
      this.#foreign++
      this.onForeign(uid)
    }
  }

  /** A node left the namespace (closed, or found down). */
  forget(uid: string): void {
    const before = this.#kinds.get(uid)
    if (before === undefined) return
    this.#kinds.delete(uid)
    this.#lowest = undefined
    if (before === null) this.#foreign--
  }

  /**
   * Whether every node heard in the namespace is ours (true when none was heard), and speaks at
   * least version `atLeast` of our extensions.
   */
  allOurs(atLeast = 1): boolean {
    if (this.#foreign > 0) return false
    if (atLeast <= 1) return true
    if (this.#lowest === undefined) {
      this.#lowest = Infinity
      for (const kind of this.#kinds.values())
        if (kind !== null) this.#lowest = Math.min(this.#lowest, kind.v)
    }
    return this.#lowest >= atLeast
  }

  /** The server of a node of ours; `undefined` for another kind or a node not heard yet. */
  serverOf(uid: string): string | undefined {
    return this.#kinds.get(uid)?.server
  }

  /** The nodes of another kind heard in the namespace and not forgotten. */
  foreign(): ReadonlyArray<string> {
    return [...this.#kinds].filter(([, kind]) => kind === null).map(([uid]) => uid)
  }
}

/** A node of another kind was heard in a namespace. */
export interface ForeignSeen {
  readonly nsp: string
  readonly uid: string
}

/** The peers of every namespace this process tracks: the cluster as this server sees it. */
export class Capabilities {
  readonly #namespaces = new Set<Peers>()
  readonly #listeners = new Set<(event: ForeignSeen) => void>()

  /**
   * The peers of a namespace, counted until `release` is called; `onForeign` is told, besides the
   * listeners of {@link onForeign}, of each node of another kind heard in it.
   */
  register(
    nsp: string,
    onForeign?: (uid: string) => void,
  ): { readonly peers: Peers; readonly release: () => void } {
    const peers = new Peers((uid) => {
      onForeign?.(uid)
      for (const listener of [...this.#listeners]) listener({ nsp, uid })
    })
    this.#namespaces.add(peers)
    return { peers, release: () => void this.#namespaces.delete(peers) }
  }

  /**
   * Whether every node heard in every namespace this process tracks is ours, and speaks at least
   * version `atLeast` of our extensions.
   */
  allOurs(atLeast = 1): boolean {
    for (const peers of this.#namespaces) if (!peers.allOurs(atLeast)) return false
    return true
  }

  /**
   * Calls `listener` each time a node of another kind (0.5.0) is first heard in a namespace;
   * returns the function that stops it.
   */
  onForeign(listener: (event: ForeignSeen) => void): () => void {
    this.#listeners.add(listener)
    return () => void this.#listeners.delete(listener)
  }
}
