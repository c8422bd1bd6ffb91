/**
 * Vitest global setup: provides `databaseUrl` to every test file. `DATABASE_URL` wins; without it one
 * embedded PostgreSQL is started for the whole run and stopped at the end.
 */
import type { TestProject } from "vitest/node"
import { startEmbeddedPostgres } from "./embedded.js"

declare module "vitest" {
  export interface ProvidedContext {
    /** Connection string of the PostgreSQL shared by all test files. */
    databaseUrl: string
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const fromEnv = process.env["DATABASE_URL"]
  if (fromEnv !== undefined && fromEnv !== "") {
    project.provide("databaseUrl", fromEnv)
    return async () => {}
  }
  let server
  try {
    server = await startEmbeddedPostgres()
  } catch (error) {
    // One message, with no stack: it is about the machine, not about this code.
    const failure = new Error(
      `${(error as Error)?.message ?? String(error)}\n` +
        "Or run the tests against a PostgreSQL of your own: " +
        "DATABASE_URL=postgres://user:password@127.0.0.1:5432/db npm test " +
        "(the fault tests still start embedded servers of their own).",
    )
    failure.stack = failure.message
    throw failure
  }
  project.provide("databaseUrl", server.url)
  return () => server.destroy()
}
