/**
 * Node's cluster mode, as `@socket.io/postgres-adapter` 0.5.0's `setupPrimary`: the primary holds
 * the PostgreSQL connections and relays between its workers, which run `@socket.io/cluster-adapter`,
 * and the rest of the cluster (plain servers, other primaries' workers, emitters).
 *
 * Each worker stays a node of its own: its uid travels in its heartbeats, it answers requests
 * itself. The primary routes what it relays: a response reaches only its requester (by
 * `requesterUid` from a worker, by `requestId` from PostgreSQL), a worker's own messages come back
 * from PostgreSQL and are dropped, and a worker that exits is announced with `ADAPTER_CLOSE` so
 * that every node drops it at once.
 *
 * @since 0.2.0
 */
import cluster from "node:cluster"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberSet from "effect/FiberSet"
import * as Layer from "effect/Layer"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Result from "effect/Result"
import * as Schedule from "effect/Schedule"
import * as AttachmentStore from "./AttachmentStore.js"
import { channelName } from "./Channel.js"
import * as Codec from "./Codec.js"
import * as AdapterConfig from "./AdapterConfig.js"
import * as Database from "./Database.js"
import { ConfigError, ErrorHandler, report } from "./Errors.js"
import * as Listener from "./Listener.js"
import * as Metrics from "./Metrics.js"
import * as Placement from "./Placement.js"
import type { Pools } from "./Placement.js"
import * as Protocol from "./Protocol.js"
import * as Publisher from "./Publisher.js"
import * as Signing from "./Signing.js"
import * as DebugLog from "./internal/debugLog.js"
import { joinPart, PartsBuffer } from "./internal/parts.js"
import { makeReader, verifierOf } from "./internal/inbox.js"
import { checkTable, setUpTables } from "./internal/tableSetup.js"

const { MessageType } = Codec

/** The `source` of `@socket.io/cluster-adapter`'s messages: its workers ignore anything else. */
export const MESSAGE_SOURCE = "_sio_adapter"

/** What a worker transport reports. */
export interface WorkerHandlers {
  /** A message from a worker (anything it sent; the relay keeps the adapter's own). */
  readonly onMessage: (workerId: string, message: unknown) => void
  /** A worker exited or lost its IPC channel; may be called more than once per worker. */
  readonly onGone: (workerId: string) => void
}

/** The workers of a primary: node:cluster's (see {@link nodeCluster}) or any IPC alike. */
export interface Workers {
  /** Hands worker messages and departures to `handlers` until the returned function is called. */
  readonly attach: (handlers: WorkerHandlers) => () => void
  /** Sends a message to one worker; a worker that is gone is skipped. */
  readonly send: (workerId: string, message: object) => void
}

/** What {@link setupPrimary} returns. */
export interface PrimaryHandle {
  /**
   * Stops relaying: announces `ADAPTER_CLOSE` for every worker (they can no longer be reached),
   * waits for in-flight publishes, then releases the LISTEN connection. The pool stays open.
   */
  readonly close: () => Promise<void>
}

/** A message of a `@socket.io/cluster-adapter` worker. */
interface WorkerMessage {
  readonly uid: string
  readonly nsp: string
  readonly type: number
  readonly data?: unknown
  readonly requesterUid?: unknown
  readonly [key: string]: unknown
}

const isRecord = (u: unknown): u is Record<string, unknown> =>
  typeof u === "object" && u !== null && !Array.isArray(u)

const toWorkerMessage = (u: unknown): WorkerMessage | undefined =>
  isRecord(u) &&
  u.source === MESSAGE_SOURCE &&
  typeof u.uid === "string" &&
  typeof u.nsp === "string" &&
  typeof u.type === "number"
    ? (u as WorkerMessage)
    : undefined

