/**
 * rootOnlyDir (the state, runtime and recovery roots) checks a directory once per process: a
 * later call makes nothing and resolves nothing while the directory is the one it checked,
 * and checks from the start once it is not (removed and made again by another user, or its
 * mode changed). Before, every call ran mkdir -p and realpath, and a directory replaced at the
 * same resolved path was taken as checked.
 */
import assert from "node:assert/strict";
import { rootOnlyDir, UntrustedDirError } from "../ffi/trusted_path.ts";
import { requires, root } from "./_support/requires.ts";
import { withTempDir } from "./_support/temp_dir.ts";

const ROLE = { what: "test directory", envVar: "EROFS_OCI_TEST_DIR", defaultPath: "/nowhere" };
const NOBODY = 65534;

/** Calls of Deno.mkdirSync and Deno.realPathSync while `fn` runs. */
function fileSystemCalls<T>(fn: () => T): { result: T; calls: number } {
  const { mkdirSync, realPathSync } = Deno;
  let calls = 0;
  Deno.mkdirSync = (...args) => (calls++, mkdirSync(...args));
  Deno.realPathSync = (...args) => (calls++, realPathSync(...args));
  try {
    return { result: fn(), calls };
  } finally {
    Deno.mkdirSync = mkdirSync;
    Deno.realPathSync = realPathSync;
  }
}

Deno.test({
  name: "rootOnlyDir: checked once per process; a directory replaced or opened up is checked again",
  ignore: requires(root()),
  fn: () =>
    withTempDir("erofs-oci-root-only-", (work) => {
      const dir = `${work}/state`;
      const first = fileSystemCalls(() => rootOnlyDir(dir, ROLE, { create: true }));
      assert.equal(first.result, dir);
      assert(first.calls > 0, "the first call makes and resolves it");
      const again = fileSystemCalls(() => rootOnlyDir(dir, ROLE, { create: true }));
      assert.deepEqual(again, { result: dir, calls: 0 }, "a later call only looks at it");

      // Removed, and made again by another user (who could, in a sticky directory).
      Deno.removeSync(dir);
      Deno.mkdirSync(dir, { mode: 0o700 });
      Deno.chownSync(dir, NOBODY, NOBODY);
      assert.throws(
        () => rootOnlyDir(dir, ROLE, { create: true }),
        (error: unknown) =>
          error instanceof UntrustedDirError && /owned by uid 65534/.test(error.message),
      );

      // Root's again, then opened to others in place (same inode).
      Deno.chownSync(dir, 0, 0);
      assert.equal(rootOnlyDir(dir, ROLE, { create: true }), dir);
      Deno.chmodSync(dir, 0o777);
      assert.throws(
        () => rootOnlyDir(dir, ROLE, { create: true }),
        (error: unknown) =>
          error instanceof UntrustedDirError && /writable by others/.test(error.message),
      );

      // Removed by root: made again on the next call, as before.
      Deno.removeSync(dir);
      assert.equal(rootOnlyDir(dir, ROLE, { create: true }), dir);
      assert(Deno.statSync(dir).isDirectory);
      return Promise.resolve();
    }),
});
