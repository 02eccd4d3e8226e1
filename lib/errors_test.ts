import assert from "node:assert/strict";
import { describeErrno, hostRefusal, plainOsErrors } from "./errors.ts";

Deno.test("plainOsErrors: Deno's OS error texts lose '(os error N)' and a path named already", () => {
  assert.deepEqual(
    plainOsErrors(
      "build: cannot read /x/nope: No such file or directory (os error 2): stat '/x/nope'",
    ),
    { text: "build: cannot read /x/nope: No such file or directory", errnos: [2] },
  );
  // A path the message does not name yet stays, before the cause (as hostRefusal words it).
  assert.deepEqual(
    plainOsErrors("cannot write index: Permission denied (os error 13): open '/x/i/a.tmp'"),
    { text: "cannot write index: open '/x/i/a.tmp': Permission denied", errnos: [13] },
  );
  assert.deepEqual(
    plainOsErrors("Read-only file system (os error 30): rename '/x/a' -> '/x/b'"),
    { text: "rename '/x/a' -> '/x/b': Read-only file system", errnos: [30] },
  );
  assert.deepEqual(
    plainOsErrors(
      "write /x/out: No space left on device (os error 28); and Is a directory (os error 21)",
    ),
    { text: "write /x/out: No space left on device; and Is a directory", errnos: [28, 21] },
  );
  const ours = "index: cannot read x: Not a directory";
  assert.deepEqual(plainOsErrors(ours), { text: ours, errnos: [] });
});

Deno.test("describeErrno names the errnos it knows, numbers the rest", () => {
  assert.equal(describeErrno(2), "ENOENT (os error 2)");
  assert.equal(describeErrno(30), "EROFS (os error 30)");
  assert.equal(describeErrno(4095), "os error 4095");
});

Deno.test("hostRefusal: a raw Deno file error as one line naming its path", () => {
  let thrown: unknown;
  try {
    Deno.readFileSync("/nonexistent-erofs-oci-test/x");
  } catch (error) {
    thrown = error;
  }
  assert.equal(
    hostRefusal(thrown)?.message,
    "readfile '/nonexistent-erofs-oci-test/x': No such file or directory",
  );
});

Deno.test("hostRefusal: a full disk's hint names the command's output options, or none", () => {
  const full = Object.assign(new Error("No space left on device (os error 28): write 'x'"), {
    code: "ENOSPC",
  });
  assert.equal(
    hostRefusal(full, "-o, --tmpdir")?.hint,
    "free space there (or inodes: `df -i`), or write elsewhere (-o, --tmpdir)",
  );
  assert.equal(hostRefusal(full)?.hint, "free space there (or inodes: `df -i`)");
  const readOnly = Object.assign(new Error("Read-only file system (os error 30)"), {
    code: "EROFS",
  });
  assert.equal(hostRefusal(readOnly)?.hint, "make that file system writable");
});
