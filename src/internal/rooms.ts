/**
 * The room channels of one namespace node in the dynamic subscription modes: the server LISTENs on
 * a room's channel while one of its sockets is in the room (from socket.io-adapter's `create-room`
 * to its `delete-room`), through the Listener's per-channel subscriptions (counted per channel,
 * LISTENed again after every reconnection, UNLISTENed when the last subscriber leaves). What
 * arrives there takes the namespace's one inbound path, in the same commit order.
 *
 * Each room's LISTEN holds the server's {@link ListenGate} until it is active: a publish that
 * follows a join goes out once the room is listened on.
 *
 * With rooms placed apart (`placed.ts`), a room whose channel lives on another PostgreSQL server
 * is listened on with that server's Listener (its runtime held while the room is), into the
 * namespace's inbound path through that server's own inbox.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import { hasRoomChannel, roomChannelName } from "../Channel.js"
import type { ClusterConfig } from "../AdapterConfig.js"
import { Listener } from "../Listener.js"
import type { ListenGate } from "./gate.js"
import type { Inbound } from "./inbound.js"
import { type Placed, type PlaceRoom, PlacedListens } from "./placed.js"
import type { Runner } from "./runner.js"

/** What a node's room channels need. */
export interface RoomChannelsOptions {
  readonly nsp: string
  readonly config: ClusterConfig
  readonly runner: Runner
  /** The server's gate: publishes wait while a room's LISTEN is in flight. */
  readonly gate: ListenGate
  /** Where room channels live when not with the namespace (see `placed.ts`). */
  readonly placeRoom?: PlaceRoom | undefined
}

/** What tells a namespace's rooms coming and going: socket.io-adapter's in-memory adapter. */
export interface RoomEvents {
  on(event: "create-room" | "delete-room", listener: (room: any) => void): unknown
}

/** A namespace's room channels in the dynamic subscription modes; none in `"static"`. */
export const roomChannelsOf = (options: RoomChannelsOptions): RoomChannels | undefined => {
  const mode = options.config.subscriptionMode
  return mode === undefined || mode === "static" ? undefined : new RoomChannels(options)
}

interface Entry {
  readonly channel: string
  /** Whether one of the node's sockets is in the room (between `create-room` and `delete-room`). */
  members: boolean
  /** Restores (and the node's private channel) that keep the channel listened on meanwhile. */
  holds: number
  /** The room's subscription lives in it: closing it UNLISTENs (unless another subscriber stays). */
  readonly scope: Scope.Closeable
  /** Ends the room's hold on the gate. */
  readonly release: () => void
  listened: boolean
  /** The other PostgreSQL server that holds the channel, and its runtime (held for the entry). */
  readonly placed?: Placed | undefined
}

/** Started once the node listens: subscribes a room's channel. */
type Subscribe = (entry: Entry) => void

/**
 * The node's extra channels and their subscriptions, keyed by room (or by a symbol for the node's
 * private channel): each listened on from its first reason to its last.
 */
class Subscriptions {
  protected readonly rooms = new Map<unknown, Entry>()
  #subscribe: Subscribe | undefined
  /**
   * Whether a room's LISTEN is worth waiting for: not while the connection is down (nothing is
   * heard then anyway; the reconnection LISTENs again). Before the node runs, it is.
   */
  #waits: () => boolean = () => true
  protected closed = false
  /** The rooms whose channels live on other servers (rooms placed apart). */
  readonly #placed = new PlacedListens()

  constructor(protected readonly options: RoomChannelsOptions) {}

  /** The server's gate, which the node's publishes pass. */
  get gate(): ListenGate {
    return this.options.gate
  }

  /** The room channels listened on now. */
  listened(): Array<string> {
    const channels: Array<string> = []
    for (const [key, entry] of this.rooms) {
      // Not the node's private channel (a symbol's entry).
      if (entry.listened && typeof key !== "symbol") channels.push(entry.channel)
    }
    return channels
  }

