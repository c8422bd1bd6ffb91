/**
 * `npm run bench:placement`: how rendezvous placement (`src/Placement.ts`) spreads channels over
 * several PostgreSQL servers, how many move when a server is added, and what a placement costs.
 * Pure computation, no PostgreSQL; a few seconds.
 *
 *   npm run bench:placement
 *   npm run bench:placement -- --json      the figures as JSON on stdout
 *
 * For 1,000 namespace channels and for 10,000 room channels of one namespace: the count per server
 * over 2 and 3 servers, the largest deviation from the mean, and the channels moved when a third
 * server joins two (all of them onto the new one, by construction: checked here too). Then the
 * cost of one placement in ns: uncached (every server's weight hashed) and cached, for 1, 2, 3
 * and 5 servers.
 */
import { parseArgs } from "node:util"
import { channelName, roomChannelName } from "../src/Channel.js"
import * as Placement from "../src/Placement.js"

const { values } = parseArgs({ options: { json: { type: "boolean", default: false } } })

const SERVERS = [
  "pg-a:5432/app",
  "pg-b:5432/app",
  "pg-c:5432/app",
  "pg-d:5432/app",
  "pg-e:5432/app",
]

const sets = {
  "1,000 namespaces": Array.from({ length: 1000 }, (_, i) =>
    channelName("socket.io", `/tenant-${i}`),
  ),
  "10,000 rooms of one namespace": Array.from({ length: 10_000 }, (_, i) =>
    roomChannelName("socket.io", "/", `room-${i}`),
  ),
}

interface Spread {
  readonly servers: number
  readonly counts: Record<string, number>
  readonly mean: number
  /** The largest |count - mean| / mean, in percent. */
  readonly maxDeviationPercent: number
}

const spread = (names: ReadonlyArray<string>, channels: ReadonlyArray<string>): Spread => {
  const placement = Placement.make(names, { cacheSize: 0 })
  const counts: Record<string, number> = Object.fromEntries(names.map((n) => [n, 0]))
  for (const channel of channels) counts[placement.nameOf(channel)]!++
  const mean = channels.length / names.length
  const maxDeviation = Math.max(...Object.values(counts).map((n) => Math.abs(n - mean) / mean))
  return {
    servers: names.length,
    counts,
    mean,
    maxDeviationPercent: Math.round(maxDeviation * 1000) / 10,
  }
}

const movedOnAdd = (channels: ReadonlyArray<string>) => {
  const before = Placement.make(SERVERS.slice(0, 2), { cacheSize: 0 })
  const after = Placement.make(SERVERS.slice(0, 3), { cacheSize: 0 })
  let moved = 0
  let elsewhere = 0
  for (const channel of channels) {
    if (before.nameOf(channel) === after.nameOf(channel)) continue
    moved++
    if (after.nameOf(channel) !== SERVERS[2]) elsewhere++
  }
  return {
    moved,
    movedPercent: Math.round((moved / channels.length) * 1000) / 10,
    idealPercent: Math.round(1000 / 3) / 10,
    movedElsewhereThanTheNewServer: elsewhere,
  }
}

/** ns per call of `indexOf` over `channels`, the best of a few rounds (after a warm-up). */
const cost = (placement: Placement.Placement, channels: ReadonlyArray<string>, rounds = 5) => {
  let sink = 0
  let best = Infinity
  for (let round = 0; round <= rounds; round++) {
    const start = process.hrtime.bigint()
    for (const channel of channels) sink += placement.indexOf(channel)
    const ns = Number(process.hrtime.bigint() - start) / channels.length
    if (round > 0) best = Math.min(best, ns)
  }
  if (sink < 0) console.log(sink)
  return Math.round(best)
}

const costs = () => {
  const channels = sets["10,000 rooms of one namespace"]
  return [1, 2, 3, 5].map((servers) => {
    const names = SERVERS.slice(0, servers)
    const cached = Placement.make(names, { cacheSize: channels.length })
    cost(cached, channels, 0) // fills the cache
    return {
      servers,
      uncachedNs: cost(Placement.make(names, { cacheSize: 0 }), channels),
      cachedNs: cost(cached, channels),
    }
  })
}

const results = {
  spread: Object.fromEntries(
    Object.entries(sets).map(([label, channels]) => [
      label,
      {
        over2: spread(SERVERS.slice(0, 2), channels),
        over3: spread(SERVERS.slice(0, 3), channels),
        thirdServerAdded: movedOnAdd(channels),
      },
    ]),
  ),
  costPerPlacement: costs(),
}

if (values.json) {
  console.log(JSON.stringify(results, null, 2))
} else {
  for (const [label, r] of Object.entries(results.spread)) {
    console.log(`\n${label}`)
    for (const s of [r.over2, r.over3]) {
      const counts = Object.entries(s.counts)
        .map(([name, n]) => `${name} ${n}`)
        .join(", ")
      console.log(
        `  over ${s.servers} servers: ${counts} (mean ${Math.round(s.mean)}, max deviation ${s.maxDeviationPercent}%)`,
      )
    }
    const m = r.thirdServerAdded
    console.log(
      `  a third server added: ${m.moved} channels moved (${m.movedPercent}%, ideal ${m.idealPercent}%), ` +
        `${m.movedElsewhereThanTheNewServer} of them elsewhere than onto the new server`,
    )
  }
  console.log("\ncost of one placement (10,000 distinct room channels, best of 5 rounds)")
  for (const c of results.costPerPlacement) {
    console.log(`  ${c.servers} server(s): uncached ${c.uncachedNs} ns, cached ${c.cachedNs} ns`)
  }
}