const isResponse = (type: number): boolean =>
  type === MessageType.FETCH_SOCKETS_RESPONSE ||
  type === MessageType.SERVER_SIDE_EMIT_RESPONSE ||
  type === MessageType.BROADCAST_CLIENT_COUNT ||
  type === MessageType.BROADCAST_ACK

const requestIdOf = (message: { readonly data?: unknown }): string | undefined => {
  const requestId = isRecord(message.data) ? message.data.requestId : undefined
  return typeof requestId === "string" ? requestId : undefined
}

// socket.io-adapter's workers give up on a request after `flags.timeout`, or 5 s without one.
const DEFAULT_WORKER_TIMEOUT = 5_000

const flagsTimeout = (message: WorkerMessage): number | undefined => {
  const opts = isRecord(message.data) ? message.data.opts : undefined
  const flags = isRecord(opts) ? opts.flags : undefined
  const timeout = isRecord(flags) ? flags.timeout : undefined
  return typeof timeout === "number" ? timeout : undefined
}

/** Where the relay sends what it routes. */
interface RelayOutputs {
  readonly toWorker: (workerId: string, message: object) => void
  readonly toCluster: (nsp: string, message: Codec.WireMessage) => void
  /** A namespace got its first worker: listen on its channel. */
  readonly open: (nsp: string) => void
  /** A namespace lost its last worker: stop listening. */
  readonly close: (nsp: string) => void
}

interface RelayTiming {
  /** How long a local request's answers are routed to its worker, at least. */
  readonly requests: number
  /** How long a gone worker's uid is still recognised as ours (its last notifications). */
  readonly retired: number
}

interface NamespaceState {
  readonly uids: Set<string>
  /** How many live uids each worker has here (one, unless an adapter was re-created). */
  readonly workers: Map<string, number>
  listening: boolean
}

/** A message in the name of a local worker's adapter (announced by the primary). */
const on = (type: number, uid: string, nsp: string): Codec.WireMessage => ({
  uid,
  nsp,
  type,
  source: MESSAGE_SOURCE,
})

/** Which worker owns which uid on which namespace, and which uids were ours. */
class Members {
  readonly owners = new Map<string, { readonly workerId: string; readonly nsp: string }>()
  readonly namespaces = new Map<string, NamespaceState>()
  // Uids of gone workers and closed adapters: their last notifications are still ours.
  readonly #retired = new Map<string, number>()

  constructor(
    private readonly out: Pick<RelayOutputs, "open" | "close">,
    private readonly retention: number,
  ) {}

  isOwn(uid: string): boolean {
    return this.owners.has(uid) || this.#retired.has(uid)
  }

  register(workerId: string, uid: string, nsp: string): NamespaceState {
    let namespace = this.namespaces.get(nsp)
    if (namespace !== undefined && this.owners.has(uid)) return namespace
    if (namespace === undefined) {
      namespace = { uids: new Set(), workers: new Map(), listening: false }
      this.namespaces.set(nsp, namespace)
      this.out.open(nsp)
    }
    this.#retired.delete(uid)
    this.owners.set(uid, { workerId, nsp })
    namespace.uids.add(uid)
    namespace.workers.set(workerId, (namespace.workers.get(workerId) ?? 0) + 1)
    return namespace
  }

  retire(uid: string): void {
    const owner = this.owners.get(uid)
    if (owner === undefined) return
    this.owners.delete(uid)
    this.#retired.set(uid, Date.now() + this.retention)
    const namespace = this.namespaces.get(owner.nsp)
    if (namespace === undefined) return
    namespace.uids.delete(uid)
    const count = (namespace.workers.get(owner.workerId) ?? 1) - 1
    if (count > 0) namespace.workers.set(owner.workerId, count)
    else namespace.workers.delete(owner.workerId)
    if (namespace.uids.size > 0) return
    this.namespaces.delete(owner.nsp)
    this.out.close(owner.nsp)
  }

