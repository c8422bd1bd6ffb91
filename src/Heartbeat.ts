/**
 * Cluster membership: who the other nodes of each namespace are, and when one is down.
 *
 * On 0.5.0's wire (socket.io-adapter's `ClusterAdapterWithHeartbeat`), each namespace of each node
 * sends a `HEARTBEAT` on the namespace's channel when it published nothing else for
 * `heartbeatInterval`, and a node unseen for `heartbeatTimeout` is down: the idle cost grows with
 * the number of namespaces.
 *
 * Where every node heard in a namespace is ours (`Capability`: our heartbeats carry a marker with
 * their server's id), the namespace sends no heartbeat of its own: each server sends one
 * `HEARTBEAT` per `heartbeatInterval` on the server-level channel (`serverChannelName`), and a
 * node of ours stays alive as long as its server does. Joins are unchanged (`INITIAL_HEARTBEAT` on
 * the namespace's channel once it listens, answered by every node), and so are departures
 * (`ADAPTER_CLOSE`). As soon as a node without the marker (0.5.0) is heard in a namespace, the
 * namespace heartbeats on its channel again, so that the 0.5.0 node keeps seeing us.
 *
 * @since 0.1.0
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import { AdapterConfig } from "./AdapterConfig.js"
import { AttachmentStore } from "./AttachmentStore.js"
import * as Capability from "./Capability.js"
import { serverChannelName } from "./Channel.js"
import * as Errors from "./Errors.js"
import { makeInbox, makeSkipLogger, verifierOf } from "./internal/inbox.js"
import { Listener } from "./Listener.js"
import * as Protocol from "./Protocol.js"
import { Publisher } from "./Publisher.js"

const { MessageType } = Protocol

/** The members of one namespace's cluster, as seen by this node. */
export interface Membership {
  /**
   * Records a message from another node (never the emitter, never ourselves): the node is alive;
   * a heartbeat also tells whether it is ours (its marker).
   */
  readonly receive: (message: {
    readonly uid: string
    readonly type: number
    readonly ours?: Capability.Marker | undefined
  }) => void
  /** Records that `uid` is alive (any message of it). */
  readonly seen: (uid: string) => void
  /** Removes a node at once (it sent `ADAPTER_CLOSE`). */
  readonly remove: (uid: string) => void
  /** Records that this node published something, which postpones the next heartbeat. */
  readonly published: () => void
  /** The other nodes currently alive. */
  readonly nodes: () => ReadonlyArray<string>
  /**
   * The namespace's channel is listened on again: departures may have been missed, so nodes
   * kept alive by their server's heartbeats must answer this node's `INITIAL_HEARTBEAT` within
   * `heartbeatTimeout`, or they are down.
   */
  readonly resync: () => void
  /**
   * Whether every node heard in the namespace is ours (then it sends no heartbeat of its own), and
   * speaks at least version `atLeast` of our extensions.
   */
  readonly allOurs: (atLeast?: number) => boolean
  /** The nodes of another kind (0.5.0) heard in the namespace and still members. */
  readonly foreign: () => ReadonlyArray<string>
  /** The marker every heartbeat of this node carries. */
  readonly marker: Capability.Marker
}

/** What a tracked namespace provides. */
export interface TrackOptions {
  /** The namespace, for {@link Capability.Capabilities.onForeign}. */
  readonly nsp?: string
  /** Sends one `HEARTBEAT` (with the marker) on the namespace's channel. */
  readonly publishHeartbeat: Effect.Effect<void>
  /** Called once per node that went down (timed out); not for `remove`. */
  readonly onNodeDown: (uid: string) => void
  /** Whether this is a node that heartbeats (`false`: an emitter, which only watches). @default true */
  readonly member?: boolean
  /** Told when a node of another kind (0.5.0) is first heard in the namespace. */
  readonly onForeign?: (uid: string) => void
  /**
   * Told once per node of ours heard in the namespace with another list of PostgreSQL servers
   * than this one's (see `Capability.Marker.list`).
   */
  readonly onOtherServers?: (uid: string) => void
}

/** The server-level channel, as the Heartbeat service uses it. */
export interface ServerChannel {
  /** Hands every message of the channel (ours included) to `onMessage` while the scope lives. */
  readonly subscribe: (
    onMessage: (message: Protocol.Message) => void,
  ) => Effect.Effect<void, never, Scope.Scope>
  /** Sends one message on the channel. */
  readonly publish: (message: Protocol.Message) => Effect.Effect<void, Error>
}

