/**
 * Harness for real Socket.IO servers and clients over loopback, and condition waits that clear every
 * timer they create (so a test file's process can exit by itself). Clusters of them are built by
 * `nodes.ts`. Imports nothing of vitest: child-process fixtures use it too.
 */
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import { inspect } from "node:util"
import { Server, type ServerOptions } from "socket.io"
import {
  io as ioClient,
  type ManagerOptions,
  type Socket as ClientSocket,
  type SocketOptions,
} from "socket.io-client"

/** What `new Server(…, { adapter })` accepts: an Adapter class or `(nsp) => adapter`. */
export type AdapterConstructor = ServerOptions["adapter"]

/** A listening Socket.IO server. */
export interface TestServer {
  readonly io: Server
  readonly port: number
  /** `http://127.0.0.1:<port>` */
  readonly url: string
  /** Closes the Socket.IO server, its adapters and the HTTP server. Idempotent. */
  readonly close: () => Promise<void>
}

/** Starts a Socket.IO server with `adapter` on a free port of 127.0.0.1. */
export const startServer = async (options: {
  readonly adapter: AdapterConstructor
  readonly serverOptions?: Partial<ServerOptions>
}): Promise<TestServer> => {
  const httpServer = http.createServer()
  const io = new Server(httpServer, { ...options.serverOptions, adapter: options.adapter })
  await new Promise<void>((resolve, reject) => {
    httpServer.once("error", reject)
    httpServer.listen(0, "127.0.0.1", () => {
      httpServer.off("error", reject)
      resolve()
    })
  })
  const port = (httpServer.address() as AddressInfo).port
  let closing: Promise<void> | undefined
  return {
    io,
    port,
    url: `http://127.0.0.1:${port}`,
    close: () => (closing ??= io.close()),
  }
}

/** Options of {@link connectClient}. */
export interface ClientOptions {
  /** Namespace to connect to. Default `/`. */
  readonly nsp?: string
  readonly auth?: Record<string, unknown>
  readonly query?: Record<string, string>
  /** Any other socket.io-client option, e.g. `{ reconnection: true }`. */
  readonly options?: Partial<ManagerOptions & SocketOptions>
  /** How long to wait for `connect`. Default 5000 ms. */
  readonly timeoutMs?: number
}

/**
 * Connects a websocket-only client (its own Manager) and resolves once connected. Reconnection is
 * off by default: a server closed by a test would otherwise be retried forever. The server-side
 * socket is `io.of(nsp).sockets.get(client.id)`.
 */
export const connectClient = (url: string, options: ClientOptions = {}): Promise<ClientSocket> => {
  const { nsp = "/", auth, query, timeoutMs = 5000 } = options
  const socket = ioClient(`${url}${nsp}`, {
    transports: ["websocket"],
    forceNew: true,
    reconnection: false,
    ...(auth !== undefined ? { auth } : {}),
    ...(query !== undefined ? { query } : {}),
    ...options.options,
  })
  return new Promise((resolve, reject) => {
    const done = (error?: Error) => {
      clearTimeout(timer)
      socket.off("connect", onConnect)
      socket.off("connect_error", onError)
      if (error === undefined) return resolve(socket)
      socket.disconnect()
      reject(error)
    }
    const onConnect = () => done()
    const onError = (error: Error) =>
      done(
        new Error(`client could not connect to ${url}${nsp}: ${error.message}`, { cause: error }),
      )
    const timer = setTimeout(
      () => done(new Error(`client did not connect to ${url}${nsp} within ${timeoutMs} ms`)),
      timeoutMs,
    )
    socket.on("connect", onConnect)
    socket.on("connect_error", onError)
  })
}

/** Anything with `on`/`off`: Node emitters, Socket.IO sockets, servers and namespaces. */
export interface Emitter {
  on(event: string, listener: (...args: any[]) => void): unknown
  off(event: string, listener: (...args: any[]) => void): unknown
}

/** Resolves with the arguments of the first `event`; rejects after `timeoutMs`. */
export const waitFor = (emitter: Emitter, event: string, timeoutMs = 5000): Promise<unknown[]> =>
  collect(emitter, event, 1, timeoutMs).then(
    (all) => all[0]!,
    () => Promise.reject(new Error(`no "${event}" event within ${timeoutMs} ms`)),
  )

/** Resolves with the arguments of the first `count` `event`s; rejects after `timeoutMs`. */
export const collect = (
  emitter: Emitter,
  event: string,
  count: number,
  timeoutMs = 5000,
): Promise<unknown[][]> =>
  new Promise((resolve, reject) => {
    const received: unknown[][] = []
    const listener = (...args: unknown[]) => {
      received.push(args)
      if (received.length === count) {
        finish()
        resolve(received)
      }
    }
    const finish = () => {
      clearTimeout(timer)
      emitter.off(event, listener)
    }
    const timer = setTimeout(() => {
      finish()
      reject(
        new Error(`only ${received.length} of ${count} "${event}" events within ${timeoutMs} ms`),
      )
    }, timeoutMs)
    if (count <= 0) {
      finish()
      resolve(received)
      return
    }
    emitter.on(event, listener)
  })

/**
 * Polls `predicate` every `interval` ms until it returns true (a thrown error or rejection counts as
 * "not yet"); throws after `timeout` ms, with the last error if any. A condition wait, not a sleep.
 */
export const eventually = async (
  predicate: () => boolean | Promise<boolean>,
  options: {
    readonly timeout?: number
    readonly interval?: number
    readonly message?: string
  } = {},
): Promise<void> => {
  const { timeout = 5000, interval = 20 } = options
  const deadline = Date.now() + timeout
  let lastError: unknown
  for (;;) {
    try {
      if (await predicate()) return
      lastError = undefined
    } catch (error) {
      lastError = error
    }
    if (Date.now() >= deadline) {
      const what = options.message ?? "condition"
      throw new Error(
        `${what} not met within ${timeout} ms` +
          (lastError !== undefined
            ? `: ${String((lastError as Error)?.message ?? lastError)}`
            : ""),
        { cause: lastError },
      )
    }
    await new Promise<void>((resolve) => setTimeout(resolve, interval))
  }
}

/**
 * Resolves if no `event` arrives on `emitter` before `barrier()` settles; rejects if one does.
 *
 * The barrier replaces a fixed sleep: make it wait for a message sent *after* the one that must not
 * arrive, along the same path (same sender, same receiver, same channel), e.g.
 * `() => waitFor(client, "marker")` after emitting "marker" from the same server. Notifications are
 * delivered in commit order and Socket.IO keeps a connection's packet order, so once the later
 * message is in, the earlier one would have been too.
 */
export const expectNoEvent = async (
  emitter: Emitter,
  event: string,
  barrier: () => Promise<unknown>,
): Promise<void> => {
  const seen: unknown[][] = []
  const listener = (...args: unknown[]) => void seen.push(args)
  emitter.on(event, listener)
  try {
    await barrier()
  } finally {
    emitter.off(event, listener)
  }
  if (seen.length > 0) {
    throw new Error(`unexpected "${event}" event(s): ${inspect(seen, { depth: 4 })}`)
  }
}
