/**
 * Per-node response channels: a node of ours asks with `reply: 1` once its private channel is
 * listened on, and nodes of ours answer its `fetchSockets` and `serverSideEmitWithAck` there, where
 * only it hears them; the namespace's channel carries the questions and no answer. A 0.5.0 node
 * ignores the mark and answers on the namespace's channel, which the asker still hears.
 */
import { afterEach, describe, expect, it } from "vitest"
import { channelName, privateChannelName } from "../src/Channel.js"
import { Replies } from "../src/internal/replies.js"
import * as Protocol from "../src/Protocol.js"
import { eventually } from "./utils/cluster.js"
import { type Cluster, startCluster } from "./utils/nodes.js"
import { rawListener } from "./utils/postgres.js"

const { MessageType } = Protocol

const ANSWERS: ReadonlyArray<number> = [
  MessageType.FETCH_SOCKETS_RESPONSE,
  MessageType.SERVER_SIDE_EMIT_RESPONSE,
]

/** The type and uid of each recorded notification of `channel` (every one here is inline JSON). */
const messagesOn = (
  received: ReadonlyArray<{ readonly channel: string; readonly payload: string }>,
  channel: string,
) =>
  received
    .filter((n) => n.channel === channel)
    .map((n) => JSON.parse(n.payload) as { type: number; uid: string; reply?: number })

describe("per-node response channels", () => {
  let cluster: Cluster | undefined
  let listener: Awaited<ReturnType<typeof rawListener>> | undefined
  afterEach(async () => {
    await listener?.close()
    await cluster?.close()
    listener = cluster = undefined
  })

  const privateReady = (c: Cluster) =>
    eventually(
      () =>
        c.running().every((n) => n.kind !== "ours" || n.adapter().listenStatus().privateChannel),
      { message: "every node of ours listens on its private channel" },
    )

  it("answers a node of ours on its private channel, and nothing on the namespace's", async () => {
    cluster = await startCluster("replies_ours")
    await cluster.connectEach()
    await privateReady(cluster)
    const [asker, ...others] = cluster.nodes
    for (const node of others)
      node.io.on("ping", (_: unknown, ack: (v: string) => void) => ack("pong"))
    const namespace = channelName(cluster.id, "/")
    const own = privateChannelName(cluster.id, asker!.uid())
    listener = await rawListener([namespace, own])

    const sockets = await asker!.io.fetchSockets()
    expect(sockets).toHaveLength(3)
    const answers = await asker!.io.serverSideEmitWithAck("ping", 1)
    expect(answers).toEqual(["pong", "pong"])

    // Every answer recorded, wherever it went: 2 nodes x 2 requests.
    const recorded = () =>
      listener!.received.filter((n) => ANSWERS.includes(JSON.parse(n.payload).type))
    await eventually(() => recorded().length === 4, { message: "4 answers recorded" })
    expect(messagesOn(listener.received, own).filter((m) => ANSWERS.includes(m.type))).toHaveLength(
      4,
    )
    const onNamespace = messagesOn(listener.received, namespace)
    const questions = onNamespace.filter(
      (m) => m.type === MessageType.FETCH_SOCKETS || m.type === MessageType.SERVER_SIDE_EMIT,
    )
    expect(questions.map((m) => m.reply)).toEqual([1, 1])
    expect(onNamespace.filter((m) => ANSWERS.includes(m.type))).toEqual([])
    const answerers = messagesOn(listener.received, own).map((m) => m.uid)
    expect(new Set(answerers)).toEqual(new Set(others.map((n) => n.uid())))
  })

  it("gets the answers of a 0.5.0 node, which it gives on the namespace's channel", async () => {
    cluster = await startCluster("replies_mixed", { nodes: ["ours", "ours", "0.5.0"] })
    await cluster.connectEach()
    await privateReady(cluster)
    const [asker, ours, upstream] = cluster.nodes
    for (const node of [ours!, upstream!]) {
      node.io.on("ping", (_: unknown, ack: (v: string) => void) => ack(node.kind))
    }
    const namespace = channelName(cluster.id, "/")
    listener = await rawListener([namespace, privateChannelName(cluster.id, asker!.uid())])

    expect(await asker!.io.fetchSockets()).toHaveLength(3)
    expect((await asker!.io.serverSideEmitWithAck("ping", 1)).sort()).toEqual(["0.5.0", "ours"])
    // 0.5.0's answers on the namespace's channel, ours on the private one: once all 4 are in.
    await eventually(
      () =>
        listener!.received.filter((n) => ANSWERS.includes(JSON.parse(n.payload).type)).length === 4,
      { message: "4 answers recorded" },
    )
    const answersOnNamespace = messagesOn(listener.received, namespace)
      .filter((m) => ANSWERS.includes(m.type))
      .map((m) => m.uid)
    expect(new Set(answersOnNamespace)).toEqual(new Set([upstream!.uid()]))
  })

  it("answers a node of ours on the namespace's channel when it asks without the mark", async () => {
    // A 0.5.0 asker: its requests have no mark, and ours answer where it listens.
    cluster = await startCluster("replies_upstream", { nodes: ["0.5.0", "ours", "ours"] })
    await cluster.connectEach()
    await privateReady(cluster)
    const [asker] = cluster.nodes
    const sockets = await asker!.io.fetchSockets()
    expect(sockets).toHaveLength(3)
  })
})

describe("Replies", () => {
  const request = (requestId: string | undefined, reply?: number) =>
    ({
      uid: "asker",
      nsp: "/",
      type: MessageType.SERVER_SIDE_EMIT,
      data: { ...(requestId === undefined ? {} : { requestId }), packet: ["e"] },
      ...(reply === undefined ? {} : { reply }),
    }) as Protocol.Message

  it("remembers marked requests until answered once", () => {
    const replies = new Replies(1_000)
    replies.note(request("a", 1), 0)
    replies.note(request("b"), 0)
    replies.note(request("c", 2), 0)
    replies.note(request(undefined, 1), 0)
    expect(replies.take("a")).toBe(true)
    expect(replies.take("a")).toBe(false)
    expect(replies.take("b")).toBe(false)
    expect(replies.take("c")).toBe(false)
    expect(replies.take(undefined)).toBe(false)
  })

  it("forgets requests never answered once their askers stopped waiting", () => {
    const replies = new Replies(1_000)
    for (let i = 0; i < 100; i++) replies.note(request(`old-${i}`, 1), 0)
    replies.note(request("new", 1), 1_001)
    expect(replies.size).toBe(1)
    expect(replies.take("new")).toBe(true)
  })
})
