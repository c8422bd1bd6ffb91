/**
 * The soak's output: the progress line of a window, the final tables, and the SVG timeline
 * (hand-written: delivery over time with the fault windows as bands, servers' RSS, PostgreSQL
 * connections, rows of the attachments table).
 */
import {
  type Accounting,
  deliveryTimeline,
  type Rules,
  type SoakLog,
  type Tally,
  type WindowReport,
} from "./accounting.js"

const n = (value: number) => value.toLocaleString("en-US")

const tallyText = (t: Tally) =>
  `sent ${n(t.sent)}, owed ${n(t.expected)}, delivered ${n(t.delivered)}, lost ${n(t.lost)}, ` +
  `late ${n(t.late)}, ` +
  `dup ${n(t.duplicated)}, reordered ${n(t.reordered)}`

/** One line per window, printed as it closes. */
export const windowLine = (w: WindowReport): string =>
  `window ${w.index} (${w.fault ?? "start"}): rec ${tallyText(w.rec)} | plain ${tallyText(w.plain)}` +
  ` | lost outside faults ${w.lostOutsideFaults}` +
  ` | requests ${w.requests.ok} ok, ${w.requests.partial} partial, ${w.requests.failed} failed`

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)}`
const msText = (ms: number | null) => (ms === null ? "never" : `${Math.round(ms)}`)

const table = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>) => {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
  const line = (cells: ReadonlyArray<string>) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ")
  return [line(header), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map(line)].join("\n")
}

/** The final report: windows, faults, verdict. */
export const formatReport = (result: Accounting, failures: ReadonlyArray<string>): string => {
  const start = result.windows[0]?.from ?? 0
  const windows = table(
    [
      "window",
      "from s",
      "rec sent",
      "owed",
      "delivered",
      "lost",
      "late",
      "dup",
      "ooo",
      "plain sent",
      "owed",
      "delivered",
      "lost",
      "late",
      "dup",
      "ooo",
      "lost outside",
    ],
    result.windows.map((w) => [
      `${w.index} ${w.fault ?? "start"}`,
      seconds(w.from - start),
      n(w.rec.sent),
      n(w.rec.expected),
      n(w.rec.delivered),
      n(w.rec.lost),
      n(w.rec.late),
      n(w.rec.duplicated),
      n(w.rec.reordered),
      n(w.plain.sent),
      n(w.plain.expected),
      n(w.plain.delivered),
      n(w.plain.lost),
      n(w.plain.late),
      n(w.plain.duplicated),
      n(w.plain.reordered),
      n(w.lostOutsideFaults),
    ]),
  )
  const faults = table(
    [
      "fault",
      "at s",
      "lasted ms",
      "recovery p50 ms",
      "max ms",
      "window s",
      "lost rec (not stored)",
      "lost plain",
      "late rec / plain",
    ],
    result.faults.map((f) => [
      f.kind,
      seconds(f.start - start),
      `${Math.round(f.end - f.start)}`,
      msText(f.recoveryP50Ms),
      msText(f.recoveryMaxMs),
      seconds(f.windowTo - f.windowFrom),
      `${n(f.lost.rec)} (${n(f.lost.recNotStored)})`,
      n(f.lost.plain),
      `${n(f.late.rec)} / ${n(f.late.plain)}`,
    ]),
  )
  const totals = `totals: rec ${tallyText(result.totals.rec)}\n        plain ${tallyText(result.totals.plain)}`
  const blips =
    `transport closes: rec ${result.blips.rec} (${result.blips.recRestored} restored), ` +
    `plain ${result.blips.plain}`
  const misses = result.recoveryMisses
    .slice(0, 5)
    .flatMap((miss) =>
      Object.entries(miss.streams).map(
        ([stream, m]) =>
          `  ${miss.client} missed ${m.count} of ${stream}: seq ${m.firstSeq}..${m.lastSeq}, sent ` +
          `${seconds(m.firstT - start)}..${seconds(m.lastT - start)} s`,
      ),
    )
  const verdict =
    failures.length === 0
      ? "PASS: every rule held"
      : `FAIL:\n${failures.map((f) => `  - ${f}`).join("\n")}`
  return [
    windows,
    "",
    faults,
    "",
    totals,
    blips,
    ...(misses.length > 0
      ? ["", "stored packets missed by recovery clients (first 5):", ...misses]
      : []),
    "",
    verdict,
  ].join("\n")
}

// ─── SVG ──────────────────────────────────────────────────────────────────────────────────────

const WIDTH = 1000
const LEFT = 70
const RIGHT = 20
const PANEL = 150
const GAP = 40
/** Room for the title above the first panel. */
const TOP = 60
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"]

const escape = (text: string) =>
  text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")

interface Series {
  readonly label: string
  readonly points: ReadonlyArray<{ readonly at: number; readonly value: number | null }>
}

/** The timeline: four panels sharing the time axis, fault windows shaded in each. */
export const renderSvg = (log: SoakLog, result: Accounting, rules: Rules): string => {
  const from = log.startedAt
  const to = Math.max(log.trafficEnd, from + 1)
  const x = (t: number) => LEFT + ((t - from) / (to - from)) * (WIDTH - LEFT - RIGHT)
  const parts: Array<string> = []
  const timeline = deliveryTimeline(log, rules, 1000)
  const ratio = (pair: [number, number]) => (pair[0] === 0 ? null : (100 * pair[1]) / pair[0])
  const slots = Array.from({ length: log.servers }, (_, i) => i)
  const panels: Array<{ title: string; unit: string; series: Array<Series>; max?: number }> = [
    {
      title: "owed deliveries made, by send time (1 s buckets)",
      unit: "%",
      max: 100,
      series: (["rec", "plain"] as const).map((cluster) => ({
        label: cluster === "rec" ? "with recovery" : "without recovery",
        points: timeline.map((b) => ({ at: b.at, value: ratio(b[cluster]) })),
      })),
    },
    {
      title: "RSS of each server process",
      unit: "MB",
      series: slots.map((slot) => ({
        label: `s${slot}`,
        points: log.samples.map((s) => ({ at: s.at, value: s.rssMb[slot]?.mb ?? null })),
      })),
    },
    {
      title: "PostgreSQL connections of each server (pool + LISTEN)",
      unit: "",
      series: slots.map((slot) => ({
        label: `s${slot}`,
        points: log.samples.map((s) => ({ at: s.at, value: s.connections?.[slot] ?? null })),
      })),
    },
    {
      title: "rows of the attachments table",
      unit: "",
      series: [
        {
          label: "rows",
          points: log.samples.map((s) => ({ at: s.at, value: s.attachmentRows })),
        },
      ],
    },
  ]
  const height = TOP + panels.length * (PANEL + GAP)
  panels.forEach((panel, index) => {
    const top = TOP + index * (PANEL + GAP)
    const values = panel.series.flatMap((s) =>
      s.points.flatMap((p) => (p.value === null ? [] : [p.value])),
    )
    const max = panel.max ?? Math.max(1, ...values) * 1.1
    const y = (v: number) => top + PANEL - (v / max) * PANEL
    parts.push(
      `<text x="${LEFT}" y="${top - 8}" font-size="13" font-weight="bold">${escape(panel.title)}</text>`,
    )
    for (const fault of result.faults) {
      const x0 = Math.max(LEFT, x(fault.windowFrom))
      const x1 = Math.min(WIDTH - RIGHT, x(fault.windowTo))
      parts.push(
        `<rect x="${x0.toFixed(1)}" y="${top}" width="${Math.max(1, x1 - x0).toFixed(1)}" height="${PANEL}" fill="#d62728" fill-opacity="0.12"/>`,
        `<line x1="${x(fault.start).toFixed(1)}" x2="${x(fault.start).toFixed(1)}" y1="${top}" y2="${top + PANEL}" stroke="#d62728" stroke-width="1"/>`,
      )
      if (index === 0) {
        parts.push(
          `<text x="${(x(fault.start) + 2).toFixed(1)}" y="${top + 12}" font-size="10" fill="#d62728">${escape(fault.kind)}</text>`,
        )
      }
    }
    parts.push(
      `<rect x="${LEFT}" y="${top}" width="${WIDTH - LEFT - RIGHT}" height="${PANEL}" fill="none" stroke="#999"/>`,
      `<text x="${LEFT - 6}" y="${top + 10}" font-size="10" text-anchor="end">${Math.round(max)}${panel.unit}</text>`,
      `<text x="${LEFT - 6}" y="${top + PANEL}" font-size="10" text-anchor="end">0</text>`,
    )
    panel.series.forEach((series, i) => {
      let d = ""
      let pen = false
      for (const p of series.points) {
        if (p.value === null || p.at < from || p.at > to) {
          pen = false
          continue
        }
        d += `${pen ? "L" : "M"}${x(p.at).toFixed(1)},${y(p.value).toFixed(1)}`
        pen = true
      }
      const color = COLORS[i % COLORS.length]!
      parts.push(`<path d="${d}" fill="none" stroke="${color}" stroke-width="1.5"/>`)
      const legendX = WIDTH - RIGHT - (panel.series.length - i) * 110
      parts.push(
        `<text x="${legendX}" y="${top - 8}" font-size="11" fill="${color}">— ${escape(series.label)}</text>`,
      )
    })
    const ticks = 10
    for (let i = 0; i <= ticks; i++) {
      const t = from + ((to - from) * i) / ticks
      parts.push(
        `<text x="${x(t).toFixed(1)}" y="${top + PANEL + 12}" font-size="9" text-anchor="middle">${Math.round((t - from) / 1000)} s</text>`,
      )
    }
  })
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" font-family="sans-serif">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${LEFT}" y="20" font-size="15" font-weight="bold">socket.io-postgres-effect soak: ${result.verdict.ok ? "pass" : "FAIL"} (fault windows shaded)</text>`,
    ...parts,
    `</svg>`,
    "",
  ].join("\n")
}