  sweep(now: number): void {
    for (const [uid, until] of this.#retired) if (until <= now) this.#retired.delete(uid)
  }

  clear(): void {
    this.owners.clear()
    this.namespaces.clear()
  }
}

/**
 * The routing of a primary, without I/O: worker messages to the other workers and to PostgreSQL,
 * notifications to the workers they concern, responses to their requester only.
 */
class Relay {
  readonly #members: Members
  // Requests of local workers: who gets the answers from PostgreSQL, until when.
  readonly #requests = new Map<string, { readonly workerId: string; readonly until: number }>()
  #nextSweep = 0

  constructor(
    private readonly out: RelayOutputs,
    private readonly timing: RelayTiming,
  ) {
    this.#members = new Members(out, timing.retired)
  }

  fromWorker(workerId: string, raw: unknown): void {
    const message = toWorkerMessage(raw)
    if (message === undefined) return
    this.#sweep()
    const { uid, nsp, type } = message
    const namespace = this.#members.register(workerId, uid, nsp)
    if (isResponse(type)) {
      // To its requester only: a worker of ours, else whoever it is, through PostgreSQL.
      const requester = message.requesterUid
      const owner = typeof requester === "string" ? this.#members.owners.get(requester) : undefined
      if (owner !== undefined) this.out.toWorker(owner.workerId, message)
      else this.out.toCluster(nsp, toWire(message))
      return
    }
    const requestId = requestIdOf(message)
    if (requestId !== undefined) {
      const timeout = Math.max(
        flagsTimeout(message) ?? DEFAULT_WORKER_TIMEOUT,
        this.timing.requests,
      )
      this.#requests.set(requestId, { workerId, until: Date.now() + timeout + 1_000 })
    }
    this.#toWorkers(namespace, message, workerId)
    // Announced once the channel is listened on, or the replies would be missed (see `listening`).
    if (type !== MessageType.INITIAL_HEARTBEAT || namespace.listening) {
      this.out.toCluster(nsp, toWire(message))
    }
    if (type === MessageType.ADAPTER_CLOSE) this.#members.retire(uid)
  }

