/**
 * What one namespace publishes, in the order it was sent, and what is still in flight (the
 * namespace's `close()` waits for it). Failures go to the `report` the node gives; a publish never
 * rejects.
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as References from "effect/References"
import * as Tracer from "effect/Tracer"
import type * as Codec from "../Codec.js"
import type { PublishError } from "../Errors.js"
import { Publisher, type PublishOptions } from "../Publisher.js"
import type { ListenGate } from "./gate.js"
import type { Runner } from "./runner.js"

/** What an outbox needs. */
export interface OutboxOptions {
  /** The namespace's notification channel. */
  readonly channel: string
  readonly runner: Runner
  /** Told of each failed publish. */
  readonly report: (failure: unknown) => void
  /** The server's gate, in the dynamic subscription modes: publishes wait while a room's LISTEN is in flight. */
  readonly gate?: ListenGate | undefined
  /**
   * The version of our wire every node reading the channel speaks now (0 when one is 0.5.0; packed
   * messages from 1, see `Codec.encode`).
   */
  readonly wire?: (() => Codec.Wire) | undefined
}

const publishOn = (channel: string, wire: Codec.WireMessage, options: PublishOptions) =>
  Effect.flatMap(Publisher, (publisher) => publisher.publish(channel, wire, options))

/** A broadcast's span: from `io.emit()` to the commit of its notification. */
const publishBroadcast = Effect.fn("PostgresAdapter.broadcast")(
  (channel: string, wire: Codec.WireMessage, options: PublishOptions) =>
    publishOn(channel, wire, options),
)

/** Publishes one namespace's messages and counts what is in flight. */
export class Outbox {
  /** Set once the runtime is up and nothing traces: publishes skip the fibers. */
  #direct: Publisher["Service"] | undefined
  #pending = 0
  /** Publishes running on fibers: later direct ones must not overtake them. */
  #onFibers = 0
  #drained: (() => void) | undefined
  #closed = false

  constructor(private readonly options: OutboxOptions) {}

  /**
   * The runtime is up. Without a tracer to export spans to, publishes go straight to the
   * Publisher's queue (a fiber per broadcast costs more than its encoding); with one, each
   * broadcast runs in its span.
   */
  readonly start: Effect.Effect<void, never, Publisher> = Effect.gen({ self: this }, function* () {
    const tracer = yield* Effect.tracer
    const tracing = (yield* References.TracerEnabled) && tracer !== Tracer.nativeTracer
    if (!tracing) this.#direct = yield* Publisher
  })

  /** Whether publishes (and the node's requests) run in spans: a tracer wants them, or not started. */
  get traced(): boolean {
    return this.#direct === undefined
  }

  /**
   * Publishes a message, on the namespace's channel unless another is given; resolves once it is
   * settled (failures are reported, never thrown).
   */
  send(
    wire: Codec.WireMessage,
    span: "broadcast" | undefined = undefined,
    channel: string = this.options.channel,
  ): Promise<void> {
    if (this.#closed) return Promise.resolve()
    this.begin()
    const gate = this.options.gate
    if (gate === undefined || !gate.shut) return this.#send(wire, span, channel)
    return new Promise((resolve) => gate.run(() => resolve(this.#send(wire, span, channel))))
  }

  #send(wire: Codec.WireMessage, span: "broadcast" | undefined, channel: string): Promise<void> {
    const direct = this.#direct
    const options: PublishOptions = { wire: this.options.wire?.() }
    if (direct !== undefined && this.#onFibers === 0) {
      return new Promise((resolve) =>
        direct.unsafePublish(
          channel,
          wire,
          (error) => {
            if (error !== undefined) this.options.report(error)
            this.end()
            resolve()
          },
          options,
        ),
      )
    }
    this.#onFibers++
    const publish: Effect.Effect<void, PublishError, Publisher> =
      span === "broadcast"
        ? publishBroadcast(channel, wire, options)
        : publishOn(channel, wire, options)
    return this.options.runner.runPromiseExit(publish).then((exit) => {
      this.#onFibers--
      if (Exit.isFailure(exit) && !Cause.hasInterruptsOnly(exit.cause)) {
        this.options.report(Cause.squash(exit.cause))
      }
      this.end()
    })
  }

  /** Whether nothing is in flight. */
  get settled(): boolean {
    return this.#pending === 0
  }

  /** Something `close()` must wait for begins (a publish, a session write, a catch-up). */
  begin(): void {
    this.#pending++
  }

  /** It ended. */
  end(): void {
    if (--this.#pending === 0) this.#drained?.()
  }

  /** No more publishes; resolves once everything in flight ended. */
  close(): Promise<void> {
    this.#closed = true
    if (this.#pending === 0) return Promise.resolve()
    return new Promise((resolve) => (this.#drained = resolve))
  }
}