/** A server channel that carries nothing: every server is then unheard of. */
export const noServerChannel: ServerChannel = {
  subscribe: () => Effect.void,
  publish: () => Effect.void,
}

/** The Heartbeat service. */
export class Heartbeat extends Context.Service<
  Heartbeat,
  {
    /** Tracks a namespace's members and sends its heartbeats for the lifetime of the scope. */
    readonly track: (options: TrackOptions) => Effect.Effect<Membership, never, Scope.Scope>
    /** What this process knows of the kinds of nodes in the namespaces it tracks. */
    readonly capabilities: Capability.Capabilities
    /** The marker of this process's heartbeats (its server id). */
    readonly marker: Capability.Marker
  }
>()("socket.io-postgres-effect/Heartbeat") {}

/** How many `heartbeatTimeout`s a node dropped with its server may come back with it. */
const SUSPENDED_FOR = 6

const isHeartbeat = (type: number) =>
  type === MessageType.HEARTBEAT || type === MessageType.INITIAL_HEARTBEAT

/** What the trackers of one process share: the servers heard on the server channel. */
interface Shared {
  /** Server id -> when its last server heartbeat arrived. */
  readonly servers: Map<string, number>
  /**
   * How often a server heartbeat went through after one failed: each time, namespaces that rely
   * on them heartbeat once on their own channel (the others may have dropped them meanwhile).
   */
  recoveries: number
  /** Whether the last server heartbeat failed. */
  failing: boolean
  /** Tracked namespaces that heartbeat (not emitters). */
  members: number
}

/** Builds the Heartbeat service over a server channel. */
export const make = (channel: ServerChannel) =>
  Effect.gen(function* () {
    const config = yield* AdapterConfig
    const interval = Duration.toMillis(config.heartbeatInterval)
    const timeout = Duration.toMillis(config.heartbeatTimeout)
    const checkEvery = Duration.millis(Math.max(1, Math.min(1000, Math.floor(timeout / 4))))
    const auto = config.membership !== "namespace"
    const marker: Capability.Marker = {
      v: Capability.VERSION,
      server: Capability.makeServerId(),
      ...(config.serverList === undefined ? {} : { list: config.serverList }),
    }
    const capabilities = new Capability.Capabilities()
    const shared: Shared = { servers: new Map(), recoveries: 0, failing: false, members: 0 }
    const serverSide = runServerSide({
      channel,
      shared,
      marker,
      auto,
      interval,
      timeout,
      checkEvery,
    })
    const uses = yield* makeRefCounted(serverSide)

    const track = (options: TrackOptions) =>
      Effect.gen(function* () {
        const member = options.member !== false
        const { peers, release } = capabilities.register(options.nsp ?? "", options.onForeign)
        yield* Effect.acquireRelease(
          uses.acquire.pipe(Effect.andThen(Effect.sync(() => member && shared.members++))),
          () =>
            Effect.sync(() => {
              if (member) shared.members--
              release()
            }).pipe(Effect.andThen(uses.release)),
        )
        return yield* trackNamespace({
          options,
          peers,
          shared,
          marker,
          member,
          quiet: () => auto && member && peers.allOurs(),
          interval,
          timeout,
          checkEvery,
        })
      })

    return Heartbeat.of({ track, capabilities, marker })
  })

/** Runs `effect` in a scope of its own while at least one user holds it. */
const makeRefCounted = (effect: Effect.Effect<void, never, Scope.Scope>) =>
  Effect.gen(function* () {
    const parent = yield* Effect.scope
    let users = 0
    let scope: Scope.Closeable | undefined
    return {
      acquire: Effect.suspend(() => {
        if (users++ > 0) return Effect.void
        return Scope.fork(parent, "sequential").pipe(
          Effect.tap((child) => Effect.sync(() => (scope = child))),
          Effect.flatMap((child) => effect.pipe(Scope.provide(child))),
        )
      }),
      release: Effect.suspend(() => {
        if (--users > 0 || scope === undefined) return Effect.void
        const child = scope
        scope = undefined
        return Scope.close(child, Exit.void)
      }),
    }
  })

/**
 * The server side, while a namespace is tracked: listens on the server channel (every server's
 * heartbeats) and, while a namespace of this process heartbeats, sends one per interval.
 */
