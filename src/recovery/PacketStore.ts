/**
 * The stored broadcasts of connection state recovery: the SQL that stores them (spliced into the
 * Publisher's statement, so that a packet and its notification commit together), reading them
 * back, and deleting old ones.
 *
 * @since 0.2.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Result from "effect/Result"
import * as Codec from "../Codec.js"
import { AdapterConfig, keysOf } from "../AdapterConfig.js"
import { Database, withTimeout } from "../Database.js"
import type { DatabaseError } from "../Errors.js"
import * as Metrics from "../Metrics.js"
import * as Signing from "../Signing.js"
import { type TableNames, tableNames } from "./Tables.js"

/** A stored packet read back. */
export interface StoredRow {
  readonly offset: bigint
  readonly rooms: ReadonlyArray<string>
  readonly except: ReadonlyArray<string>
  /** The packet's args, without the offset. */
  readonly data: Array<unknown>
}

/** A packet to store, its args encoded (`Codec.encodePacketData`). */
export interface PacketRow {
  readonly rooms: ReadonlyArray<string>
  readonly except: ReadonlyArray<string>
  readonly bytes: Uint8Array
}

/** What {@link storeSql} gives the statement it is spliced into. */
export interface StoreSql {
  /** The CTEs to put in the statement's `WITH`. */
  readonly ctes: ReadonlyArray<string>
  /** The columns the statement returns: `last`, the offset of the last packet, and `after`. */
  readonly columns: ReadonlyArray<string>
  /** What the statement selects `FROM`. */
  readonly from: string
  /** The SQL expression of the offset of the packet at this 1-based position. */
  readonly offset: (position: number) => string
}

const toBuffer = (bytes: Uint8Array) =>
  Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)

/**
 * The SQL that stores a run of packets of one namespace, to splice into a statement: the packets
 * take the next offsets of the namespace's counter row, whose lock orders the commits of every
 * writer. `notified` is the position of the run's last packet that is also notified (0 for none):
 * the counter remembers it, and the statement returns the one notified before (`after`), which a
 * receiver must have seen before it delivers these. `param` adds a bind parameter and returns its
 * placeholder.
 */
export const storeSql = (
  t: TableNames,
  param: (value: unknown) => string,
  nsp: string,
  packets: ReadonlyArray<PacketRow>,
  notified: number,
): StoreSql => {
  const nspParam = param(nsp)
  const count = param(packets.length)
  const lastNotified = param(notified)
  const rows = packets.map(
    (packet, i) =>
      `(${i + 1}, ${param(packet.rooms)}::text[], ${param(packet.except)}::text[], ${param(toBuffer(packet.bytes))}::bytea)`,
  )
  return {
    ctes: [
      `c AS (INSERT INTO ${t.offsets} AS o (nsp, last, notified, prev_notified) ` +
        `VALUES (${nspParam}, ${count}::bigint, ${lastNotified}::bigint, 0) ` +
        `ON CONFLICT (nsp) DO UPDATE SET last = o.last + EXCLUDED.last, prev_notified = o.notified, ` +
        `notified = CASE WHEN EXCLUDED.notified > 0 THEN o.last + EXCLUDED.notified ELSE o.notified END ` +
        `RETURNING last, prev_notified)`,
      `p AS (INSERT INTO ${t.packets} (nsp, "offset", rooms, excepts, data) ` +
        `SELECT ${nspParam}, c.last - ${count}::bigint + v.i, v.r, v.e, v.d FROM c, ` +
        `(VALUES ${rows.join(", ")}) AS v(i, r, e, d))`,
    ],
    columns: ["c.last::text AS last", "c.prev_notified::text AS after"],
    from: "c",
    offset: (position) => `(c.last - ${count}::bigint + ${position})`,
  }
}

