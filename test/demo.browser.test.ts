/**
 * The browser demo (`npm start`), in headless Chromium: the page served by the demo, a client of
 * each of its three servers (child processes) side by side. A message typed in one client reaches
 * the other two; a room message reaches only the room's members; after the LISTEN connection of a
 * server is killed, and after a server is stopped and started again (its client recovering the
 * message it missed), the chat still works across the cluster.
 *
 * Needs Debian's chromium at /usr/bin/chromium (`.ci/run` installs it); skipped without it.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { existsSync, mkdtempSync, rmSync } from "node:fs"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import * as path from "node:path"
import type pg from "pg"
import { type BrowserContext, chromium, type Page } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { freePort } from "./setup/embedded.js"
import { databaseUrl, dropTable, makePool, suiteId } from "./utils/postgres.js"

// What the page functions below use of the DOM (the project compiles without the DOM library).
interface PageElement {
  readonly textContent: string | null
  readonly getAttribute: (name: string) => string | null
}
declare const document: {
  readonly querySelector: (selector: string) => PageElement | null
  readonly querySelectorAll: (selector: string) => Iterable<PageElement>
}

const CHROMIUM = "/usr/bin/chromium"
const hasChromium = existsSync(CHROMIUM)
if (!hasChromium) {
  console.warn(
    `test/demo.browser.test.ts skipped: no ${CHROMIUM} (Debian: apt-get install -y chromium)`,
  )
}

const STEP_MS = 20_000
const repo = path.resolve(import.meta.dirname, "..")
const tsxCli = createRequire(import.meta.url).resolve("tsx/cli")

/** Starts `demo/demo.ts` and resolves with the page's URL once it says to open it. */
const startDemo = (env: NodeJS.ProcessEnv): { child: ChildProcess; url: Promise<string> } => {
  const child = spawn(process.execPath, [tsxCli, "demo/demo.ts"], {
    cwd: repo,
    env: { ...process.env, ...env, NO_COLOR: "1", DEBUG: "" },
    stdio: ["ignore", "pipe", "pipe"],
    // Its own process group: a last-resort kill reaches the demo's servers too.
    detached: true,
  })
  let output = ""
  const url = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`the demo did not serve its page within 90 s:\n${output}`)),
      90_000,
    )
    const onData = (chunk: Buffer) => {
      output += chunk.toString()
      const match = /Open (http:\/\/localhost:\d+\/)/.exec(output)
      if (match) {
        clearTimeout(timer)
        resolve(match[1]!)
      }
    }
    child.stdout!.on("data", onData)
    child.stderr!.on("data", onData)
    child.once("exit", (code, signal) => {
      clearTimeout(timer)
      reject(new Error(`the demo exited (${signal ?? code}) before serving its page:\n${output}`))
    })
  })
  return { child, url }
}

