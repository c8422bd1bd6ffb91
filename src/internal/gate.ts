/**
 * Causality across a join, in the dynamic subscription modes: once a server has published anything
 * after one of its sockets joined a room, that room's channel is listened on. So what that publish
 * causes on other servers (a reply to the room included) reaches the joined socket.
 *
 * One gate per server (per `createAdapter` call or adapter factory), shared by its namespaces: a
 * room's LISTEN in flight holds it, and every publish that follows waits, in the order it was
 * made, until no LISTEN is in flight. A hold ends when the LISTEN holds, when the connection is
 * lost (nothing is heard then anyway), when the room is left, when its node closes, or after
 * `maxWait` at the latest: a LISTEN that cannot be sent must not stop the server publishing.
 */

/** Publishes of one server wait here while one of its room LISTENs is in flight. */
export class ListenGate {
  #holds = 0
  #waiting: Array<() => void> = []

  constructor(private readonly maxWait: number) {}

  /** Whether publishes wait now. */
  get shut(): boolean {
    return this.#holds > 0
  }

  /** LISTENs in flight. */
  get holds(): number {
    return this.#holds
  }

  /**
   * A LISTEN begins: publishes made from now on wait until the returned release is called (any
   * number of times; the first counts) or `maxWait` passed.
   */
  hold(): () => void {
    this.#holds++
    let held = true
    const release = () => {
      if (!held) return
      held = false
      clearTimeout(timer)
      if (--this.#holds === 0) this.#open()
    }
    const timer = setTimeout(release, this.maxWait)
    // Never what keeps a process alive: every hold is released when its node closes anyway.
    timer.unref?.()
    return release
  }

  /** Runs `f` now if the gate is open, else once it opens, after what waited before it. */
  run(f: () => void): void {
    if (this.#holds === 0 && this.#waiting.length === 0) return f()
    this.#waiting.push(f)
  }

  #open(): void {
    // What a released publish does cannot shut the gate again before the rest went: holds begin
    // only with a socket joining a room, never inside a publish.
    const waiting = this.#waiting
    this.#waiting = []
    for (const f of waiting) f()
  }
}