/** The PacketStore service: reading stored packets back, and deleting old ones. */
export class PacketStore extends Context.Service<
  PacketStore,
  {
    /** The namespace's last offset (0 before its first packet). */
    readonly lastOffset: (nsp: string) => Effect.Effect<bigint, DatabaseError>
    /**
     * The stored packets of a namespace after `offset` (at most `limit`), in order; unreadable
     * ones are left out.
     */
    readonly packetsSince: (
      nsp: string,
      offset: bigint,
      limit: number,
    ) => Effect.Effect<ReadonlyArray<StoredRow>, DatabaseError>
    /**
     * Deletes the packets older than `keep` and records each namespace's highest deleted offset
     * as `cleaned`; resolves with the count. One server at a time: the others skip the pass.
     */
    readonly cleanup: (keep: Duration.Duration) => Effect.Effect<number, DatabaseError>
  }
>()("socket.io-postgres-effect/PacketStore") {}

/**
 * A stored packet's bytes: as they are when the cluster does not sign; when it does, only if the
 * row's MAC holds for its namespace and rooms (else counted, and the packet is not replayed).
 */
export const openPacket = (
  keys: Signing.Keys | undefined,
  nsp: string,
  rooms: ReadonlyArray<string>,
  excepts: ReadonlyArray<string>,
  data: Uint8Array,
): Uint8Array | undefined => {
  if (keys === undefined) return data
  const bytes = Signing.openRecord(keys, Signing.PACKET, [nsp, rooms, excepts], data)
  if (bytes === undefined) Metrics.rejectedNotifications.updateUnsafe(1, Context.empty())
  return bytes
}

/** Builds the store over the configured recovery tables. */
export const make = Effect.gen(function* () {
  const config = yield* AdapterConfig
  // A statement past its deadline ends, its connection discarded (see `Database.query`).
  const database = withTimeout(yield* Database, config.publishTimeout)
  const t = tableNames(config.recoveryTablePrefix)
  const keys = keysOf(config)

  const lastOffset = (nsp: string) =>
    database
      .query<{ last: string }>(`SELECT last::text AS last FROM ${t.offsets} WHERE nsp = $1`, [nsp])
      .pipe(Effect.map((rows) => BigInt(rows[0]?.last ?? 0)))

  const packetsSince = (nsp: string, offset: bigint, limit: number) =>
    database
      .query<{ n: string; rooms: Array<string>; excepts: Array<string>; data: Buffer }>(
        `SELECT "offset"::text AS n, rooms, excepts, data FROM ${t.packets} ` +
          `WHERE nsp = $1 AND "offset" > $2 ORDER BY "offset" LIMIT $3`,
        [nsp, String(offset), limit],
      )
      .pipe(
        Effect.map((rows) =>
          rows.flatMap((row): Array<StoredRow> => {
            const bytes = openPacket(keys, nsp, row.rooms, row.excepts, row.data)
            if (bytes === undefined) return []
            const data = Codec.decodePacketData(bytes)
            if (Result.isFailure(data)) return []
            const offset = BigInt(row.n)
            return [{ offset, rooms: row.rooms, except: row.excepts, data: data.success }]
          }),
        ),
      )

  // Two servers cleaning at once would do the same work, and could deadlock on the counter rows
  // they update: the advisory lock lets one through.
  const cleanupSql =
    `WITH l AS (SELECT pg_try_advisory_xact_lock(hashtext($2)) AS got), ` +
    `d AS (DELETE FROM ${t.packets} WHERE (SELECT got FROM l) ` +
    `AND created_at < now() - make_interval(secs => $1) RETURNING nsp, "offset"), ` +
    `m AS (SELECT nsp, max("offset") AS m, count(*) AS n FROM d GROUP BY nsp ORDER BY nsp), ` +
    `u AS (UPDATE ${t.offsets} o SET cleaned = GREATEST(o.cleaned, m.m) FROM m WHERE o.nsp = m.nsp) ` +
    `SELECT coalesce(sum(n), 0)::int AS n FROM m`

  const cleanup = (keep: Duration.Duration) =>
    database
      .query<{ n: number }>(cleanupSql, [Duration.toMillis(keep) / 1000, t.packets])
      .pipe(Effect.map((rows) => Number(rows[0]?.n ?? 0)))

  return PacketStore.of({ lastOffset, packetsSince, cleanup })
})

/** The PacketStore layer; needs `AdapterConfig` and `Database`. */
export const layer: Layer.Layer<PacketStore, never, AdapterConfig | Database> = Layer.effect(
  PacketStore,
  make,
)
