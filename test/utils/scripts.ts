/**
 * Runs one of the package's TypeScript scripts (a bench, the soak) in a Node process of its own,
 * from the package root, and resolves with its exit code and output (never rejects).
 */
import { execFile } from "node:child_process"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

const root = path.dirname(path.dirname(path.dirname(fileURLToPath(import.meta.url))))

export const runScript = (
  script: string,
  args: ReadonlyArray<string>,
  options: {
    readonly env?: NodeJS.ProcessEnv
    readonly timeout?: number
    /** Bytes of output kept (16 MiB unless told). */
    readonly maxBuffer?: number
  } = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> =>
  new Promise((resolve) =>
    execFile(
      process.execPath,
      ["--import", "tsx", script, ...args],
      {
        cwd: root,
        env: options.env ?? process.env,
        timeout: options.timeout ?? 120_000,
        maxBuffer: options.maxBuffer ?? 16 * 1024 * 1024,
      },
      (error, stdout, stderr) =>
        resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    ),
  )