  /** A message from PostgreSQL, in commit order, not ours (see {@link wanted}). */
  fromCluster(nsp: string, message: Codec.WireMessage): void {
    const namespace = this.#members.namespaces.get(nsp)
    if (namespace === undefined || this.#members.isOwn(message.uid)) return
    // Emitters before ours send no nsp: the channel tells it, and workers need it.
    const forWorkers = { ...message, nsp, source: MESSAGE_SOURCE }
    if (!isResponse(message.type)) return this.#toWorkers(namespace, forWorkers, undefined)
    const requestId = requestIdOf(message)
    const request = requestId === undefined ? undefined : this.#requests.get(requestId)
    if (request !== undefined) this.out.toWorker(request.workerId, forWorkers)
  }

  /** Whether a notification is worth delivering: asked before any attachment is fetched. */
  wanted(uid: string, type: number, requestId: string | undefined): boolean {
    if (this.#members.isOwn(uid)) return false
    return !isResponse(type) || requestId === undefined || this.#requests.has(requestId)
  }

  /** The namespace's channel is listened on (first time, or again after a reconnection). */
  listening(nsp: string): void {
    const namespace = this.#members.namespaces.get(nsp)
    if (namespace === undefined) return
    namespace.listening = true
    // Every node replies with a HEARTBEAT: the workers learn the cluster, and it learns them.
    for (const uid of namespace.uids) {
      this.out.toCluster(nsp, on(MessageType.INITIAL_HEARTBEAT, uid, nsp))
    }
  }

  lost(nsp: string): void {
    const namespace = this.#members.namespaces.get(nsp)
    if (namespace !== undefined) namespace.listening = false
  }

  /** A worker is gone: every node drops its uids at once, as if its adapters had closed. */
  workerGone(workerId: string): void {
    for (const [uid, owner] of this.#members.owners) {
      if (owner.workerId !== workerId) continue
      const close = on(MessageType.ADAPTER_CLOSE, uid, owner.nsp)
      const namespace = this.#members.namespaces.get(owner.nsp)
      if (namespace !== undefined) this.#toWorkers(namespace, close, workerId)
      this.out.toCluster(owner.nsp, close)
      this.#members.retire(uid)
    }
    for (const [requestId, request] of this.#requests) {
      if (request.workerId === workerId) this.#requests.delete(requestId)
    }
  }

  /** The relay stops: its workers can no longer be reached by the cluster. */
  closeAll(): void {
    for (const [uid, owner] of this.#members.owners) {
      this.out.toCluster(owner.nsp, on(MessageType.ADAPTER_CLOSE, uid, owner.nsp))
    }
    this.#members.clear()
    this.#requests.clear()
  }

  #toWorkers(namespace: NamespaceState, message: object, except: string | undefined): void {
    for (const workerId of namespace.workers.keys()) {
      if (workerId !== except) this.out.toWorker(workerId, message)
    }
  }

  // Expired entries go at most once a second, on the next worker message: no timer of its own.
  #sweep(): void {
    const now = Date.now()
    if (now < this.#nextSweep) return
    this.#nextSweep = now + 1_000
    for (const [requestId, request] of this.#requests) {
      if (request.until <= now) this.#requests.delete(requestId)
    }
    this.#members.sweep(now)
  }
}

// `uid` first, like the adapter's own messages; `source` and `requesterUid` are kept: 0.5.0's
// primaries hand them to their workers as they are.
const toWire = ({ uid, nsp, type, ...rest }: WorkerMessage): Codec.WireMessage => ({
  uid,
  nsp,
  type,
  ...rest,
})

/**
 * Per namespace, the notifications become messages in commit order: inline ones at once unless
 * an attachment fetched before them is still on its way.
 */
const makeInbox = (options: {
  readonly store: AttachmentStore.AttachmentStore["Service"]
  readonly relay: Relay
  readonly deliver: (message: Codec.WireMessage) => void
  readonly skip: (reason: string) => void
  readonly verifier: Signing.Verifier | undefined
}): ((payload: string) => void) => {
  const { store, relay, deliver, skip, verifier } = options
  const slots: Array<{ done: boolean; message: Codec.WireMessage | undefined }> = []
  const flush = () => {
    while (slots.length > 0 && slots[0]!.done) {
      const message = slots.shift()!.message
      if (message !== undefined) deliver(message)
    }
  }
  const parts = new PartsBuffer()
  const read = makeReader(skip, (decoded, envelope) => {
    let notification = decoded
    if (notification._tag === "Part") {
      if (!relay.wanted(notification.uid, notification.type, notification.requestId)) return
      const message = joinPart(parts, notification, skip)
      if (message === undefined) return
      notification = { _tag: "Inline", message }
    }
    if (notification._tag === "Inline") {
      const { message } = notification
      if (!relay.wanted(message.uid, message.type, requestIdOf(message))) return
      if (slots.length === 0) return deliver(message)
      slots.push({ done: true, message })
      return
    }
    if (!relay.wanted(notification.uid, notification.type, notification.requestId)) return
    const slot: { done: boolean; message: Codec.WireMessage | undefined } = {
      done: false,
      message: undefined,
    }
    slots.push(slot)
    const id = notification.attachmentId
    store.unsafeFetch(id, (exit) => {
      slot.done = true
      if (Exit.isFailure(exit)) skip(`attachment ${id} could not be read`)
      else if (exit.value === undefined) skip(`attachment ${id} not found`)
      else {
        const bytes = verifier === undefined ? exit.value : verifier.openRow(envelope!, exit.value)
        const message = bytes === undefined ? undefined : Codec.decodeAttachment(bytes)
        if (message === undefined) {
          // Reported by the verifier.
        } else if (Result.isFailure(message)) skip(message.failure)
        else slot.message = message.success
      }
      flush()
    })
  })
  return (payload) => read(payload, verifier)
}

// At most one log line per second for skipped notifications, with a count.
const makeSkipLogger = (log: (message: string) => void, context: Context.Context<never>) => {
  let skipped = 0
  let last = 0
  return (reason: string) => {
    skipped++
    Metrics.malformedNotifications.updateUnsafe(1, context)
    const now = Date.now()
    if (now - last < 1000) return
    log(`skipped ${skipped} malformed notification(s), last: ${reason}`)
    skipped = 0
    last = now
  }
}

/**
 * Runs the relay for the lifetime of the scope: worker messages go to the other workers and to
 * PostgreSQL, notifications to the workers they concern. Closing the scope announces every worker's
 * departure and waits (up to `publishTimeout`) for in-flight publishes.
 */
export const make = Effect.fnUntraced(function* (workers: Workers) {
  const config = yield* AdapterConfig.AdapterConfig
  const listener = yield* Listener.Listener
  const publisher = yield* Publisher.Publisher
  const store = yield* AttachmentStore.AttachmentStore
  const context = yield* Effect.context<never>()
  const runFork = Effect.runForkWith(context)
  // One fiber per namespace listened on, interrupted when its last worker leaves (or at close).
  const fork = yield* FiberSet.makeRuntime<never>()
  const subscriptions = new Map<string, Fiber.Fiber<never>>()
  const log = (message: string) =>
    void runFork(Effect.logWarning(message).pipe(Effect.annotateLogs({ module: "Primary" })))
  const skip = makeSkipLogger(log, context)
  const channels = new Map<string, string>()
  let pending = 0
  let drained: (() => void) | undefined

  const relay: Relay = new Relay(
    {
      toWorker: workers.send,
      toCluster: (nsp, message) => {
        pending++
        publisher.unsafePublish(channels.get(nsp) ?? channelOf(nsp), message, (error) => {
          if (error !== undefined) {
            log(error.message)
            runFork(report(error))
          }
          if (--pending === 0) drained?.()
        })
      },
      open: (nsp) => void subscriptions.set(nsp, fork(listen(nsp))),
      close: (nsp) => {
        const fiber = subscriptions.get(nsp)
        subscriptions.delete(nsp)
        channels.delete(nsp)
        if (fiber !== undefined) runFork(Fiber.interrupt(fiber))
      },
    },
    {
      requests: Duration.toMillis(config.requestsTimeout),
      // A gone worker's messages may wait up to publishTimeout for PostgreSQL, then come back.
      retired:
        Duration.toMillis(config.publishTimeout) + Duration.toMillis(config.heartbeatTimeout),
    },
  )

  const channelOf = (nsp: string) => {
    const channel = channelName(config.channelPrefix, nsp)
    channels.set(nsp, channel)
    return channel
  }

  const listen = (nsp: string) => {
    const inbox = makeInbox({
      store,
      relay,
      skip,
      verifier: verifierOf(config, channelOf(nsp), log),
      deliver: (message) => {
        if (message.nsp !== undefined && message.nsp !== nsp) return
        const decoded = Protocol.decodeMessage(message)
        // A worker would throw on it inside its IPC handler.
        if (Result.isFailure(decoded)) return skip(decoded.failure)
        relay.fromCluster(nsp, message)
      },
    })
    return listener
      .subscribe(channelOf(nsp), {
        onNotification: (payload) => {
          Metrics.notificationsReceived.updateUnsafe(1, context)
          inbox(payload)
        },
        onListen: () => relay.listening(nsp),
        onLost: () => relay.lost(nsp),
      })
      .pipe(Effect.andThen(Effect.never), Effect.scoped)
  }

  const detach = workers.attach({
    onMessage: (workerId, message) => relay.fromWorker(workerId, message),
    onGone: (workerId) => relay.workerGone(workerId),
  })
  yield* Effect.addFinalizer(() =>
    Effect.suspend(() => {
      detach()
      relay.closeAll()
      if (pending === 0) return Effect.void
      return Effect.callback<void>((resume) => {
        drained = () => resume(Effect.void)
      }).pipe(Effect.timeout(config.publishTimeout), Effect.ignore)
    }),
  )
  yield* housekeeping
})

/** The attachments table: created when `createTable` is on, its old rows deleted on schedule. */
const housekeeping = Effect.gen(function* () {
  const config = yield* AdapterConfig.AdapterConfig
  const store = yield* AttachmentStore.AttachmentStore
  yield* config.createTable
    ? setUpTables("the attachments table", store.ensureTable)
    : checkTable(`the attachments table ${config.tableName}`, store.tableExists)
  yield* store.deleteOlderThan(config.cleanupInterval).pipe(
    Effect.catchCause((cause) => Effect.logWarning("cleanup failed", cause)),
    Effect.repeat(Schedule.spaced(config.cleanupInterval)),
    Effect.delay(config.cleanupInterval),
    Effect.withTracerEnabled(false),
    Effect.forkScoped,
  )
}).pipe(Effect.annotateLogs({ module: "Primary" }))

/** The relay as a layer, over the cluster's services; the workers are node:cluster's by default. */
export const layer = (
  workers?: Workers,
): Layer.Layer<
  never,
  never,
  | AdapterConfig.AdapterConfig
  | Listener.Listener
  | Publisher.Publisher
  | AttachmentStore.AttachmentStore
> => Layer.effectDiscard(Effect.suspend(() => make(workers ?? nodeCluster())))

const ignoreError = () => {}

/**
 * The workers of node:cluster. It listens at once: messages of workers forked before the relay
 * is attached are kept for it. `close()` stops listening.
 */
export const nodeCluster = (): Workers & { readonly close: () => void } => {
  let handlers: WorkerHandlers | undefined
  let early: Array<(handlers: WorkerHandlers) => void> = []
  const onMessage = (worker: { id: number }, message: unknown) => {
    // Only the adapter's messages are kept: the app may use the IPC channel for its own.
    if (!isRecord(message) || message.source !== MESSAGE_SOURCE) return
    const id = String(worker.id)
    if (handlers !== undefined) handlers.onMessage(id, message)
    else early.push((h) => h.onMessage(id, message))
  }
  const onGone = (worker: { id: number }) => {
    const id = String(worker.id)
    if (handlers !== undefined) handlers.onGone(id)
    else early.push((h) => h.onGone(id))
  }
  cluster.on("message", onMessage)
  cluster.on("disconnect", onGone)
  cluster.on("exit", onGone)
  const close = () => {
    handlers = undefined
    early = []
    cluster.off("message", onMessage)
    cluster.off("disconnect", onGone)
    cluster.off("exit", onGone)
  }
  return {
    attach: (attached) => {
      handlers = attached
      const backlog = early
      early = []
      for (const deliver of backlog) deliver(attached)
      return close
    },
    send: (workerId, message) => {
      const worker = cluster.workers?.[workerId]
      if (worker === undefined || !worker.isConnected()) return
      worker.send(message as never, ignoreError)
    },
    close,
  }
}

/**
 * The workers of one primary split between the relays of several PostgreSQL servers: each relay
 * gets the messages of the namespaces that `serverOf` places on its server, every relay gets every
 * departure. What arrives for a relay not attached yet waits for it; once it detached, nothing.
 */
export const splitWorkers = (
  workers: Workers,
  count: number,
  serverOf: (nsp: string) => number,
): ReadonlyArray<Workers> => {
  const slots: Array<WorkerHandlers | "closed" | Array<(handlers: WorkerHandlers) => void>> =
    Array.from({ length: count }, () => [])
  let detach: (() => void) | undefined
  let attached = 0
  const deliver = (i: number, call: (handlers: WorkerHandlers) => void) => {
    const slot = slots[i]!
    if (Array.isArray(slot)) slot.push(call)
    else if (slot !== "closed") call(slot)
  }
  const handlers: WorkerHandlers = {
    onMessage: (workerId, message) => {
      const nsp = isRecord(message) ? message.nsp : undefined
      if (typeof nsp === "string") deliver(serverOf(nsp), (h) => h.onMessage(workerId, message))
    },
    onGone: (workerId) => {
      for (let i = 0; i < count; i++) deliver(i, (h) => h.onGone(workerId))
    },
  }
  return slots.map((_, i) => ({
    attach: (relay) => {
      const backlog = slots[i]!
      slots[i] = relay
      attached++
      if (Array.isArray(backlog)) for (const call of backlog) call(relay)
      detach ??= workers.attach(handlers)
      return () => {
        if (slots[i] !== relay) return
        slots[i] = "closed"
        if (--attached > 0) return
        detach?.()
        detach = undefined
      }
    },
    send: workers.send,
  }))
}

/**
 * Sets up the primary of a node:cluster app whose workers use `@socket.io/cluster-adapter`'s
 * `createAdapter()`: the primary relays between them and the PostgreSQL cluster. Same options as
 * `createAdapter` (validated: a bad one throws an error that names it). Call it before forking.
 * The pool is never ended by us. Given the pools of several PostgreSQL servers (the list every
 * node has), each namespace is relayed through the server that holds its channel, as
 * `createAdapter(pools)` places it: one relay, and one LISTEN connection, per server.
 */
export function setupPrimary(pools: Pools, options?: AdapterConfig.AdapterOptions): PrimaryHandle {
  const servers = Placement.decodePoolsSync(pools, "setupPrimary(pool, options)")
  const config = AdapterConfig.decodeSync(options)
  // The primary relays namespace channels; it cannot know its workers' rooms to listen on theirs.
  if ((config.subscriptionMode ?? "static") !== "static") {
    throw new ConfigError({
      option: "subscriptionMode",
      message: `Invalid option subscriptionMode: setupPrimary relays namespace channels only (use "static")`,
    })
  }
  if (!cluster.isPrimary) {
    throw new Error(
      "setupPrimary(pool, options) runs in the primary process (cluster.isPrimary is false); " +
        "workers use createAdapter() from @socket.io/cluster-adapter",
    )
  }
  const workers = nodeCluster()
  // With several PostgreSQL servers, one relay per server, each for the namespaces placed on it
  // (as `createAdapter(pools)` places them).
  const placement = Placement.make(servers.map((server) => server.name))
  const parts =
    servers.length === 1
      ? [workers]
      : splitWorkers(workers, servers.length, (nsp) =>
          placement.indexOf(channelName(config.channelPrefix, nsp)),
        )
  const errorHandler = options?.errorHandler ?? DebugLog.makeDefaultErrorHandler()
  const services = Layer.mergeAll(
    Publisher.layer.pipe(Layer.provideMerge(Listener.layer)),
    AttachmentStore.layer,
  )
  const runtimes = servers.map(({ pool }, i) => {
    const base = Layer.mergeAll(
      Layer.succeed(AdapterConfig.AdapterConfig, config),
      Database.layerPool(pool),
      Layer.succeed(ErrorHandler, errorHandler),
      DebugLog.layer,
    )
    return ManagedRuntime.make(
      Layer.effectDiscard(make(parts[i]!)).pipe(Layer.provide(services), Layer.provide(base)),
    )
  })
  // Built now, in the background: worker messages wait in `workers` meanwhile.
  for (const runtime of runtimes) runtime.context().catch(ignoreError)
  let closing: Promise<void> | undefined
  return {
    close: () =>
      (closing ??= Promise.all(runtimes.map((runtime) => runtime.dispose()))
        .then(() => undefined)
        .finally(workers.close)),
  }
}
