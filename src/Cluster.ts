/**
 * The whole cluster as one layer: every service of the package over a `Database` and an `AdapterConfig`.
 *
 * @since 0.1.0
 */
import type * as PgClient from "@effect/sql-pg/PgClient"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type pg from "pg"
import * as AttachmentStore from "./AttachmentStore.js"
import * as Cleanup from "./Cleanup.js"
import * as AdapterConfig from "./AdapterConfig.js"
import * as Database from "./Database.js"
import type { ConfigError } from "./Errors.js"
import * as Heartbeat from "./Heartbeat.js"
import * as Listener from "./Listener.js"
import * as Publisher from "./Publisher.js"
import { checkTable, setUpTables } from "./internal/tableSetup.js"
import * as Recovery from "./recovery/Recovery.js"

/** Every service the adapter runs on. */
export type Services =
  | Listener.Listener
  | Publisher.Publisher
  | AttachmentStore.AttachmentStore
  | Heartbeat.Heartbeat
  | Cleanup.Cleanup
  | Recovery.Recovery
  | AdapterConfig.AdapterConfig
  | Database.Database

/**
 * Creates the attachments table when `createTable` is on. Waits up to 5 s so that the first
 * attachments find their table; if PostgreSQL is not there yet it keeps trying in the background.
 * With `createTable: false`, says at start when the table is missing.
 */
export const layerTableSetup: Layer.Layer<
  never,
  never,
  AdapterConfig.AdapterConfig | AttachmentStore.AttachmentStore
> = Layer.effectDiscard(
  Effect.gen(function* () {
    const config = yield* AdapterConfig.AdapterConfig
    const store = yield* AttachmentStore.AttachmentStore
    yield* (
      config.createTable
        ? setUpTables("the attachments table", store.ensureTable)
        : checkTable(`the attachments table ${config.tableName}`, store.tableExists)
    ).pipe(Effect.annotateLogs({ module: "AttachmentStore" }))
  }),
)

/** The cluster services over an `AdapterConfig` and a `Database`. */
export const layer: Layer.Layer<Services, never, AdapterConfig.AdapterConfig | Database.Database> =
  Layer.mergeAll(
    // Its server channel is on the Listener and the Publisher (which notifies on the Listener's
    // connection while it is up).
    Heartbeat.layer.pipe(
      Layer.provideMerge(Publisher.layer.pipe(Layer.provideMerge(Listener.layer))),
    ),
    // Recovery's cleanup runs in the Cleanup loop.
    Recovery.layer.pipe(Layer.provideMerge(Cleanup.layer)),
    layerTableSetup,
  ).pipe(
    Layer.provideMerge(AttachmentStore.layer),
    Layer.provideMerge(
      Layer.effectContext(Effect.context<AdapterConfig.AdapterConfig | Database.Database>()),
    ),
  )

/** The cluster over a caller-owned `pg.Pool`, with validated options. */
export const layerPool = (
  pool: pg.Pool,
  options?: AdapterConfig.AdapterOptions,
): Layer.Layer<Services, ConfigError> =>
  layer.pipe(Layer.provide(Layer.merge(AdapterConfig.layer(options), Database.layerPool(pool))))

/** The cluster over `@effect/sql-pg`'s `PgClient`, with validated options. */
export const layerPgClient = (
  options?: AdapterConfig.AdapterOptions,
): Layer.Layer<Services, ConfigError, PgClient.PgClient> =>
  layer.pipe(Layer.provide(Layer.merge(AdapterConfig.layer(options), Database.layerPgClient)))
