/**
 * `setupPrimary`: node:cluster primaries (our relay; workers on `@socket.io/cluster-adapter`, in a
 * child process each: `fixtures/primary.ts`) and plain servers of ours form one cluster. Every
 * worker is a node of its own: broadcasts, rooms and requests reach it and come from it, and a
 * worker or a server that dies is dropped by the others.
 */
import { Emitter as UpstreamEmitter } from "@socket.io/postgres-emitter"
import type pg from "pg"
import type { Socket as ClientSocket } from "socket.io-client"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { createAdapter, setupPrimary } from "../src/index.js"
import {
  type ChildScript,
  exitWithin,
  killFixture,
  runFixture,
  settleWithin,
  watchProcessFaults,
} from "./fixtures/faults.js"
import {
  connectClient,
  eventually,
  expectNoEvent,
  startServer,
  type TestServer,
  waitFor,
} from "./utils/cluster.js"
import { databaseUrl, dropTable, makePool, suiteId } from "./utils/postgres.js"

interface Timing {
  readonly heartbeatInterval: number
  readonly heartbeatTimeout: number
  readonly requestsTimeout: number
}

/** A worker of a primary, as its `worker` line said, with a client connected to it. */
interface Worker {
  readonly id: number
  readonly pid: number
  readonly port: number
  readonly uid: string
  /** What `setupPrimary` threw in it (worker 1 only). */
  readonly notPrimary: string | undefined
  readonly client: ClientSocket
}

/** A primary process and its workers. */
interface Primary {
  readonly script: ChildScript
  readonly workers: ReadonlyArray<Worker>
}

/** What a worker acknowledged a client's command with. */
type Answer<A> = { readonly ok: A } | { readonly error: string }

const ask = async <A>(worker: Worker, command: string, ...args: Array<unknown>): Promise<A> => {
  const answer = (await worker.client.timeout(10_000).emitWithAck(command, ...args)) as Answer<A>
  if ("error" in answer)
    throw new Error(`${command} failed in worker ${worker.pid}: ${answer.error}`)
  return answer.ok
}

const ids = (sockets: ReadonlyArray<{ id: string }>) => sockets.map((socket) => socket.id).sort()

