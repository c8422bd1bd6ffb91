/**
 * Helpers of the interop suites (mixed clusters of ours and `@socket.io/postgres-adapter` 0.5.0
 * nodes, built by `nodes.ts`): test names of layouts, and broadcasts of an exact notification size.
 */
import type { Kind } from "./adapters.js"

/** `[ours, 0.5.0, ours]` → `"[ours, 0.5.0, ours]"`, for test names. */
export const layoutName = (kinds: ReadonlyArray<Kind>): string => `[${kinds.join(", ")}]`

/**
 * The byte length of the notification JSON a server (ours or 0.5.0, same layout) sends for
 * `io.to(rooms).emit(ev, arg)` in namespace `nsp` with adapter uid `uid`.
 */
export const broadcastNotificationBytes = (
  uid: string,
  ev: string,
  arg: string,
  nsp = "/",
  rooms: ReadonlyArray<string> = [],
): number =>
  Buffer.byteLength(
    JSON.stringify({
      type: 3,
      data: { packet: { type: 2, data: [ev, arg] }, opts: { rooms, except: [], flags: {} } },
      uid,
      nsp,
    }),
  )

// Multi-byte characters (2, 3 and 4 UTF-8 bytes) so that the sizes do not only hold for ASCII.
const WIDE = "é€😀"

/**
 * A string argument that makes the broadcast's notification JSON exactly `bytes` bytes long
 * (see {@link broadcastNotificationBytes}); it holds multi-byte characters.
 */
export const argumentForNotificationBytes = (
  bytes: number,
  uid: string,
  ev: string,
  nsp = "/",
): string => {
  const fill = bytes - broadcastNotificationBytes(uid, ev, WIDE, nsp)
  if (fill < 0) throw new Error(`${bytes} bytes is too small a notification`)
  const arg = `${WIDE}${"x".repeat(fill)}`
  const actual = broadcastNotificationBytes(uid, ev, arg, nsp)
  if (actual !== bytes) throw new Error(`made ${actual} bytes instead of ${bytes}`)
  return arg
}
