/**
 * The browser demo's page (http://localhost:3000): the files of `demo/public/` as they are (no build
 * step), the Socket.IO client from this server's own `/socket.io/socket.io.min.js`, and a control
 * channel (a plain Socket.IO server, no adapter) that pushes the servers' live status twice a second
 * and takes the fault buttons.
 */
import { readFile } from "node:fs/promises"
import * as http from "node:http"
import { fileURLToPath } from "node:url"
import { Server } from "socket.io"
import type { DemoServers, ServerView } from "./servers.js"

/** What the page learns once, on connection. */
export interface PageSetup {
  /** Where PostgreSQL is, for the header. */
  readonly database: string
  /** Whether "freeze PostgreSQL" can work, and why not. */
  readonly freeze: { readonly available: boolean; readonly reason: string }
  readonly channelPrefix: string
}

/** What the page is pushed. */
export interface PageStatus {
  readonly servers: ReadonlyArray<ServerView>
  /** Whether PostgreSQL is frozen right now. */
  readonly frozen: boolean
}

/** What a fault button sends. */
export interface FaultRequest {
  readonly kind: "kill-listen" | "stop" | "start" | "freeze"
  readonly server?: number
}

export interface WebOptions {
  readonly port: number
  readonly setup: PageSetup
  readonly servers: DemoServers
  /** Freezes PostgreSQL for `ms` (SIGSTOP … SIGCONT); only with an embedded server. */
  readonly freeze: ((ms: number) => Promise<void>) | undefined
}

export interface Web {
  readonly url: string
  /** A line in every page's event log. */
  readonly log: (text: string) => void
  readonly close: () => Promise<void>
}

const FREEZE_MS = 5_000
const PUSH_EVERY_MS = 500

const publicDir = fileURLToPath(new URL("./public/", import.meta.url))
const FILES: Readonly<Record<string, readonly [file: string, type: string]>> = {
  "/": ["index.html", "text/html; charset=utf-8"],
  "/index.html": ["index.html", "text/html; charset=utf-8"],
  "/app.js": ["app.js", "text/javascript; charset=utf-8"],
  "/style.css": ["style.css", "text/css; charset=utf-8"],
  "/favicon.ico": ["favicon.svg", "image/svg+xml"],
  "/favicon.svg": ["favicon.svg", "image/svg+xml"],
}

/** The error a busy port gives, in words. */
export class PortInUseError extends Error {}

/** Starts the page server on `port`; rejects with a {@link PortInUseError} when it is taken. */
export const startWeb = async (options: WebOptions): Promise<Web> => {
  const httpServer = http.createServer((req, res) => {
    const path = new URL(req.url ?? "/", "http://localhost").pathname
    const entry = FILES[path]
    if (entry === undefined || req.method !== "GET") {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found\n")
      return
    }
    readFile(publicDir + entry[0]).then(
      (body) =>
        res.writeHead(200, { "content-type": entry[1], "cache-control": "no-store" }).end(body),
      () => res.writeHead(500, { "content-type": "text/plain" }).end("cannot read the page\n"),
    )
  })
  const io = new Server(httpServer)
  let frozen = false
  const log = (text: string) => io.emit("log", { at: Date.now(), text })

  const fault = async (request: FaultRequest): Promise<string> => {
    const { servers } = options
    switch (request?.kind) {
      case "kill-listen":
        return servers.killListen(request.server)
      case "stop":
        return servers.stop(request.server)
      case "start":
        return servers.restart(request.server)
      case "freeze": {
        if (options.freeze === undefined) throw new Error(options.setup.freeze.reason)
        if (frozen) throw new Error("PostgreSQL is frozen already")
        frozen = true
        log(`PostgreSQL frozen (SIGSTOP) for ${FREEZE_MS / 1000} s`)
        options
          .freeze(FREEZE_MS)
          .then(
            () => log("PostgreSQL running again (SIGCONT)"),
            (error: unknown) => log(`freezing PostgreSQL failed: ${(error as Error)?.message}`),
          )
          .finally(() => (frozen = false))
        return "freezing PostgreSQL"
      }
      default:
        throw new Error("unknown fault")
    }
  }

  io.on("connection", (socket) => {
    socket.emit("setup", options.setup)
    socket.on("fault", (request: FaultRequest, ack?: unknown) => {
      const reply = typeof ack === "function" ? (ack as (r: unknown) => void) : () => {}
      fault(request).then(
        (text) => {
          if (request.kind !== "freeze") log(text)
          reply({ ok: true, text })
        },
        (error: unknown) => reply({ ok: false, text: (error as Error)?.message ?? String(error) }),
      )
    })
  })
  const push = setInterval(() => {
    io.emit("status", { servers: options.servers.views(), frozen } satisfies PageStatus)
  }, PUSH_EVERY_MS)

  await new Promise<void>((resolve, reject) => {
    httpServer.once("error", (error: NodeJS.ErrnoException) => {
      clearInterval(push)
      void io.close()
      reject(
        error.code === "EADDRINUSE"
          ? new PortInUseError(
              `port ${options.port} is already in use; choose another, e.g. PORT=${options.port + 1000} npm start`,
            )
          : error,
      )
    })
    httpServer.listen(options.port, () => resolve())
  })
  return {
    url: `http://localhost:${options.port}/`,
    log,
    close: async () => {
      clearInterval(push)
      const closing = io.close()
      httpServer.closeAllConnections()
      await closing
    },
  }
}
