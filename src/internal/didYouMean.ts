/**
 * Suggestions for misspelled option names: the known name nearest by edit distance, when it is
 * near enough to be what was meant.
 */

/**
 * Levenshtein distance (insertions, deletions, substitutions, each costing 1) between `a` and
 * `b`, by UTF-16 code unit; one row of the table at a time.
 */
export const editDistance = (a: string, b: string): number => {
  if (a === b) return 0
  if (a.length === 0) return b.length
  if (b.length === 0) return a.length
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const current = [i]
    for (let j = 1; j <= b.length; j++) {
      const substitution = previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1)
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, substitution)
    }
    previous = current
  }
  return previous[b.length]!
}

/**
 * The known name nearest to `name` (case aside), if its distance is at most a third of the
 * longer name's length (at least 1): `heartbeatTimout` gives `heartbeatTimeout`, `foo` nothing.
 */
export const didYouMean = (name: string, known: Iterable<string>): string | undefined => {
  let best: string | undefined
  let bestDistance = Infinity
  for (const candidate of known) {
    const distance = editDistance(name.toLowerCase(), candidate.toLowerCase())
    const limit = Math.max(1, Math.floor(Math.max(name.length, candidate.length) / 3))
    if (distance <= limit && distance < bestDistance) {
      best = candidate
      bestDistance = distance
    }
  }
  return best
}
