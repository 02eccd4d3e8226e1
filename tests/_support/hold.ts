/**
 * A testHold point (lib/test_pause.ts) for a command a test starts: the environment
 * entry that holds the command there, the wait until it has arrived, its release, and the
 * removal of the hold's files (dispose, also after a failure).
 */
import { TEST_HOLD_ENV } from "../../lib/test_pause.ts";
import { exists, waitFor } from "./wait.ts";

export class HoldPoint implements Disposable {
  /** What the held command's environment needs (EROFS_OCI_TEST_HOLD=NAME:FILE). */
  readonly env: Record<string, string>;
  readonly #file: string;

  /** `file`: a path no other test uses (its `.reached` sibling is written on arrival). */
  constructor(name: string, file: string) {
    this.#file = file;
    Deno.writeTextFileSync(file, "");
    this.env = { [TEST_HOLD_ENV]: `${name}:${file}` };
  }

  /** Resolves once the command has arrived at the hold (it waits there until release()). */
  reached(what: string, timeoutMs = 60_000): Promise<void> {
    return waitFor(what, () => exists(`${this.#file}.reached`), timeoutMs);
  }

  /** Lets the held command go on. */
  release(): void {
    removeQuietly(this.#file);
  }

  [Symbol.dispose](): void {
    removeQuietly(this.#file);
    removeQuietly(`${this.#file}.reached`);
  }
}

function removeQuietly(file: string): void {
  try {
    Deno.removeSync(file);
  } catch { /* gone */ }
}
