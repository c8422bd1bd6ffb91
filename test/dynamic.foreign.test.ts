/**
 * A 0.5.0 node in a namespace of a dynamic-mode server: it listens on the namespace channel only,
 * so single-room broadcasts never reach its clients. The server says so in its log, once.
 */
import { format } from "node:util"
import createDebug from "debug"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { eventually } from "./utils/cluster.js"
import { type Cluster, startCluster } from "./utils/nodes.js"

const lines: Array<string> = []

describe("a 0.5.0 node in a dynamic cluster", () => {
  let cluster: Cluster | undefined
  const previous = createDebug.log
  beforeAll(() => {
    createDebug.enable("socket.io-postgres-effect:*")
    createDebug.log = (...args: Array<unknown>) => void lines.push(format(...args))
  })
  afterAll(async () => {
    await cluster?.close()
    createDebug.log = previous
    createDebug.disable()
  })

  it("is warned about by the dynamic server, naming the namespace and the way out", async () => {
    cluster = await startCluster("dynforeign", {
      nodes: ["ours", "0.5.0"],
      options: { subscriptionMode: "dynamic" },
    })
    const warning = () => lines.filter((line) => line.includes('subscriptionMode "dynamic"'))
    await eventually(() => warning().length > 0, { timeout: 10_000 })
    expect(warning()[0]).toContain(`uid ${cluster.nodes[1]!.uid()}`)
    expect(warning()[0]).toContain('namespace "/"')
    expect(warning()[0]).toContain('need subscriptionMode "static"')
  })

  it("is not warned about by a static server", async () => {
    await cluster?.close()
    lines.length = 0
    cluster = await startCluster("dynforeign_static", {
      nodes: ["ours", "0.5.0"],
      options: { subscriptionMode: "static" },
    })
    await cluster.waitForMembers()
    // Both counted each other: the 0.5.0 node's heartbeats were heard, and judged.
    expect(lines.filter((line) => line.includes("subscriptionMode"))).toEqual([])
  })
})
