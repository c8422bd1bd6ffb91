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
  const server = await startEmbeddedPostgres()
  project.provide("databaseUrl", server.url)
  return () => server.destroy()
}
