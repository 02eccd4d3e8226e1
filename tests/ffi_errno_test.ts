/**
 * errno through FFI: readdir(3) says a failure only by changing errno, so listDirectory clears
 * it before each call; clearErrno must really reach the thread's errno.
 */
import assert from "node:assert/strict";
import { clearErrno, cstr, errno, libc, SysError } from "../ffi/libc.ts";
import { listDirectory } from "../ffi/files.ts";
import { runLibcTask } from "../ffi/libc_worker.ts";

Deno.test("clearErrno resets errno; listDirectory lists, and a missing directory is a SysError", () => {
  assert.ok(libc().open(cstr("/nonexistent-erofs-oci/x"), 0, 0) < 0);
  assert.equal(errno(), 2);
  clearErrno();
  assert.equal(errno(), 0);
  const dir = Deno.makeTempDirSync({ prefix: "erofs-oci-list-" });
  try {
    Deno.writeTextFileSync(`${dir}/a`, "");
    Deno.mkdirSync(`${dir}/b`);
    // A failed call before the listing leaves errno set: no harm to the listing.
    libc().open(cstr("/nonexistent-erofs-oci/x"), 0, 0);
    assert.deepEqual(listDirectory(dir).sort(), ["a", "b"]);
    assert.throws(() => listDirectory(`${dir}/missing`), SysError);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("errno is per thread: a worker's failed call is read there and leaves this thread's", async () => {
  clearErrno();
  const seen = await runLibcTask("errno-test", (lib, workerErrno, path: string) => {
    const path0 = new TextEncoder().encode(path + "\0");
    // Read at once, as every caller does: what the runtime does next on this thread (a GC, a
    // lock's futex) may set errno itself — a CI run of this test read EAGAIN after allocating
    // 20,000 objects between the call and the read.
    const rc = lib.open(path0, 0, 0);
    const after = workerErrno();
    return { rc, after };
  }, "/nonexistent-erofs-oci/worker");
  assert.equal(seen.rc, -1);
  assert.equal(seen.after, 2);
  assert.equal(errno(), 0, "the worker's ENOENT leaked into this thread's errno");
});
