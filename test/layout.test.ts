/**
 * The layout a newcomer can live in (issue 10): no function or class of `src/` over 150 lines, and
 * the facade class about that size, each override one call on its namespace's node.
 */
import { describe, expect, it } from "vitest"
import { measure } from "../scripts/sizes.js"

describe("the source layout", () => {
  const sizes = measure("src")

  it("has no function or class over 150 lines in src/", () => {
    expect(sizes.filter((s) => s.lines > 150)).toEqual([])
  })

  it("keeps the facade class (PostgresAdapter) at about 150 lines", () => {
    const facade = sizes.find((s) => s.file.endsWith("Adapter.ts") && s.name === "PostgresAdapter")
    expect(facade).toBeDefined()
    expect(facade!.lines).toBeLessThanOrEqual(150)
  })
})