describe("setupPrimary", () => {
  const watcher = watchProcessFaults()
  const tables: Array<string> = []
  const scripts: Array<ChildScript> = []
  const servers: Array<TestServer> = []
  const clients: Array<ClientSocket> = []
  let pool: pg.Pool

  const startPrimary = async (
    id: string,
    timing: Timing,
    workers: number,
    rooms: ReadonlyArray<string> = [],
    secret?: string,
  ): Promise<Primary> => {
    const script = runFixture("primary.ts", {
      DATABASE_URL: databaseUrl(),
      CHANNEL_PREFIX: id,
      TABLE_NAME: id,
      WORKERS: String(workers),
      HEARTBEAT_INTERVAL: String(timing.heartbeatInterval),
      HEARTBEAT_TIMEOUT: String(timing.heartbeatTimeout),
      REQUESTS_TIMEOUT: String(timing.requestsTimeout),
      ...(secret !== undefined ? { SECRET: secret } : {}),
    })
    scripts.push(script)
    await script.waitForMessage("ready")
    const lines = script.messages.filter((message) => message["event"] === "worker")
    const started: Array<Worker> = []
    for (const [i, line] of lines.entries()) {
      const client = await connectClient(`http://127.0.0.1:${line["port"]}`, {
        query: { room: rooms[i] ?? "" },
      })
      clients.push(client)
      started.push({
        id: line["id"] as number,
        pid: line["pid"] as number,
        port: line["port"] as number,
        uid: line["uid"] as string,
        notPrimary: line["notPrimary"] as string | undefined,
        client,
      })
    }
    return { script, workers: started }
  }

  const startPlain = async (id: string, timing: Timing, room = "", secret?: string) => {
    const server = await startServer({
      adapter: createAdapter(pool, {
        channelPrefix: id,
        tableName: id,
        ...timing,
        ...(secret !== undefined ? { secret } : {}),
      }),
    })
    servers.push(server)
    server.io.on("maybe", (silent: Array<number>, ack: (answer: unknown) => void) => {
      if (!silent.includes(process.pid)) ack({ from: "plain", port: server.port })
    })
    server.io.on("connection", (socket) => {
      const joined = socket.handshake.query["room"]
      if (typeof joined === "string" && joined !== "") socket.join(joined)
    })
    const client = await connectClient(server.url, { query: { room } })
    clients.push(client)
    return { server, client }
  }

  /** Waits until every worker and every server counts `size` nodes. */
  const clusterHasSize = (
    workers: ReadonlyArray<Worker>,
    plain: ReadonlyArray<TestServer>,
    size: number,
    timeout = 10_000,
  ) =>
    eventually(
      async () => {
        const counts = await Promise.all([
          ...workers.map((worker) => ask<number>(worker, "serverCount")),
          ...plain.map((server) => server.io.of("/").adapter.serverCount()),
        ])
        return counts.every((count) => count === size)
      },
      { timeout, interval: 50, message: `every node counts ${size} nodes` },
    )

  beforeAll(() => {
    pool = makePool({ max: 6 })
  })

  afterAll(async () => {
    watcher.stop()
    for (const table of tables) await dropTable(pool, table)
    await pool?.end()
  })

  const cleanUp = async () => {
    for (const client of clients.splice(0)) client.disconnect()
    await Promise.all(scripts.splice(0).map((script) => killFixture(script)))
    await Promise.allSettled(servers.splice(0).map((server) => server.close()))
  }

  describe("with two primaries (two workers and one) and a plain server", () => {
    const timing = { heartbeatInterval: 300, heartbeatTimeout: 5_000, requestsTimeout: 5_000 }
    let a: Primary
    let b: Primary
    let plain: { server: TestServer; client: ClientSocket }
    let all: Array<Worker>
    const id = suiteId("primary")

    beforeAll(async () => {
      tables.push(id)
      // Rooms: a1 and b1 in "red", a2 and the plain server's client in "blue".
      ;[a, b] = await Promise.all([
        startPrimary(id, timing, 2, ["red", "blue"]),
        startPrimary(id, timing, 1, ["red"]),
      ])
      plain = await startPlain(id, timing, "blue")
      all = [...a.workers, ...b.workers]
      await clusterHasSize(all, [plain.server], 4)
    })

    afterAll(cleanUp)

    afterEach(() => {
      expect(watcher.faults).toEqual([])
    })

    it("delivers a plain server's broadcast to every worker's client, binary included", async () => {
      const received = all.map((worker) => waitFor(worker.client, "hello"))
      plain.server.io.emit("hello", "from plain", Buffer.from([1, 2, 3]))
      for (const args of await Promise.all(received)) {
        expect(args[0]).toBe("from plain")
        expect(Buffer.from(args[1] as ArrayBuffer)).toEqual(Buffer.from([1, 2, 3]))
      }
    })

    it("delivers a worker's broadcast once to every client: its own, the other workers' and the plain server's", async () => {
      const a1 = a.workers[0]!
      const everyone = [...all.map((worker) => worker.client), plain.client]
      const received = everyone.map(() => [] as Array<Array<unknown>>)
      const listeners = everyone.map((client, i) => {
        const listener = (...args: Array<unknown>) => void received[i]!.push(args)
        client.on("news", listener)
        return listener
      })
      try {
        const atPlain = waitFor(plain.client, "news")
        a1.client.emit("emit", null, "news", a1.pid, { big: "x".repeat(20_000) })
        await atPlain
        // The primaries must not hand their workers' own messages back to them when PostgreSQL
        // returns them: a marker the plain server sends now comes after those on every path.
        const markers = everyone.map((client) => waitFor(client, "marker"))
        plain.server.io.emit("marker")
        await Promise.all(markers)
      } finally {
        everyone.forEach((client, i) => client.off("news", listeners[i]))
      }
      for (const events of received) {
        expect(events).toHaveLength(1)
        expect(events[0]![0]).toBe(a1.pid)
        expect((events[0]![1] as { big: string }).big).toHaveLength(20_000)
      }
    })

    it("delivers a room's broadcast only to its members, from a plain server and from a worker", async () => {
      const [a1, a2] = a.workers
      const b1 = b.workers[0]!
      // From the plain server to "red": a1 and b1, not a2 (nor the plain server's own client).
      const red = [a1!, b1].map((worker) => waitFor(worker.client, "color"))
      await expectNoEvent(a2!.client, "color", async () => {
        plain.server.io.to("red").emit("color", "red")
        await Promise.all(red)
        // Sent after, along the same path: once it is in, "color" would have been too.
        const marker = waitFor(a2!.client, "marker")
        plain.server.io.to("blue").emit("marker")
        await marker
      })
      // From a worker to "blue": a2's client and the plain server's, not b1's.
      const blue = [waitFor(a2!.client, "shade"), waitFor(plain.client, "shade")]
      await expectNoEvent(b1.client, "shade", async () => {
        a1!.client.emit("emit", "blue", "shade", "blue")
        expect((await Promise.all(blue)).map((args) => args[0])).toEqual(["blue", "blue"])
        const marker = waitFor(b1.client, "marker")
        a1!.client.emit("emit", "red", "marker")
        await marker
      })
    })

    it("makes a worker's socket join a room from a plain server (socketsJoin)", async () => {
      const b1 = b.workers[0]!
      plain.server.io.in(b1.client.id!).socketsJoin("green")
      const green = waitFor(b1.client, "green")
      plain.server.io.to("green").emit("green")
      await green
      const found = await plain.server.io.in("green").fetchSockets()
      expect(ids(found)).toEqual([b1.client.id])
      plain.server.io.in(b1.client.id!).socketsLeave("green")
      await eventually(async () => (await plain.server.io.in("green").fetchSockets()).length === 0)
    })

    it("answers fetchSockets from a plain server with every worker's sockets, and from a worker", async () => {
      const everyone = ids([...all.map((worker) => worker.client), plain.client] as Array<{
        id: string
      }>)
      const fromPlain = await plain.server.io.fetchSockets()
      expect(ids(fromPlain)).toEqual(everyone)
      const remote = fromPlain.find((socket) => socket.id === a.workers[1]!.client.id)
      expect(remote?.data).toEqual({ worker: a.workers[1]!.pid })
      expect([...remote!.rooms]).toContain("blue")

      for (const worker of all) {
        const fromWorker = await ask<Array<{ id: string }>>(worker, "fetchSockets", null)
        expect(ids(fromWorker)).toEqual(everyone)
      }
      const red = await ask<Array<{ id: string }>>(b.workers[0]!, "fetchSockets", "red")
      expect(ids(red)).toEqual(ids([a.workers[0]!.client, b.workers[0]!.client] as any))
    })

    it("answers serverSideEmitWithAck with one answer per node, whoever asks", async () => {
      const fromPlain = await plain.server.io.serverSideEmitWithAck("maybe", [])
      expect(fromPlain).toHaveLength(3)
      expect(fromPlain).toEqual(
        expect.arrayContaining(all.map((worker) => ({ from: "worker", pid: worker.pid }))),
      )
      for (const worker of all) {
        const answers = await ask<Array<unknown>>(worker, "ask", "maybe", [])
        expect(answers).toHaveLength(3)
        expect(answers).toContainEqual({ from: "plain", port: plain.server.port })
        for (const other of all.filter((w) => w !== worker)) {
          expect(answers).toContainEqual({ from: "worker", pid: other.pid })
        }
      }
    })

    it("collects the acknowledgements of every client for a broadcast with acks, whoever sends it", async () => {
      const everyone = [...all.map((worker) => worker.client), plain.client]
      for (const client of everyone) {
        client.on("question", (ack: (answer: unknown) => void) => ack(client.id))
      }
      const fromPlain = await plain.server.io.timeout(5_000).emitWithAck("question")
      expect([...fromPlain].sort()).toEqual(ids(everyone as any))
      const fromWorker = await ask<Array<string>>(b.workers[0]!, "emitWithAck", "question")
      expect([...fromWorker].sort()).toEqual(ids(everyone as any))
      for (const client of everyone) client.off("question")
    })

    it("delivers the @socket.io/postgres-emitter 0.1.1 emitter's broadcasts (no nsp) to the workers", async () => {
      const emitter = new UpstreamEmitter(pool, "/", { channelPrefix: id, tableName: id })
      // "red": a1 and b1, not a2.
      const received = [a.workers[0]!, b.workers[0]!].map((worker) =>
        waitFor(worker.client, "legacy"),
      )
      await expectNoEvent(a.workers[1]!.client, "legacy", async () => {
        emitter.to("red").emit("legacy", "from 0.1.1")
        expect((await Promise.all(received)).map((args) => args[0])).toEqual([
          "from 0.1.1",
          "from 0.1.1",
        ])
        const marker = waitFor(a.workers[1]!.client, "marker")
        emitter.emit("marker")
        await marker
      })
    })

    it("skips malformed notifications instead of handing them to the workers", async () => {
      const channel = `${id}#/`
      // A BROADCAST without data, and one whose packet is no event: each would throw in a worker.
      for (const junk of [
        { uid: "junk", nsp: "/", type: 3 },
        { uid: "junk", nsp: "/", type: 3, data: { opts: { rooms: [], except: [] }, packet: {} } },
        { uid: "junk", nsp: "/", type: 7, data: { opts: {} } },
      ]) {
        await pool.query("SELECT pg_notify($1, $2)", [channel, JSON.stringify(junk)])
      }
      const markers = all.map((worker) => waitFor(worker.client, "marker"))
      plain.server.io.emit("marker")
      await Promise.all(markers)
      // Every worker is still up and part of the cluster.
      for (const worker of all) expect(await ask<number>(worker, "serverCount")).toBeGreaterThan(1)
    })

    it("refuses to run in a worker, with a message that says where it belongs", () => {
      const first = a.workers.find((worker) => worker.id === 1)
      expect(first?.notPrimary).toMatch(/cluster\.isPrimary is false/)
    })

    // Last: it leaves the shared cluster without clients.
    it("disconnects sockets across the cluster, from a plain server and from a worker", async () => {
      const [a1, a2] = a.workers as [Worker, Worker]
      const b1 = b.workers[0]!
      const red = [a1, b1].map((worker) => waitFor(worker.client, "disconnect"))
      plain.server.io.in("red").disconnectSockets(true)
      await Promise.all(red)
      expect(ids(await plain.server.io.fetchSockets())).toEqual(
        ids([a2.client, plain.client] as any),
      )
      const blue = [a2.client, plain.client].map((client) => waitFor(client, "disconnect"))
      a2.client.emit("disconnectSockets", "blue")
      await Promise.all(blue)
      await eventually(async () => (await plain.server.io.fetchSockets()).length === 0)
    })
  })

  describe("with a secret (issue 16)", () => {
    const timing = { heartbeatInterval: 300, heartbeatTimeout: 5_000, requestsTimeout: 5_000 }
    const secret = "the-secret-of-this-primary-suite"
    const id = suiteId("primary_signed")
    let a: Primary
    let plain: { server: TestServer; client: ClientSocket }

    beforeAll(async () => {
      tables.push(id)
      a = await startPrimary(id, timing, 2, [], secret)
      plain = await startPlain(id, timing, "", secret)
      await clusterHasSize(a.workers, [plain.server], 3)
    })

    afterAll(cleanUp)

    it("relays signed traffic both ways, binary included, and drops a forged broadcast", async () => {
      const received = a.workers.map((worker) => waitFor(worker.client, "hello"))
      plain.server.io.emit("hello", "from plain", Buffer.from([1, 2, 3]))
      for (const args of await Promise.all(received)) {
        expect(args[0]).toBe("from plain")
        expect(Buffer.from(args[1] as ArrayBuffer)).toEqual(Buffer.from([1, 2, 3]))
      }
      const fromWorker = waitFor(plain.client, "from-worker")
      a.workers[0]!.client.emit("emit", null, "from-worker", 1)
      expect(await fromWorker).toEqual([1])
      const forged = JSON.stringify({
        uid: "attacker",
        type: 3,
        nsp: "/",
        data: {
          opts: { rooms: [], except: [] },
          packet: { type: 2, data: ["hello", "forged"], nsp: "/" },
        },
      })
      const worker = a.workers[0]!
      await expectNoEvent(worker.client, "hello", async () => {
        await pool.query("SELECT pg_notify($1, $2)", [`${id}#/`, forged])
        const marker = waitFor(worker.client, "marker")
        plain.server.io.emit("marker")
        await marker
      })
      expect(watcher.faults).toEqual([])
    })
  })

  describe("when a node goes away", () => {
    afterEach(async () => {
      await cleanUp()
      expect(watcher.faults).toEqual([])
    })

    it("drops a SIGKILLed worker at once and ends the requests that waited for it", async () => {
      // heartbeatTimeout and requestsTimeout far above the test's budget: only the primary's
      // announcement of the worker's exit can explain the drop. No periodic heartbeat either: the
      // nodes know each other through the replies to their INITIAL_HEARTBEATs.
      const timing = {
        heartbeatInterval: 30_000,
        heartbeatTimeout: 60_000,
        requestsTimeout: 60_000,
      }
      const id = suiteId("primary_worker")
      tables.push(id)
      const { workers } = await startPrimary(id, timing, 2)
      const { server } = await startPlain(id, timing)
      await clusterHasSize(workers, [server], 3)
      const [survivor, victim] = workers as [Worker, Worker]
      // The victim never answers this one: the request waits for it.
      const pending = server.io.serverSideEmitWithAck("maybe", [victim.pid])

      process.kill(victim.pid, "SIGKILL")

      const answers = await settleWithin(pending, 10_000, "serverSideEmitWithAck")
      expect(answers).toEqual({
        status: "fulfilled",
        value: [{ from: "worker", pid: survivor.pid }],
      })
      await clusterHasSize([survivor], [server], 2, 5_000)
      expect(ids(await server.io.fetchSockets())).toEqual(
        ids([survivor.client, ...clients.slice(-1)] as any),
      )
    })

    it("drops a SIGKILLed plain server after heartbeatTimeout, in the workers too", async () => {
      const timing = { heartbeatInterval: 200, heartbeatTimeout: 1_000, requestsTimeout: 5_000 }
      const id = suiteId("primary_server")
      tables.push(id)
      const node = runFixture("node.ts", {
        DATABASE_URL: databaseUrl(),
        NODE_KIND: "ours",
        NODE_SETTINGS: JSON.stringify({
          id,
          options: {
            heartbeatInterval: timing.heartbeatInterval,
            heartbeatTimeout: timing.heartbeatTimeout,
          },
        }),
      })
      scripts.push(node)
      const [{ workers }, { server }] = await Promise.all([
        startPrimary(id, timing, 2),
        startPlain(id, timing),
        node.waitForMessage("ready"),
      ])
      await clusterHasSize(workers, [server], 4)
      const [asker, other] = workers as [Worker, Worker]
      // The child has no "maybe" handler: it never answers, the request waits for it. The
      // workers give up after 5 s (socket.io-adapter's fixed timeout), so only the drop ends it.
      const pending = ask<Array<unknown>>(asker, "ask", "maybe", [])

      node.child.kill("SIGKILL")
      expect((await node.exited).signal).toBe("SIGKILL")

      const answers = await settleWithin(pending, 10_000, "serverSideEmitWithAck in a worker")
      expect(answers.status).toBe("fulfilled")
      expect((answers as { value: Array<unknown> }).value).toEqual(
        expect.arrayContaining([
          { from: "worker", pid: other.pid },
          { from: "plain", port: server.port },
        ]),
      )
      expect((answers as { value: Array<unknown> }).value).toHaveLength(2)
      await clusterHasSize(workers, [server], 3)
    })

    it("announces its worker's departure on close() and leaves nothing running", async () => {
      // As above, with the plain server started first: it learns of the worker from its
      // INITIAL_HEARTBEAT, the worker of it from the reply.
      const timing = {
        heartbeatInterval: 30_000,
        heartbeatTimeout: 60_000,
        requestsTimeout: 60_000,
      }
      const id = suiteId("primary_close")
      tables.push(id)
      const { server } = await startPlain(id, timing)
      const { script, workers } = await startPrimary(id, timing, 1)
      await clusterHasSize(workers, [server], 2)

      script.send("close")
      await script.waitForMessage("closed")
      await eventually(async () => (await server.io.of("/").adapter.serverCount()) === 1, {
        message: "the plain server counts only itself",
      })
      script.send("exit")
      expect(await exitWithin(script, 10_000)).toEqual({ code: 0, signal: null })
    })
  })

  describe("options", () => {
    it("throws errors that name a bad option or a missing pool, and closes cleanly", async () => {
      expect(() => setupPrimary(pool, { heartbeatInterval: -1 })).toThrow(/heartbeatInterval/)
      expect(() => setupPrimary(pool, { tableName: 42 as never })).toThrow(/tableName/)
      expect(() => setupPrimary(undefined as never)).toThrow(/pool must be a pg.Pool/)
      const handle = setupPrimary(pool, { channelPrefix: suiteId("primary_options") })
      await handle.close()
      await handle.close()
    })
  })
})