const runServerSide = (o: {
  readonly channel: ServerChannel
  readonly shared: Shared
  readonly marker: Capability.Marker
  readonly auto: boolean
  readonly interval: number
  readonly timeout: number
  readonly checkEvery: Duration.Duration
}): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function* () {
    const { channel, shared, marker } = o
    const clock = yield* Clock.Clock
    yield* channel.subscribe((message) => {
      if (message.uid === marker.server) return
      if (message.type === MessageType.ADAPTER_CLOSE) return void shared.servers.delete(message.uid)
      const heartbeat =
        message.type === MessageType.HEARTBEAT || message.type === MessageType.INITIAL_HEARTBEAT
      if (heartbeat && message.ours?.server === message.uid) {
        shared.servers.set(message.uid, clock.currentTimeMillisUnsafe())
      }
    })
    const beat = Effect.suspend(() =>
      o.auto && shared.members > 0
        ? channel.publish({ uid: marker.server, type: MessageType.HEARTBEAT, ours: marker }).pipe(
            Effect.tap(() =>
              Effect.sync(() => {
                if (shared.failing) shared.recoveries++
                shared.failing = false
              }),
            ),
          )
        : Effect.void,
    ).pipe(
      // Told like any failed publish; once one goes through, the namespaces make up for it.
      Effect.catch((error) => {
        shared.failing = true
        return Effect.logWarning(`server heartbeat failed: ${error.message}`).pipe(
          Effect.andThen(Errors.report(error)),
        )
      }),
      Effect.catchCause((cause) => Effect.logError("server heartbeat failed", cause)),
      Effect.repeat(Schedule.spaced(Duration.millis(o.interval))),
    )
    const prune = Clock.currentTimeMillis.pipe(
      Effect.map((now) => {
        for (const [server, at] of shared.servers) {
          if (now - at > o.timeout) shared.servers.delete(server)
        }
      }),
      Effect.repeat(Schedule.spaced(o.checkEvery)),
    )
    yield* Effect.all([beat, prune], { concurrency: 2, discard: true }).pipe(
      Effect.annotateLogs({ module: "Heartbeat" }),
      Effect.withTracerEnabled(false),
      Effect.forkScoped,
    )
  })

