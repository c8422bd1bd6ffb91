/**
 * The recovery services against real PostgreSQL, for the recovery tests: fresh tables per test
 * (dropped after the file), the services over them, and helpers to store packets, persist
 * sessions, listen and read the tables.
 */
import { afterAll, beforeAll } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import pg from "pg"
import * as Cleanup from "../../src/Cleanup.js"
import type * as Codec from "../../src/Codec.js"
import * as AdapterConfig from "../../src/AdapterConfig.js"
import * as Database from "../../src/Database.js"
import * as Publisher from "../../src/Publisher.js"
import * as Recovery from "../../src/recovery/Recovery.js"
import { eventually as waitUntil } from "./cluster.js"
import { createAttachmentTable, databaseUrl, makePool, suiteId } from "./postgres.js"

let testPool: pg.Pool | undefined
/** Every prefix and schema created, dropped at the end. */
const created: Array<string> = []
const schemas: Array<string> = []

/** Opens the file's pool before its tests and drops what they created after them. */
export const useRecoveryDatabase = (): void => {
  beforeAll(() => {
    testPool = makePool({ max: 6 })
  })
  afterAll(async () => {
    const open = testPool
    if (open === undefined) return
    for (const prefix of created.splice(0)) {
      await open.query(
        `DROP TABLE IF EXISTS ${prefix}_packets, ${prefix}_sessions, ${prefix}_offsets, ${prefix}_att`,
      )
    }
    for (const schema of schemas.splice(0)) {
      await open.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)
    }
    await open.end()
    testPool = undefined
  })
}

/** The file's pool (see {@link useRecoveryDatabase}). */
export const pool = (): pg.Pool => {
  if (testPool === undefined) throw new Error("useRecoveryDatabase() was not called")
  return testPool
}

/** A fresh table prefix, its tables dropped after the file. */
export const freshPrefix = (name: string): string => {
  const prefix = suiteId(name)
  created.push(prefix)
  return prefix
}

/** A fresh schema (dropped after the file) and a prefix in it. */
export const freshSchemaPrefix = (name: string): string => {
  const schema = suiteId(`s_${name}`)
  schemas.push(schema)
  return `${schema}.recovery`
}

/**
 * Recovery and Publisher over `pool`, with `prefix`'s tables (and attachments table), and the
 * cleanup loop Recovery registers in (without the attachments' task).
 */
export const servicesLayer = (
  prefix: string,
  options: AdapterConfig.AdapterOptions = {},
  on: pg.Pool = pool(),
): Layer.Layer<Recovery.Recovery | Publisher.Publisher | Cleanup.Cleanup> =>
  Layer.mergeAll(Recovery.layer.pipe(Layer.provideMerge(Cleanup.layerEmpty)), Publisher.layer).pipe(
    Layer.provide(
      Layer.mergeAll(
        Layer.succeed(
          AdapterConfig.AdapterConfig,
          AdapterConfig.decodeSync({
            recoveryTablePrefix: prefix,
            tableName: `${prefix}_att`,
            ...options,
          }),
        ),
        Database.layerPool(on),
      ),
    ),
  )

/** A promise as an Effect that fails (not dies) when it rejects. */
export const fromPromise = <A>(promise: () => Promise<A>) =>
  Effect.tryPromise({ try: promise, catch: (error) => error as Error })

/** Runs SQL on the test pool. */
export const sql = <A extends pg.QueryResultRow = any>(text: string, params?: Array<unknown>) =>
  fromPromise(() => pool().query<A>(text, params)).pipe(Effect.map((result) => result.rows))

/** Creates the recovery tables (and the attachments table) of the services in context. */
export const setup = (prefix: string, recovery: Recovery.Recovery["Service"]) =>
  Effect.gen(function* () {
    yield* recovery.ensureTables
    if (!prefix.includes("."))
      yield* fromPromise(() => createAttachmentTable(pool(), `${prefix}_att`))
  })

/** `Publisher.unsafeStore` as an Effect: succeeds with the packet's offset. */
export const store = (
  publisher: Publisher.Publisher["Service"],
  packet: Publisher.StoredPacket,
  options: { readonly channel?: string; readonly message?: Codec.WireMessage } = {},
) =>
  Effect.callback<string, Error>((resume) =>
    publisher.unsafeStore(options.channel ?? "unused", options.message, packet, (error, offset) =>
      resume(
        error !== undefined || offset === undefined
          ? Effect.fail(error ?? new Error("no offset"))
          : Effect.succeed(offset),
      ),
    ),
  )

/** A packet of namespace `nsp` to everyone, whose args are `data`. */
export const packetOf = (
  data: ReadonlyArray<unknown>,
  target: { nsp?: string; rooms?: Array<string>; except?: Array<string> } = {},
): Publisher.StoredPacket => ({
  nsp: target.nsp ?? "/",
  rooms: target.rooms ?? [],
  except: target.except ?? [],
  data,
})

export const session = (
  pid: string,
  extra: Partial<Recovery.SessionToPersist> = {},
): Recovery.SessionToPersist => ({
  nsp: "/",
  sid: `sid-${pid}`,
  pid,
  rooms: [`sid-${pid}`],
  data: {},
  ...extra,
})

export const HOUR = Duration.hours(1)

/** A dedicated LISTEN connection on `channel`, recording every payload; ended with the scope. */
export const listen = (channel: string) =>
  Effect.acquireRelease(
    fromPromise(async () => {
      const client = new pg.Client({ connectionString: databaseUrl() })
      client.on("error", () => {})
      await client.connect()
      const payloads: Array<string> = []
      client.on("notification", (n) => payloads.push(n.payload ?? ""))
      await client.query(`LISTEN "${channel.replaceAll('"', '""')}"`)
      return { client, payloads }
    }),
    ({ client }) => Effect.promise(() => client.end().catch(() => {})),
  )

/** The backend pid of a connection open until the scope closes: a server that is alive. */
export const backendPid = Effect.map(
  Effect.acquireRelease(
    fromPromise(async () => {
      const client = new pg.Client({ connectionString: databaseUrl() })
      client.on("error", () => {})
      await client.connect()
      return client
    }),
    (client) => Effect.promise(() => client.end().catch(() => {})),
  ),
  (client) => (client as unknown as { processID: number }).processID,
)

/** Waits (real time) until `predicate` holds (the harness's `eventually`, as an Effect). */
export const eventually = (predicate: () => boolean) => fromPromise(() => waitUntil(predicate))

/** What the helpers below hand to a test body. */
export interface Services {
  readonly prefix: string
  readonly recovery: Recovery.Recovery["Service"]
  readonly publisher: Publisher.Publisher["Service"]
  readonly cleanup: Cleanup.Cleanup["Service"]
}

/** Services on fresh tables, with `count` packets `[label, i]` stored in "/" (offsets 1..count). */
export const withStored = <A, E, R>(
  name: string,
  count: number,
  body: (services: Services) => Effect.Effect<A, E, R>,
  options: Parameters<typeof servicesLayer>[1],
  label: string,
) =>
  Effect.gen(function* () {
    const prefix = freshPrefix(name)
    const context = yield* Layer.build(servicesLayer(prefix, options))
    const recovery = Context.get(context, Recovery.Recovery)
    const publisher = Context.get(context, Publisher.Publisher)
    const cleanup = Context.get(context, Cleanup.Cleanup)
    yield* setup(prefix, recovery)
    for (let i = 1; i <= count; i++) yield* store(publisher, packetOf([label, i]))
    return yield* body({ prefix, recovery, publisher, cleanup })
  })
