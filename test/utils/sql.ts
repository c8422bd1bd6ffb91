/**
 * Reads back a notify script (`internal/statements.ts`): the (channel, payload) pairs of its
 * `NOTIFY "channel", 'payload'` statements, in order, with PostgreSQL's quoting rules (doubled
 * quotes; in `E'…'`, backslash escapes). Anything else in the script throws: a test then sees a
 * statement it does not understand.
 */
export const notificationsOfScript = (
  sql: string,
  asyncCommit: string,
): Array<{ readonly channel: string; readonly payload: string }> => {
  if (!sql.startsWith(asyncCommit)) throw new Error(`not a notify script: ${sql.slice(0, 80)}`)
  const out: Array<{ channel: string; payload: string }> = []
  let at = asyncCommit.length
  const expect = (text: string) => {
    if (!sql.startsWith(text, at))
      throw new Error(`expected ${text} at ${at}: ${sql.slice(at, at + 40)}`)
    at += text.length
  }
  // A quoted token from `at` (its opening quote already passed), `quote` doubled inside.
  const quoted = (quote: string, escapes: boolean): string => {
    let text = ""
    for (;;) {
      const c = sql[at++]
      if (c === undefined) throw new Error("unterminated quote")
      if (c === quote) {
        if (sql[at] !== quote) return text
        at++
        text += quote
      } else if (escapes && c === "\\") {
        const next = sql[at++]
        if (next !== "\\") throw new Error(`unexpected escape \\${next}`)
        text += "\\"
      } else text += c
    }
  }
  while (at < sql.length) {
    expect('; NOTIFY "')
    const channel = quoted('"', false)
    expect(", ")
    const escapes = sql[at] === "E"
    expect(escapes ? "E'" : "'")
    out.push({ channel, payload: quoted("'", escapes) })
  }
  return out
}
