/**
 * DeferredCloses (the build's scan and data copy close their per-file descriptors in batches):
 * it closes every descriptor it was given, by close_range over runs of consecutive numbers,
 * and never one it was not given, even one whose number lies between two runs.
 */
import assert from "node:assert/strict";
import { closeFd, cstr, libc, O_CLOEXEC, O_PATH } from "../ffi/libc.ts";
import { DeferredCloses } from "../ffi/files.ts";

const F_GETFD = 1;
const isOpen = (fd: number) => libc().fcntl(fd, F_GETFD, 0) >= 0;
const openPath = () => libc().open(cstr("/"), O_PATH | O_CLOEXEC, 0);

Deno.test("DeferredCloses closes what it was given, in runs, and nothing between them", () => {
  const fds = Array.from({ length: 12 }, openPath);
  assert.ok(fds.every((fd) => fd >= 0));
  // Two descriptors not handed over, one inside the numbers given: close_range(first, last)
  // over all of them would close it.
  const kept = [fds[5], fds[11]];
  const given = fds.filter((fd) => !kept.includes(fd));
  try {
    const closes = new DeferredCloses(100);
    for (const fd of [...given].reverse()) closes.add(fd);
    closes.add(-1);
    assert.ok(given.every(isOpen), "nothing closed before flush()");
    closes.flush();
    assert.deepEqual(given.filter(isOpen), [], "every given descriptor closed");
    assert.deepEqual(kept.filter(isOpen), kept, "the others still open");
    closes.flush(); // nothing left: no second close of numbers others may hold now
    assert.deepEqual(kept.filter(isOpen), kept);
  } finally {
    for (const fd of fds) if (isOpen(fd)) closeFd(fd);
  }
});

Deno.test("DeferredCloses closes a batch when it reaches its limit", () => {
  const closes = new DeferredCloses(4);
  const fds = Array.from({ length: 5 }, openPath);
  try {
    for (const fd of fds) closes.add(fd);
    assert.deepEqual(fds.map(isOpen), [false, false, false, false, true]);
  } finally {
    closes.flush();
  }
  assert.ok(!isOpen(fds[4]));
});
