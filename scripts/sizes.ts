/**
 * Lists the functions and classes of `src/` longer than a limit (default 150 lines), longest first.
 * `npx tsx scripts/sizes.ts [limit]`; `test/layout.test.ts` runs it as a check.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import ts from "typescript"

/** A function or class and its length in lines. */
export interface Sized {
  readonly file: string
  readonly name: string
  readonly lines: number
}

const nameOf = (node: ts.Node, source: ts.SourceFile): string => {
  const named = node as ts.Node & { name?: ts.Node }
  if (named.name !== undefined) return named.name.getText(source)
  let parent = node.parent
  // `const make = Effect.gen(function* () {…})`: named after the variable.
  while (
    parent !== undefined &&
    (ts.isCallExpression(parent) || ts.isParenthesizedExpression(parent))
  ) {
    parent = parent.parent
  }
  if (parent !== undefined && ts.isVariableDeclaration(parent)) return parent.name.getText(source)
  if (parent !== undefined && ts.isPropertyAssignment(parent)) return parent.name.getText(source)
  const { line } = source.getLineAndCharacterOfPosition(node.getStart(source))
  return `<anonymous at line ${line + 1}>`
}

/** Every function and class of the `.ts` files under `dir`, with its length. */
export const measure = (dir: string): Array<Sized> => {
  const found: Array<Sized> = []
  const walk = (node: ts.Node, source: ts.SourceFile, file: string) => {
    if (ts.isFunctionLike(node) || ts.isClassLike(node)) {
      const start = source.getLineAndCharacterOfPosition(node.getStart(source)).line
      const end = source.getLineAndCharacterOfPosition(node.getEnd()).line
      found.push({ file, name: nameOf(node, source), lines: end - start + 1 })
    }
    ts.forEachChild(node, (child) => walk(child, source, file))
  }
  const visit = (at: string) => {
    for (const entry of fs.readdirSync(at, { withFileTypes: true })) {
      const full = path.join(at, entry.name)
      if (entry.isDirectory()) visit(full)
      else if (entry.name.endsWith(".ts")) {
        const text = fs.readFileSync(full, "utf8")
        const source = ts.createSourceFile(full, text, ts.ScriptTarget.Latest, true)
        walk(source, source, path.relative(process.cwd(), full))
      }
    }
  }
  visit(dir)
  return found.sort((a, b) => b.lines - a.lines)
}

if (process.argv[1] !== undefined && import.meta.url.endsWith(path.basename(process.argv[1]))) {
  const limit = Number(process.argv[2] ?? 150)
  const over = measure("src").filter((s) => s.lines > limit)
  for (const s of over) console.log(`${s.lines}\t${s.file}\t${s.name}`)
  console.log(
    over.length === 0
      ? `nothing in src/ over ${limit} lines`
      : `${over.length} over ${limit} lines`,
  )
}
