/**
 * The README's TypeScript blocks compile against the package as it is, and its SQL runs, so the
 * docs cannot rot (the runnable examples run in readme.plain.test.ts and readme.effect.test.ts).
 * A block without imports is a fragment of the one before it in spirit: it gets a prelude that
 * declares what such fragments use (`pool`, `io`, `httpServer`, ...).
 */
import * as fs from "node:fs"
import * as path from "node:path"
import pg from "pg"
import ts from "typescript"
import { describe, expect, inject, it } from "vitest"

const root = path.resolve(import.meta.dirname, "..")
const readme = fs.readFileSync(path.join(root, "README.md"), "utf8")

/** Every ```ts block of the README, with the line it starts on. */
const blocks = [...readme.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((match) => ({
  line: readme.slice(0, match.index).split("\n").length,
  code: match[1]!,
}))

/**
 * Every ```sql block: the DDL a user runs when the adapter may not create its tables. The
 * least-privilege role's block needs the recovery tables and a database named as the app's:
 * `test/security.role.test.ts` runs it, beside them, for real.
 */
const sqlBlocks = [
  ...readme.matchAll(/^(<!-- least-privilege-role -->\n\n)?```sql\n([\s\S]*?)^```$/gm),
]
  .filter((match) => match[1] === undefined)
  .map((match) => match[2]!)

const PRELUDE_IMPORTS = `import { createServer } from "node:http"
import pg from "pg"
import { Server } from "socket.io"
import { createAdapter, Emitter } from "socket.io-postgres-effect"
void createAdapter, void Emitter, void Server, void createServer, void pg
`

/** What fragments use without declaring it (only the names the fragment does not declare). */
const DECLARED: Record<string, string> = {
  pool: "declare const pool: pg.Pool",
  httpServer: "declare const httpServer: ReturnType<typeof createServer>",
  io: "declare const io: Server",
}

const prelude = (code: string) =>
  PRELUDE_IMPORTS +
  Object.entries(DECLARED)
    .filter(([name]) => !new RegExp(`\\b(const|let|var) ${name}\\b`).test(code))
    .map(([, declaration]) => declaration)
    .join("\n")

const isModule = (code: string) => /^(import|export) /m.test(code)

describe("README", () => {
  it("has TypeScript blocks to check", () => {
    expect(blocks.length).toBeGreaterThan(2)
  })

  it("compiles every TypeScript block against the package's sources", () => {
    const dir = fs.mkdtempSync(path.join(root, ".tmp-readme-"))
    try {
      const files = blocks.map((block, i) => {
        const file = path.join(dir, `block-${i}-line-${block.line}.ts`)
        const code = isModule(block.code)
          ? block.code
          : `${prelude(block.code)}\n${block.code}\nexport {}\n`
        fs.writeFileSync(file, code)
        return file
      })
      const program = ts.createProgram(files, {
        target: ts.ScriptTarget.ES2022,
        module: ts.ModuleKind.NodeNext,
        moduleResolution: ts.ModuleResolutionKind.NodeNext,
        lib: ["lib.es2022.d.ts"],
        types: ["node"],
        strict: true,
        noEmit: true,
        skipLibCheck: true,
        esModuleInterop: true,
        baseUrl: root,
        paths: {
          "socket.io-postgres-effect": ["src/index.ts"],
          "socket.io-postgres-effect/effect": ["src/effect.ts"],
        },
      })
      const errors = ts
        .getPreEmitDiagnostics(program)
        .filter((d) => d.file === undefined || d.file.fileName.startsWith(dir))
        .map((d) => {
          const where =
            d.file === undefined || d.start === undefined
              ? ""
              : `${path.basename(d.file.fileName)}:${d.file.getLineAndCharacterOfPosition(d.start).line + 1}: `
          return where + ts.flattenDiagnosticMessageText(d.messageText, "\n")
        })
      expect(errors).toEqual([])
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  }, 60_000)

  it("runs every SQL block, in a schema of its own, rolled back", async () => {
    expect(sqlBlocks.length).toBeGreaterThanOrEqual(2)
    const client = new pg.Client({ connectionString: inject("databaseUrl") })
    await client.connect()
    try {
      for (const sql of sqlBlocks) {
        await client.query("BEGIN")
        try {
          await client.query("CREATE SCHEMA readme_sql")
          await client.query("SET LOCAL search_path TO readme_sql")
          await client.query(sql)
        } finally {
          await client.query("ROLLBACK")
        }
      }
    } finally {
      await client.end()
    }
  })
})