/** One namespace's members, and its heartbeats while a node of another kind is in it. */
const trackNamespace = (o: {
  readonly options: TrackOptions
  readonly peers: Capability.Peers
  readonly shared: Shared
  readonly marker: Capability.Marker
  readonly member: boolean
  /** Whether the namespace relies on the server heartbeats (sends none of its own). */
  readonly quiet: () => boolean
  readonly interval: number
  readonly timeout: number
  readonly checkEvery: Duration.Duration
}): Effect.Effect<Membership, never, Scope.Scope> =>
  Effect.gen(function* () {
    const { options, peers, shared, interval, timeout } = o
    const clock = yield* Clock.Clock
    const now = () => clock.currentTimeMillisUnsafe()
    const lastSeen = new Map<string, number>()
    let lastPublished = now()
    let resyncAt = 0
    // The server heartbeat recoveries this namespace already made up for.
    let madeUpFor = shared.recoveries
    // Nodes of ours dropped because their server went silent: back if it is heard again.
    const suspended = new Map<string, { readonly server: string; readonly at: number }>()

    // Nodes already told about as having another list of PostgreSQL servers.
    const otherServers = new Set<string>()
    const membership: Membership = {
      receive: (message) => {
        lastSeen.set(message.uid, now())
        if (!isHeartbeat(message.type)) return
        peers.heard(message.uid, message.ours)
        const ours = message.ours
        if (ours !== undefined && ours.list !== o.marker.list && !otherServers.has(message.uid)) {
          otherServers.add(message.uid)
          options.onOtherServers?.(message.uid)
        }
      },
      seen: (uid) => void lastSeen.set(uid, now()),
      remove: (uid) => {
        lastSeen.delete(uid)
        suspended.delete(uid)
        peers.forget(uid)
      },
      published: () => void (lastPublished = now()),
      nodes: () => [...lastSeen.keys()],
      resync: () => void (resyncAt = now()),
      allOurs: (atLeast) => peers.allOurs(atLeast),
      foreign: () => peers.foreign(),
      marker: o.marker,
    }

    // When a node was last known alive: seen itself, or (ours) its server heard. Since a resync,
    // its server vouches for it only once it answered, and until then for `timeout` at most.
    const aliveAt = (uid: string, seenAt: number): number => {
      const server = peers.serverOf(uid)
      if (server === undefined) return seenAt
      const serverAt = shared.servers.get(server) ?? 0
      return Math.max(seenAt, seenAt >= resyncAt ? serverAt : Math.min(serverAt, resyncAt))
    }

    // Sleep until the next heartbeat is due; publishing anything postpones it. Relying on the
    // server heartbeats, the namespace still heartbeats once when they go through again after a
    // failure: the others may have found this server down and forgotten its namespaces meanwhile.
    const heartbeatLoop = Effect.suspend(() => {
      if (o.quiet() && madeUpFor === shared.recoveries) {
        return Effect.sleep(Duration.millis(interval))
      }
      madeUpFor = shared.recoveries
      const wait = lastPublished + interval - now()
      return wait > 0 && !o.quiet()
        ? Effect.sleep(Duration.millis(wait))
        : Effect.sync(membership.published).pipe(Effect.andThen(options.publishHeartbeat))
    }).pipe(Effect.forever)

    // A node whose server was silent for `timeout` is down; if that server is heard again (this
    // process had stalled: its timers ran before the notifications that waited), it is back.
    const expiryCheck = Clock.currentTimeMillis.pipe(
      Effect.map((at) => {
        for (const [uid, seenAt] of lastSeen) {
          if (at - aliveAt(uid, seenAt) > timeout) {
            const server = peers.serverOf(uid)
            membership.remove(uid)
            // Not when its server is heard while it did not answer a resync: it is gone.
            const serverSilent = at - (shared.servers.get(server ?? "") ?? 0) > timeout
            if (server !== undefined && serverSilent) suspended.set(uid, { server, at })
            options.onNodeDown(uid)
          }
        }
        for (const [uid, { server, at: droppedAt }] of suspended) {
          const heardAt = shared.servers.get(server)
          if (heardAt !== undefined && heardAt >= droppedAt) {
            suspended.delete(uid)
            lastSeen.set(uid, heardAt)
            peers.heard(uid, { v: Capability.VERSION, server })
          } else if (at - droppedAt > SUSPENDED_FOR * timeout) suspended.delete(uid)
        }
      }),
      Effect.repeat(Schedule.spaced(o.checkEvery)),
    )

    yield* Effect.all(o.member ? [heartbeatLoop, expiryCheck] : [expiryCheck], {
      concurrency: 2,
      discard: true,
    }).pipe(
      Effect.catchCause((cause) => Effect.logError("heartbeat loop failed", cause)),
      Effect.annotateLogs({ module: "Heartbeat" }),
      Effect.withTracerEnabled(false),
      Effect.forkScoped,
    )
    return membership
  })

/** The server channel over the Listener and the Publisher (signed when the cluster signs). */
export const makeServerChannel: Effect.Effect<
  ServerChannel,
  never,
  AdapterConfig | AttachmentStore | Listener | Publisher
> = Effect.gen(function* () {
  const config = yield* AdapterConfig
  const listener = yield* Listener
  const publisher = yield* Publisher
  const store = yield* AttachmentStore
  const runFork = Effect.runForkWith(yield* Effect.context<never>())
  const name = serverChannelName(config.channelPrefix)
  const warn = (line: string) =>
    void runFork(Effect.logWarning(line).pipe(Effect.annotateLogs({ module: "Heartbeat" })))
  return {
    subscribe: (onMessage) =>
      Effect.suspend(() =>
        listener.subscribe(name, {
          onNotification: makeInbox({
            store,
            verifier: verifierOf(config, name, warn),
            wanted: () => true,
            deliver: onMessage,
            onSkipped: makeSkipLogger(warn),
          }),
          onListen: () => {},
        }),
      ),
    publish: (message) => publisher.publish(name, message),
  }
})

/** The Heartbeat layer over a given server channel; needs `AdapterConfig`. */
export const layerWith = (channel: ServerChannel): Layer.Layer<Heartbeat, never, AdapterConfig> =>
  Layer.effect(Heartbeat, make(channel))

/** The Heartbeat layer, its server channel on the Listener and the Publisher. */
export const layer: Layer.Layer<
  Heartbeat,
  never,
  AdapterConfig | AttachmentStore | Listener | Publisher
> = Layer.effect(Heartbeat, Effect.flatMap(makeServerChannel, make))
