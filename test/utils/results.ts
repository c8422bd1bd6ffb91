/** Helpers of the codec and protocol tests: unwrapping Results, and JSON as the wire returns it. */
import { assert } from "@effect/vitest"
import * as Result from "effect/Result"
import * as fc from "fast-check"

/** The success of a Result; fails the test on a failure. */
export const success = <A>(result: Result.Result<A, string>): A => {
  if (Result.isFailure(result)) {
    return assert.fail(`expected Success, got Failure(${result.failure})`)
  }
  return result.success
}

/** The failure of a Result; fails the test on a success. */
export const failure = <A>(result: Result.Result<A, string>): string => {
  if (Result.isSuccess(result)) {
    return assert.fail(`expected Failure, got Success(${JSON.stringify(result.success)})`)
  }
  return result.failure
}

/**
 * JSON values without "__proto__" keys: object spreads and deep equality treat that key
 * specially, so a message holding one cannot be compared field by field.
 */
export const jsonValue = (maxDepth: number) =>
  fc.jsonValue({ maxDepth }).filter((value) => !JSON.stringify(value).includes('"__proto__"'))

/** JSON values as they come back from the wire (`-0` is sent as `0`). */
export const wireJsonValue = (maxDepth: number) =>
  jsonValue(maxDepth).map((value) => JSON.parse(JSON.stringify(value)) as unknown)
