/**
 * Room channels placed apart from their namespace (several PostgreSQL servers, a dynamic
 * subscription mode, `roomPlacement: "room"`): a room's channel lives on the server its own name
 * picks. A namespace node then publishes a one-room broadcast with that server's Publisher and
 * listens on the room with that server's Listener (see `rooms.ts`), each on that server's
 * runtime, held while the node uses it: a node keeps a LISTEN connection to a server only while
 * it has channels there.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import { AttachmentStore } from "../AttachmentStore.js"
import { Listener } from "../Listener.js"
import { Publisher } from "../Publisher.js"
import type { Inbound } from "./inbound.js"
import { Outbox, type OutboxOptions } from "./outbox.js"
import type { Runner } from "./runner.js"

/** Another PostgreSQL server of the list, as a namespace node uses it for rooms placed there. */
export interface RoomServer {
  /** Its place in the list: what tells two servers apart. */
  readonly index: number
  /** Its runtime, made if need be; each call must be matched by one {@link RoomServer.release}. */
  readonly acquire: () => Runner
  /** One user fewer: after the last one, its runtime (and LISTEN connection) is disposed. */
  readonly release: () => Promise<void>
}

/**
 * The server of a room channel when it is not the namespace's own; `undefined` when it is (or
 * when rooms stay with their namespace).
 */
export type PlaceRoom = (channel: string) => RoomServer | undefined

/**
 * The outboxes of one namespace node: its own (the namespace's server), and one per other server
 * it publishes room broadcasts to. Each keeps its own send order; across servers no order holds
 * (nor could it: two commits on two servers are seen in any order). Another server's outbox holds
 * that server's runtime while it is in use: once it sent nothing for `idleMs` and nothing of it
 * is in flight, it is retired and the runtime let go, so that a node that only publishes to a
 * server keeps no LISTEN connection there from rooms it left long ago.
 */
export class PlacedOutboxes {
  readonly #others = new Map<number, Other>()
  #closed = false

  constructor(
    /** The namespace's own outbox. */
    readonly own: Outbox,
    private readonly options: Omit<OutboxOptions, "runner"> & {
      readonly placeRoom?: PlaceRoom | undefined
      /** How long another server's outbox may stay unused before it is retired. */
      readonly idleMs: number
    },
  ) {}

  /** The outbox for a channel: the room's server's, or the namespace's own. */
  of(channel: string | undefined): Outbox {
    const server =
      channel === undefined || this.#closed ? undefined : this.options.placeRoom?.(channel)
    if (server === undefined) return this.own
    let other = this.#others.get(server.index)
    if (other === undefined) {
      const runner = server.acquire()
      other = { outbox: new Outbox({ ...this.options, runner }), server, used: true }
      runner.runFork(other.outbox.start)
      this.#others.set(server.index, other)
      this.#watch(other)
    }
    other.used = true
    return other.outbox
  }

  // Checks every idleMs whether the outbox was used meanwhile; retires it when not.
  #watch(other: Other): void {
    const timer = setInterval(() => {
      if (other.used || !other.outbox.settled) return void (other.used = false)
      clearInterval(timer)
      if (this.#others.get(other.server.index) === other) this.#others.delete(other.server.index)
      void this.#retire([other])
    }, this.options.idleMs)
    // Never what keeps a process alive: the node's close retires it anyway.
    timer.unref?.()
    other.stop = () => clearInterval(timer)
  }

  async #retire(others: ReadonlyArray<Other>): Promise<void> {
    await Promise.all(others.map(({ outbox }) => outbox.close()))
    await Promise.all(others.map(({ server }) => server.release().catch(() => {})))
  }

  /** Closes every outbox (after what is in flight), then lets go of the other servers. */
  async close(): Promise<void> {
    this.#closed = true
    const others = [...this.#others.values()]
    this.#others.clear()
    for (const other of others) other.stop?.()
    await Promise.all([this.own.close(), this.#retire(others)])
  }
}

/** Another server's outbox, and whether it was used since the last look. */
interface Other {
  readonly outbox: Outbox
  readonly server: RoomServer
  used: boolean
  stop?: () => void
}

/** A room channel on another server: that server, and its runtime held for the room. */
export interface Placed {
  readonly server: RoomServer
  readonly runner: Runner
}

/** What {@link PlacedListens} needs of a room's subscription (see `rooms.ts`). */
export interface PlacedRoom {
  readonly channel: string
  /** The subscription lives in it. */
  readonly scope: Scope.Closeable
  /** Ends the room's hold on the gate. */
  readonly release: () => void
  listened: boolean
}

/** Whether the LISTEN connection of another server is up, as the node's rooms there heard it. */
interface Connection {
  listening: boolean
  once: boolean
}

/** A node's room subscriptions on other servers, and what it heard of their connections. */
export class PlacedListens {
  readonly #connections = new Map<number, Connection>()
  /** Unsubscriptions under way (rooms left): the node's close waits for them. */
  readonly #ending = new Set<Promise<void>>()

  /**
   * Whether a room's LISTEN on `server` is worth waiting for: not while its connection is down
   * (the node's rooms there heard it lost); before anything was heard there, it is.
   */
  waits(server: RoomServer): boolean {
    const connection = this.#connections.get(server.index)
    return connection === undefined || connection.listening || !connection.once
  }

  /** Listens on the room with its server's Listener, into that server's inbox of `inbound`. */
  subscribe(room: PlacedRoom, placed: Placed, inbound: Inbound): void {
    const connection = this.#connectionTo(placed.server)
    const subscribe = Effect.gen(function* () {
      const store = yield* AttachmentStore
      const listener = yield* Listener
      // The node's own notifications there are signed by that server's Publisher.
      const { sender } = yield* Publisher
      yield* listener.subscribe(room.channel, {
        onNotification: inbound.placedReceiver(room.channel, store, sender),
        onListen: () => {
          room.listened = connection.listening = connection.once = true
          room.release()
        },
        onLost: () => {
          room.listened = connection.listening = false
          room.release()
        },
      })
    })
    placed.runner.runFork(subscribe.pipe(Scope.provide(room.scope)))
  }

  /**
   * Ends the room's subscription on its server (a subscription not started yet ends as soon as
   * it starts), then lets go of that server's runtime. Never rejects.
   */
  unsubscribe(room: PlacedRoom, placed: Placed): Promise<void> {
    const ending = placed.runner
      .runPromiseExit(Scope.close(room.scope, Exit.void))
      .then(() => placed.server.release())
      .catch(() => {})
      .finally(() => this.#ending.delete(ending))
    this.#ending.add(ending)
    return ending
  }

  /**
   * Resolves once every unsubscription begun so far ended: a room left just before the node
   * closed must not keep its server's LISTEN connection open past `close()`.
   */
  async ended(): Promise<void> {
    while (this.#ending.size > 0) await Promise.all(this.#ending)
  }

  #connectionTo(server: RoomServer): Connection {
    let connection = this.#connections.get(server.index)
    if (connection === undefined) {
      connection = { listening: false, once: false }
      this.#connections.set(server.index, connection)
    }
    return connection
  }
}
