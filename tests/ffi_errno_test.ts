/**
 * errno through FFI: readdir(3) says a failure only by changing errno, so listDirectory clears
 * it before each call; clearErrno must really reach the thread's errno.
 */
import assert from "node:assert/strict";
import { clearErrno, cstr, errno, libc, SysError } from "../ffi/libc.ts";
import { listDirectory } from "../ffi/files.ts";

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
