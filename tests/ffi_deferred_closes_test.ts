/**
 * DeferredCloses (the build's scan and data copy close their per-file descriptors in batches):
 * it closes every descriptor it was given, by close_range over runs of consecutive numbers,
 * and never one it was not given, even one whose number lies between two runs.
 *
 * `deno test --parallel` runs every test file in this process: a number closed here is the
 * lowest free one, and the next open of another file (on another thread) takes it at once. So
 * these tests open files of their own (one inode each) and ask whether a number still holds
 * *that* file, not whether it is open; and they close only what they still hold. A clean-up
 * that closed every number found open after flush() closed other files' descriptors (a
 * concurrent file lost 339 of 59,540 in 3,000 runs of this test).
 */
import assert from "node:assert/strict";
import { closeFd, cstr, libc, O_CLOEXEC, O_PATH } from "../ffi/libc.ts";
import { DeferredCloses, fstatFd } from "../ffi/files.ts";

/**
 * `count` O_PATH descriptors, each of a file of its own (made in `dir`), and the check whether
 * a number still holds its file.
 */
function openOwnFiles(
  dir: string,
  count: number,
): { fds: number[]; holds: (fd: number) => boolean } {
  const inodes = new Map<number, bigint>();
  for (let i = 0; i < count; i++) {
    const path = `${dir}/${i}`;
    Deno.writeTextFileSync(path, "");
    const fd = libc().open(cstr(path), O_PATH | O_CLOEXEC, 0);
    assert.ok(fd >= 0, `open ${path}`);
    inodes.set(fd, fstatFd(fd).ino);
  }
  const holds = (fd: number) => {
    try {
      return fstatFd(fd).ino === inodes.get(fd);
    } catch {
      return false; // EBADF: closed, and no other file opened at that number
    }
  };
  return { fds: [...inodes.keys()], holds };
}

Deno.test("DeferredCloses closes what it was given, in runs, and nothing between them", () => {
  const dir = Deno.makeTempDirSync({ prefix: "deferred-closes-" });
  const { fds, holds } = openOwnFiles(dir, 12);
  // Two descriptors not handed over, one inside the numbers given: close_range(first, last)
  // over all of them would close it.
  const kept = [fds[5], fds[11]];
  const given = fds.filter((fd) => !kept.includes(fd));
  const closes = new DeferredCloses(100);
  for (const fd of [...given].reverse()) closes.add(fd);
  try {
    closes.add(-1);
    assert.ok(given.every(holds), "nothing closed before flush()");
    closes.flush();
    assert.deepEqual(given.filter(holds), [], "every given descriptor closed");
    assert.deepEqual(kept.filter(holds), kept, "the others still open");
    closes.flush(); // nothing left: no second close of numbers others may hold now
    assert.deepEqual(kept.filter(holds), kept);
  } finally {
    closes.flush(); // those given, unless closed already (then nothing: they are others' now)
    for (const fd of kept) closeFd(fd);
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("DeferredCloses closes a batch when it reaches its limit", () => {
  const dir = Deno.makeTempDirSync({ prefix: "deferred-closes-" });
  const { fds, holds } = openOwnFiles(dir, 5);
  const closes = new DeferredCloses(4);
  try {
    for (const fd of fds) closes.add(fd);
    assert.deepEqual(fds.map(holds), [false, false, false, false, true]);
  } finally {
    closes.flush();
    Deno.removeSync(dir, { recursive: true });
  }
  assert.ok(!holds(fds[4]));
});
