/**
 * A benchmark worker holding the socket.io-client clients of one server: it connects them, records
 * every packet they get (sequence number, latency from emit), and reports to `bench.ts` over IPC.
 */
import { io, type Socket } from "socket.io-client"
import { serve } from "./ipc.js"
import { Tracker } from "./stats.js"

/** Arguments of `connect`. */
export interface ConnectArgs {
  readonly url: string
  readonly count: number
  /** Packets each client should get. */
  readonly expected: number
  /** If set, every other client (0, 2, 4, …) joins this room and only those should get packets. */
  readonly room?: string
}

/** What `report` returns: the clients of this worker, summed. */
export interface ClientsReport {
  readonly clients: number
  readonly expected: number
  readonly unique: number
  readonly duplicates: number
  readonly outOfOrder: number
  /** Packets a client should not have received (outside the room, unknown numbers). */
  readonly unexpected: number
  readonly firstAt: number | null
  /** When the last packet arrived at any client. */
  readonly lastAt: number | null
  /**
   * Packets that came with a recovery offset: with `connectionStateRecovery`, the server appends
   * it (a string) as the last argument of the event, after the packet.
   */
  readonly withOffset: number
  readonly latencies: Array<number>
}

interface Client {
  readonly socket: Socket
  readonly tracker: Tracker
  readonly offsets: { count: number }
}

let clients: Array<Client> = []

const connectOne = (url: string, room: string | undefined, expected: number): Promise<Client> =>
  new Promise((resolve, reject) => {
    const socket = io(url, {
      transports: ["websocket"],
      forceNew: true,
      reconnection: false,
      ...(room !== undefined ? { query: { room } } : {}),
    })
    const tracker = new Tracker(expected)
    const offsets = { count: 0 }
    // `(packet)` or, with recovery, `(packet, offset)`: the packet stays the first argument.
    socket.on("m", (packet: { s: number; t: number }, ...rest: Array<unknown>) => {
      tracker.record(packet?.s, packet?.t)
      if (rest.length === 1 && typeof rest[0] === "string") offsets.count++
    })
    const timer = setTimeout(() => {
      socket.disconnect()
      reject(new Error(`no connection to ${url} within 10 s`))
    }, 10_000)
    socket.once("connect", () => {
      clearTimeout(timer)
      resolve({ socket, tracker, offsets })
    })
    socket.once("connect_error", (error) => {
      clearTimeout(timer)
      socket.disconnect()
      reject(error)
    })
  })

const disconnect = () => {
  for (const client of clients) client.socket.disconnect()
  clients = []
  return null
}

serve({
  async connect(args: ConnectArgs) {
    disconnect()
    clients = await Promise.all(
      Array.from({ length: args.count }, (_, i) => {
        const member = args.room === undefined || i % 2 === 0
        return connectOne(args.url, member ? args.room : undefined, member ? args.expected : 0)
      }),
    )
    return null
  },

  progress() {
    let unique = 0
    let expected = 0
    for (const { tracker } of clients) {
      unique += tracker.unique
      expected += tracker.expected
    }
    return { unique, expected }
  },

  report(): ClientsReport {
    let firstAt: number | null = null
    let lastAt: number | null = null
    let withOffset = 0
    const total = { expected: 0, unique: 0, duplicates: 0, outOfOrder: 0, unexpected: 0 }
    const latencies: Array<number> = []
    for (const { tracker, offsets } of clients) {
      withOffset += offsets.count
      const stats = tracker.stats()
      total.expected += stats.expected
      total.unique += stats.unique
      total.duplicates += stats.duplicates
      total.outOfOrder += stats.outOfOrder
      total.unexpected += stats.unexpected
      if (stats.firstAt !== undefined) firstAt = Math.min(firstAt ?? Infinity, stats.firstAt)
      if (stats.lastAt !== undefined) lastAt = Math.max(lastAt ?? -Infinity, stats.lastAt)
      for (const latency of tracker.latencies) latencies.push(Math.round(latency * 1000) / 1000)
    }
    return { clients: clients.length, ...total, firstAt, lastAt, withOffset, latencies }
  },

  disconnect,

  close: disconnect,
})
