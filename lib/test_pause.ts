/**
 * Tests only: `EROFS_OCI_TEST_PAUSE_AT=NAME` stops the process for good (the whole thread,
 * timers and signal handlers included) when it reaches testPause(NAME), so a test can kill it
 * there by pid, as the OOM killer or `kill -9` would, and show that a death at that exact point
 * leaves nothing that no cleanup finds. Unset, it does nothing.
 */
import { sleep } from "./timers.ts";
export const TEST_PAUSE_ENV = "EROFS_OCI_TEST_PAUSE_AT";

export function testPause(name: string): void {
  if (Deno.env.get(TEST_PAUSE_ENV) !== name) return;
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
}

/**
 * Tests only: `EROFS_OCI_TEST_HOLD=NAME:FILE` makes testHold(NAME) wait, with the event loop
 * running (timers and watchers go on), until FILE is gone; it writes FILE.reached on arrival.
 * A test acts at that point (kills a server) and then lets the process go on. Unset, it does
 * nothing.
 */
export const TEST_HOLD_ENV = "EROFS_OCI_TEST_HOLD";

export async function testHold(name: string): Promise<void> {
  const value = Deno.env.get(TEST_HOLD_ENV);
  if (!value?.startsWith(`${name}:`)) return;
  const file = value.slice(name.length + 1);
  Deno.writeTextFileSync(`${file}.reached`, ""); // the test may act now
  for (;;) {
    try {
      Deno.lstatSync(file);
    } catch {
      return;
    }
    await sleep(20);
  }
}
