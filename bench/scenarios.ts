/** What the benchmark measures: its scenarios, their sizes, and who runs them. */

/**
 * The adapters under test: this package, the same with Socket.IO's `connectionStateRecovery` on
 * (every broadcast stored with an offset), the same with a `secret` (every message signed and
 * verified), `@socket.io/postgres-adapter` 0.5.0, and `@socket.io/redis-adapter` 8.3 over
 * node-redis (the speed users pick Redis for).
 */
export type AdapterKind =
  "ours" | "ours-base" | "ours-recovery" | "ours-signed" | "ours-base-signed" | "upstream" | "redis"

/** Raw `pg_notify` from one connection: one call per statement, or ten. */
export type RawKind = "raw-x1" | "raw-x10"

/** Everything a scenario can be run with. */
export type Kind = AdapterKind | RawKind

export const ALL_KINDS: ReadonlyArray<Kind> = [
  "ours",
  "ours-base",
  "ours-recovery",
  "ours-signed",
  "ours-base-signed",
  "upstream",
  "redis",
  "raw-x1",
  "raw-x10",
]

/** Where kind "redis" connects unless `REDIS_URL` says otherwise. */
export const DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"

/** How each kind is named in the table and the chart. */
export const KIND_LABEL: Record<Kind, string> = {
  ours: "ours",
  "ours-base": "ours @ baseline",
  "ours-recovery": "ours + recovery",
  "ours-signed": "ours + secret",
  "ours-base-signed": "ours @ baseline + secret",
  upstream: "0.5.0",
  redis: "redis",
  "raw-x1": "raw pg_notify",
  "raw-x10": "raw x10/stmt",
}

/**
 * What a broadcast carries besides its sequence number and send time, as applications send it:
 * "small" an object of about 100 bytes of JSON, "binary" an object holding a 1 KB `Buffer`,
 * "json20k" about 20 KB of structured JSON (an array of 140 objects of 5 fields), "large" a
 * 20,000-character string (cheap to encode: the row that shows the difference).
 */
export type PayloadKind = "small" | "binary" | "json20k" | "large"

/** Server 0 broadcasts `count` packets; the clients of servers 1 and 2 count them. */
export interface BroadcastScenario {
  readonly type: "broadcast"
  readonly name: string
  /** Short, for the chart. */
  readonly label: string
  readonly title: string
  readonly payload: PayloadKind
  readonly count: number
  /** Packets per second; full speed when absent. */
  readonly rate?: number
  readonly clientsPerServer: number
  /** Broadcast to a room that every other client joined. */
  readonly room?: boolean
  /** Raw `pg_notify` references run in this scenario, with their packet counts. */
  readonly raw?: Partial<Record<RawKind, number>>
  /** Also run "ours-recovery": what connection state recovery costs per broadcast. */
  readonly recovery?: boolean
}

/** Server 0 makes `count` round trips, one after the other. */
export interface RequestScenario {
  readonly type: "request"
  readonly name: string
  readonly label: string
  readonly title: string
  readonly op: "fetchSockets" | "serverSideEmitWithAck"
  readonly count: number
  readonly clientsPerServer: number
}

/** Two servers run; a third starts: how long until they see it, and it sees them. */
export interface JoinScenario {
  readonly type: "join"
  readonly name: string
  readonly label: string
  readonly title: string
  readonly heartbeatInterval: number
}

export type Scenario = BroadcastScenario | RequestScenario | JoinScenario

/** The fixed rate of the `*-rate` scenarios with 1 or 2 clients per server. */
export const FIXED_RATE = 1000

/** The fixed rate of `small-rate` and `binary-rate`, with {@link MANY_CLIENTS} clients per server. */
export const MANY_RATE = 100

/** Clients per server of `small-rate` and `binary-rate` (full size). */
export const MANY_CLIENTS = 50

/**
 * The scenarios, full size (times `scale`, for steadier figures) or `--quick` (tiny counts, for the
 * smoke test and CI).
 */
