/**
 * Causality across a join, in the dynamic subscription modes: once a server has published anything
 * after one of its sockets joined a room, that room's channel is listened on. So what that publish
 * causes on other servers (a reply to the room included) reaches the joined socket.
 *
 * One gate per server (per `createAdapter` call or adapter factory), shared by its namespaces: a
 * room's LISTEN in flight is a hold, and a publish waits, in the order it was made, until the holds
 * that began before it ended; later holds do not delay it, so a stream of joins never starves
 * publishing. A hold ends when the LISTEN holds, when the connection is lost (nothing is heard then
 * anyway), when the room is left, when its node closes, or after `maxWait` at the latest: a LISTEN
 * that cannot be sent must not stop the server publishing.
 */

interface Hold {
  readonly id: number
  ended: boolean
}

interface Waiter {
  /** The last hold begun before it: it waits for every hold up to this one. */
  readonly upTo: number
  readonly f: () => void
}

/** Publishes of one server wait here while room LISTENs begun before them are in flight. */
export class ListenGate {
  #lastId = 0
  /** Holds in the order they began; ended ones are dropped from the front. */
  #holds: Array<Hold> = []
  #pending = 0
  #waiting: Array<Waiter> = []

  constructor(private readonly maxWait: number) {}

  /** Whether a publish made now would wait. */
  get shut(): boolean {
    return this.#pending > 0 || this.#waiting.length > 0
  }

  /** LISTENs in flight. */
  get holds(): number {
    return this.#pending
  }

  /**
   * A LISTEN begins: publishes made from now on wait until the returned release is called (any
   * number of times; the first counts) or `maxWait` passed.
   */
  hold(): () => void {
    const hold: Hold = { id: ++this.#lastId, ended: false }
    this.#holds.push(hold)
    this.#pending++
    const release = () => {
      if (hold.ended) return
      hold.ended = true
      clearTimeout(timer)
      this.#pending--
      this.#flush()
    }
    const timer = setTimeout(release, this.maxWait)
    // Never what keeps a process alive: every hold is released when its node closes anyway.
    timer.unref?.()
    return release
  }

  /** Runs `f` now if nothing holds it, else once the holds begun before it ended, in call order. */
  run(f: () => void): void {
    if (!this.shut) return f()
    this.#waiting.push({ upTo: this.#lastId, f })
  }

  #flush(): void {
    while (this.#holds.length > 0 && this.#holds[0]!.ended) this.#holds.shift()
    const oldest = this.#holds[0]?.id ?? Infinity
    // Waiters are in call order, so in order of `upTo`: the first that must wait stops the rest.
    let n = 0
    while (n < this.#waiting.length && this.#waiting[n]!.upTo < oldest) n++
    if (n === 0) return
    const ready = this.#waiting.slice(0, n)
    this.#waiting = this.#waiting.slice(n)
    // What a released publish does cannot begin a hold: holds begin only with a socket joining a
    // room, never inside a publish.
    for (const waiter of ready) waiter.f()
  }
}
