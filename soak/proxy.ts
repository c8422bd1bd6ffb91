/**
 * The soak's TCP fault proxy (`test/utils/proxy.ts`) in a process of its own, driven by `soak.ts`
 * over IPC: the orchestrator's own work (collecting logs, judging windows) must never hold up the
 * servers' traffic to PostgreSQL, as it would if the proxy shared its event loop.
 */
import { serve } from "../bench/ipc.js"
import { startProxy, type TcpProxy } from "../test/utils/proxy.js"

let proxy: TcpProxy | undefined

const running = (): TcpProxy => {
  if (proxy === undefined) throw new Error("the proxy is not started")
  return proxy
}

serve({
  /** Starts forwarding to `target` (a connection string); returns the proxy's connection string. */
  async start(args: { target: string }) {
    proxy = await startProxy({ target: args.target })
    return { url: proxy.url, port: proxy.port }
  },

  /** Black-holes every open connection (new ones pass); returns how many. */
  blackHole: () => running().blackHole(),

  /** Resets the black-holed connections (as TCP would give up on them) and lifts every fault. */
  lift() {
    const reset = running().reset((connection) => connection.blackHoled)
    running().restore()
    return reset
  },

  latency(args: { delayMs: number }) {
    running().latency({ delayMs: args.delayMs })
    return null
  },

  async close() {
    await proxy?.close()
    proxy = undefined
    return null
  },
})