/** Stops the demo as Ctrl-C does; kills its process group if it does not exit in time. */
const stopDemo = async (child: ChildProcess | undefined): Promise<void> => {
  if (child === undefined || child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
  child.kill("SIGINT")
  const timer = setTimeout(() => {
    try {
      process.kill(-child.pid!, "SIGKILL")
    } catch {
      // gone already
    }
  }, 25_000)
  await exited
  clearTimeout(timer)
}

describe.skipIf(!hasChromium)("the browser demo (headless Chromium)", () => {
  const prefix = suiteId("demo_browser")
  let demo: ReturnType<typeof startDemo> | undefined
  let profile: string
  let context: BrowserContext
  let page: Page
  let admin: pg.Pool

  /** Types `text` into client `n` and sends it (to `room`, or everyone). */
  const say = async (n: number, text: string, room = "") => {
    await page.selectOption(`#client-${n} .target`, room)
    await page.fill(`#client-${n} .chat-input`, text)
    await page.click(`#client-${n} .send`)
  }

  /** Waits until client `n`'s chat log shows a message with exactly `text`. */
  const received = (n: number, text: string) =>
    page.waitForFunction(
      ([n, text]) =>
        [...document.querySelectorAll(`#client-${n} .log .text`)].some(
          (element) => element.textContent === text,
        ),
      [n, text] as const,
      { timeout: STEP_MS },
    )

  const messages = (n: number) => page.locator(`#client-${n} .log .text`).allTextContents()

  /** Waits until every server is running, sees the 3 servers and listens, and every client is connected. */
  const clusterUp = () =>
    page.waitForFunction(
      () =>
        [1, 2, 3].every(
          (n) =>
            document.querySelector(`#server-${n} .members`)?.textContent === "3 servers" &&
            document.querySelector(`#server-${n} .listen`)?.getAttribute("data-listening") ===
              "true" &&
            document.querySelector(`#client-${n}`)?.getAttribute("data-state") === "connected",
        ),
      undefined,
      { timeout: 60_000 },
    )

  beforeAll(async () => {
    admin = makePool({ max: 1 })
    demo = startDemo({
      PORT: String(await freePort()),
      DATABASE_URL: databaseUrl(),
      DEMO_TABLE_PREFIX: prefix,
    })
    const url = await demo.url
    profile = mkdtempSync(path.join(tmpdir(), "demo-chromium-"))
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1400, height: 1000 },
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    })
    page = await context.newPage()
    await page.goto(url)
    await clusterUp()
  }, 150_000)

  afterAll(async () => {
    await context?.close()
    if (profile !== undefined) rmSync(profile, { recursive: true, force: true })
    await stopDemo(demo?.child)
    if (admin !== undefined) {
      for (const table of [
        "attachments",
        "recovery_packets",
        "recovery_sessions",
        "recovery_offsets",
      ])
        await dropTable(admin, `${prefix}_${table}`)
      await admin.end()
    }
  }, 60_000)

  it("shows a message typed in one client in all three", async () => {
    await say(1, "hello from client 1")
    for (const n of [1, 2, 3]) await received(n, "hello from client 1")
  })

  it("delivers a room message to the room's members only", async () => {
    for (const n of [1, 3]) {
      await page.fill(`#client-${n} .room-input`, "blue")
      await page.click(`#client-${n} .join`)
      await page.waitForSelector(`#client-${n} .rooms li[data-room="blue"]`, { timeout: STEP_MS })
    }
    await say(3, "for blue only", "blue")
    for (const n of [1, 3]) await received(n, "for blue only")
    // Same sender, same path, sent after: once it is in, the room message would have been too.
    await say(3, "after the blue message")
    await received(2, "after the blue message")
    expect(await messages(2)).not.toContain("for blue only")
  })

  it("disables the freeze button, saying why, when DATABASE_URL is set", async () => {
    const freeze = page.locator("#freeze")
    expect(await freeze.isDisabled()).toBe(true)
    expect(await freeze.getAttribute("title")).toContain("DATABASE_URL")
  })

  it("keeps the chat working after a server's LISTEN connection is killed", async () => {
    const listen = page.locator("#server-2 .listen")
    const before = await listen.getAttribute("data-pid")
    expect(before).toMatch(/^\d+$/)
    await page.click("#server-2 .kill-listen")
    await page.waitForFunction(
      (before) => {
        const element = document.querySelector("#server-2 .listen")
        const pid = element?.getAttribute("data-pid")
        return element?.getAttribute("data-listening") === "true" && pid && pid !== before
      },
      before,
      { timeout: STEP_MS },
    )
    expect(Number(await page.locator("#server-2 .drops").textContent())).toBeGreaterThan(0)
    await say(1, "after the LISTEN kill")
    for (const n of [1, 2, 3]) await received(n, "after the LISTEN kill")
    await say(2, "from the server whose LISTEN was killed")
    for (const n of [1, 2, 3]) await received(n, "from the server whose LISTEN was killed")
  })

  it("recovers a client after its server is stopped and started again", async () => {
    await page.click("#server-2 .stop")
    await page.waitForSelector('#server-2 .state[data-state="stopped"]', { timeout: STEP_MS })
    await page.waitForSelector('#client-2[data-state="disconnected"]', { timeout: STEP_MS })

    await say(1, "while server 2 was down")
    for (const n of [1, 3]) await received(n, "while server 2 was down")

    await page.click("#server-2 .start")
    await page.waitForSelector('#client-2[data-state="connected"][data-recovered="true"]', {
      timeout: 30_000,
    })
    // Connection state recovery: the message it missed, from PostgreSQL.
    await received(2, "while server 2 was down")
    expect(await page.locator("#client-2 .recovered").textContent()).toContain(
      "1 missed message(s) delivered",
    )
    await clusterUp()
    await say(2, "back on server 2")
    for (const n of [1, 2, 3]) await received(n, "back on server 2")
    await say(3, "to the restarted server")
    await received(2, "to the restarted server")

    const screenshot = process.env["DEMO_SCREENSHOT"]
    if (screenshot) await page.screenshot({ path: screenshot, fullPage: true })
  }, 90_000)
})