export const scenarios = (quick: boolean, scale = 1): ReadonlyArray<Scenario> => {
  const n = (full: number, small: number) => (quick ? small : Math.round(full * scale))
  const broadcast = (
    name: string,
    label: string,
    title: string,
    payload: PayloadKind,
    count: number,
    extra: Partial<BroadcastScenario> = {},
  ): BroadcastScenario => ({
    type: "broadcast",
    name,
    label,
    title,
    payload,
    count,
    clientsPerServer: 1,
    ...extra,
  })
  const rate = { rate: FIXED_RATE }
  const recovery = { recovery: true }
  return [
    broadcast("small", "small, full speed", "small JSON, full speed", "small", n(10_000, 200), {
      raw: { "raw-x1": n(10_000, 300), "raw-x10": n(50_000, 1000) },
      ...recovery,
    }),
    broadcast(
      "small-rate",
      `small, ${MANY_RATE}/s, ${n(MANY_CLIENTS, 10)} clients`,
      `small JSON at ${MANY_RATE}/s, ${n(MANY_CLIENTS, 10)} clients per server`,
      "small",
      n(600, 30),
      { rate: MANY_RATE, clientsPerServer: n(MANY_CLIENTS, 10), ...recovery },
    ),
    broadcast(
      "binary",
      "1 KB binary, full speed",
      "1 KB binary, full speed",
      "binary",
      n(3000, 100),
      recovery,
    ),
    broadcast(
      "binary-rate",
      `1 KB binary, ${MANY_RATE}/s, ${n(MANY_CLIENTS, 10)} clients`,
      `1 KB binary at ${MANY_RATE}/s, ${n(MANY_CLIENTS, 10)} clients per server`,
      "binary",
      n(600, 30),
      { rate: MANY_RATE, clientsPerServer: n(MANY_CLIENTS, 10) },
    ),
    broadcast(
      "json20k",
      "20 KB structured JSON, full speed",
      "20 KB structured JSON (140 objects of 5 fields), full speed",
      "json20k",
      n(1000, 50),
      recovery,
    ),
    broadcast(
      "large",
      "20 KB string, full speed",
      "20,000-character string, full speed",
      "large",
      n(1500, 50),
      recovery,
    ),
    broadcast(
      "large-rate",
      `20 KB string, ${FIXED_RATE}/s`,
      `20,000-character string at ${FIXED_RATE}/s`,
      "large",
      n(2000, 50),
      rate,
    ),
    broadcast(
      "room",
      "room, full speed",
      "room (half the clients), full speed",
      "small",
      n(10_000, 200),
      {
        room: true,
        clientsPerServer: 2,
        ...recovery,
      },
    ),
    broadcast(
      "room-rate",
      `room, ${FIXED_RATE}/s`,
      `room at ${FIXED_RATE}/s`,
      "small",
      n(3000, 200),
      {
        room: true,
        clientsPerServer: 2,
        ...rate,
      },
    ),
    broadcast(
      "fanout",
      `fan-out, ${n(100, 20)} clients/server`,
      `fan-out: ${n(100, 20)} clients per server, full speed`,
      "small",
      n(1000, 50),
      {
        clientsPerServer: n(100, 20),
      },
    ),
    {
      type: "request",
      name: "fetchSockets",
      label: "fetchSockets",
      title: "fetchSockets round trip (3 x 50 sockets)",
      op: "fetchSockets",
      count: n(200, 10),
      clientsPerServer: 50,
    },
    {
      type: "request",
      name: "serverSideEmitWithAck",
      label: "serverSideEmitWithAck",
      title: "serverSideEmitWithAck round trip",
      op: "serverSideEmitWithAck",
      count: n(200, 10),
      clientsPerServer: 50,
    },
    {
      type: "join",
      name: "join",
      label: "new server",
      title: "new server: ms until seen by / seeing the others",
      heartbeatInterval: n(5000, 1000),
    },
  ]
}

/** The kinds a scenario is run with. */
export const kindsOf = (scenario: Scenario): ReadonlyArray<Kind> => [
  "ours",
  // Only with `--baseline DIR`: the same adapter built from another checkout.
  "ours-base",
  ...(scenario.type === "broadcast" && scenario.recovery === true
    ? (["ours-recovery"] as const)
    : []),
  // Signing's cost is per message: the broadcasts show it.
  ...(scenario.type === "broadcast" ? (["ours-signed", "ours-base-signed"] as const) : []),
  "upstream",
  // Redis counts its servers by PUBSUB NUMSUB, with no heartbeat: nothing to compare in `join`.
  ...(scenario.type === "join" ? [] : (["redis"] as const)),
  ...(scenario.type === "broadcast" && scenario.raw !== undefined
    ? (Object.keys(scenario.raw) as Array<RawKind>)
    : []),
]