  /**
   * Subscribes the rooms' channels, those created so far and later ones, feeding `inbound`, until
   * the scope closes (then every room's subscription ends). `waits` says whether the node's
   * connection is up (or starting).
   */
  start(
    inbound: Inbound,
    waits: () => boolean,
  ): Effect.Effect<void, never, Listener | Scope.Scope> {
    return Effect.gen({ self: this }, function* () {
      this.#waits = waits
      const listener = yield* Listener
      const { runner } = this.options
      this.#subscribe = (entry) => {
        if (entry.placed !== undefined) return this.#placed.subscribe(entry, entry.placed, inbound)
        runner.runFork(
          listener
            .subscribe(entry.channel, {
              onNotification: inbound.roomReceiver(entry.channel),
              onListen: () => {
                entry.listened = true
                entry.release()
              },
              onLost: () => {
                entry.listened = false
                entry.release()
              },
            })
            .pipe(Scope.provide(entry.scope)),
        )
      }
      for (const entry of this.rooms.values()) this.#subscribe(entry)
      yield* Effect.addFinalizer(() =>
        Effect.forEach(
          this.#close(),
          (entry) =>
            entry.placed === undefined
              ? Scope.close(entry.scope, Exit.void)
              : Effect.promise(() => this.#placed.unsubscribe(entry, entry.placed!)),
          { discard: true, concurrency: "unbounded" },
        ).pipe(Effect.andThen(Effect.promise(() => this.#placed.ended()))),
      )
    })
  }

  /** The node closes: no more rooms; holds end at once (subscriptions end with its scope). */
  close(): void {
    for (const entry of this.rooms.values()) entry.release()
    this.closed = true
  }

  protected add(key: unknown, channel: string, members: boolean, placed = false): Entry {
    const server = placed ? this.options.placeRoom?.(channel) : undefined
    // Not worth waiting for while the connection that would LISTEN is down.
    const waits = server === undefined ? this.#waits() : this.#placed.waits(server)
    const entry: Entry = {
      channel,
      members,
      holds: 0,
      scope: Scope.makeUnsafe(),
      release: waits ? this.options.gate.hold() : noop,
      listened: false,
      placed: server && { server, runner: server.acquire() },
    }
    this.rooms.set(key, entry)
    this.#subscribe?.(entry)
    return entry
  }

  protected remove(key: unknown, entry: Entry): void {
    this.rooms.delete(key)
    entry.release()
    entry.listened = false
    if (entry.placed !== undefined) return void this.#placed.unsubscribe(entry, entry.placed)
    // Closing a scope the subscription has not reached yet makes it end as soon as it starts.
    if (this.#subscribe !== undefined)
      this.options.runner.runFork(Scope.close(entry.scope, Exit.void))
  }

  #close(): Array<Entry> {
    this.closed = true
    const entries = [...this.rooms.values()]
    this.rooms.clear()
    for (const entry of entries) entry.release()
    return entries
  }
}

/** The room channels of a namespace node (dynamic subscription modes). */
export class RoomChannels extends Subscriptions {
  /** The node's own channels kept for its lifetime, by name. */
  readonly #kept = new Map<string, Entry>()

  /** Follows the rooms of a namespace's adapter (its `create-room` and `delete-room`). */
  attach(adapter: RoomEvents): void {
    adapter.on("create-room", (room) => this.created(room))
    adapter.on("delete-room", (room) => this.deleted(room))
  }

  /** A room got its first local socket: its channel is listened on, publishes wait until it is. */
  created(room: unknown): void {
    const { config, nsp } = this.options
    if (this.closed || !hasRoomChannel(config.subscriptionMode, room)) return
    const entry = this.rooms.get(room)
    if (entry !== undefined) entry.members = true
    else this.add(room, roomChannelName(config.channelPrefix, nsp, room), true, true)
  }

  /** A room lost its last local socket: its channel is UNLISTENed (unless a restore holds it). */
  deleted(room: unknown): void {
    const entry = this.rooms.get(room)
    if (entry === undefined) return
    entry.members = false
    if (entry.holds === 0) this.remove(room, entry)
  }

  /** Whether this room's channel is listened on now. */
  hears(room: unknown): boolean {
    return this.rooms.get(room)?.listened === true
  }

  /**
   * Listens on a channel of the node's own for as long as the node lives (its private channel,
   * `Channel.privateChannelName`), fed to the same inbound path as its rooms; returns whether it
   * is listened on now.
   */
  keep(channel: string): () => boolean {
    // One LISTEN per channel, however many ask (recovery's fences and the node's answers).
    let entry = this.#kept.get(channel)
    if (entry === undefined) {
      entry = this.add(Symbol(channel), channel, false)
      this.#kept.set(channel, entry)
    }
    entry.holds++
    const kept = entry
    return () => kept.listened
  }

  /**
   * Listens on these rooms' channels before a session restore reads what it missed, until the
   * restored socket joined them: whatever is sent to them after the read is heard. `ready`
   * resolves once the LISTENs hold (or cannot: see {@link ListenGate}); `release` ends the hold.
   */
  hold(rooms: Iterable<unknown>): { readonly ready: Promise<void>; readonly release: () => void } {
    const { config, nsp } = this.options
    const held: Array<unknown> = []
    for (const room of rooms) {
      if (this.closed || !hasRoomChannel(config.subscriptionMode, room)) continue
      const entry =
        this.rooms.get(room) ??
        this.add(room, roomChannelName(config.channelPrefix, nsp, room), false, true)
      entry.holds++
      held.push(room)
    }
    const ready = new Promise<void>((resolve) => this.options.gate.run(resolve))
    let released = false
    const release = () => {
      if (released) return
      released = true
      for (const room of held) {
        const entry = this.rooms.get(room)
        if (entry === undefined || --entry.holds > 0 || entry.members) continue
        this.remove(room, entry)
      }
    }
    return { ready, release }
  }
}

const noop = () => {}
