/**
 * Tests only: `EROFS_OCI_TEST_PAUSE_AT=NAME` stops the process for good (the whole thread,
 * timers and signal handlers included) when it reaches testPause(NAME), so a test can kill it
 * there by pid, as the OOM killer or `kill -9` would, and show that a death at that exact point
 * leaves nothing that no cleanup finds. Unset, it does nothing.
 */
export const TEST_PAUSE_ENV = "EROFS_OCI_TEST_PAUSE_AT";

export function testPause(name: string): void {
  if (Deno.env.get(TEST_PAUSE_ENV) !== name) return;
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
}
