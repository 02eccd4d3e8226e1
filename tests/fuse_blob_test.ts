/**
 * The FUSE blob itself (no EROFS on top): one read-only file whose bytes come from a Source,
 * served by this process over /dev/fuse, checked through the real kernel with async reads.
 */
import assert from "node:assert/strict";
import { MemorySource, patternBytes } from "./_support/memory_source.ts";
import { FuseStack } from "./_support/fuse_stack.ts";
import { path, requires, root } from "./_support/requires.ts";
import { MountError } from "../lib/errors.ts";
import { startFuseBlob } from "../lib/fuse/blob.ts";

const ignore = requires(root(), path("/dev/fuse"));

function threadAlive(taskDir: string): boolean {
  try {
    Deno.statSync(taskDir);
    return true;
  } catch {
    return false;
  }
}

async function readRange(file: string, offset: number, length: number): Promise<Uint8Array> {
  using handle = await Deno.open(file, { read: true });
  await handle.seek(offset, Deno.SeekMode.Start);
  const out = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const n = await handle.read(out.subarray(done));
    if (n === null) break;
    done += n;
  }
  return out.subarray(0, done);
}

Deno.test({
  name: "fuse blob: the file reads back byte for byte; stat, readdir and EOF look like a file",
  ignore,
  async fn() {
    const stack = await FuseStack.create();
    try {
      const bytes = patternBytes(3 * 1024 * 1024 + 17);
      const source = new MemorySource(bytes);
      const blob = await stack.blob(source, "fuse");
      assert.deepEqual(blob.filePath, `${stack.root}/fuse/blob`);
      assert.deepEqual(stack.mounts(), [`${stack.root}/fuse`]);

      const info = await Deno.stat(blob.filePath);
      assert(info.isFile);
      assert.deepEqual(info.size, bytes.length);
      assert.deepEqual(info.mode! & 0o7777, 0o444);
      const names = [];
      for await (const entry of Deno.readDir(blob.mountDir)) names.push(entry.name);
      assert.deepEqual(names, ["blob"]);

      const whole = await Deno.readFile(blob.filePath);
      assert.deepEqual(whole.length, bytes.length);
      assert(whole.every((b, i) => b === bytes[i]), "content differs");
      // Past the end: short, then nothing; the source is never asked beyond its size.
      assert.deepEqual(await readRange(blob.filePath, bytes.length - 5, 100), bytes.slice(-5));
      assert.deepEqual((await readRange(blob.filePath, bytes.length + 4096, 10)).length, 0);
      assert.deepEqual(source.outOfRange, []);
      // 1 MiB READs (FUSE_MAX_PAGES) reach the source.
      assert(source.reads.some((r) => r.length === 1 << 20), "no 1 MiB read reached the source");
      assert(blob.stats().bytes >= bytes.length);
      await assert.rejects(() => Deno.writeFile(blob.filePath, new Uint8Array(1)));
    } finally {
      await stack.cleanup();
    }
  },
});

Deno.test({
  name: "fuse blob: concurrent readers get their own bytes and the source sees parallel reads",
  ignore,
  async fn() {
    const stack = await FuseStack.create();
    try {
      const bytes = patternBytes(16 << 20, 7);
      const source = new MemorySource(bytes, { delayMs: () => 20 });
      const blob = await stack.blob(source, "fuse", { name: "sha256:abc" });
      assert.deepEqual(blob.filePath, `${stack.root}/fuse/sha256:abc`);
      const ranges = Array.from({ length: 12 }, (_, i) => ({
        offset: (i * 1_299_827) % (bytes.length - 300_000),
        length: 1000 + i * 23_456,
      }));
      const results = await Promise.all(
        ranges.map((r) => readRange(blob.filePath, r.offset, r.length)),
      );
      for (const [i, r] of ranges.entries()) {
        assert.deepEqual(results[i], bytes.slice(r.offset, r.offset + r.length), `range ${i}`);
      }
      assert(source.maxInFlight > 1, `reads were serialized (max in flight ${source.maxInFlight})`);
    } finally {
      await stack.cleanup();
    }
  },
});

Deno.test({
  name: "fuse blob: a failing source read is EIO for that read only, never zeros",
  ignore,
  async fn() {
    const stack = await FuseStack.create();
    try {
      const bytes = patternBytes(4 << 20, 3);
      const badStart = 2 << 20;
      const source = new MemorySource(bytes, {
        fail: (offset, length) => offset < badStart + 4096 && offset + length > badStart,
      });
      const blob = await stack.blob(source, "fuse");
      await assert.rejects(() => readRange(blob.filePath, badStart, 4096), /Input\/output error/);
      assert.deepEqual(await readRange(blob.filePath, 0, 65536), bytes.slice(0, 65536));
      assert.deepEqual(
        await readRange(blob.filePath, 3 << 20, 65536),
        bytes.slice(3 << 20, (3 << 20) + 65536),
      );
    } finally {
      await stack.cleanup();
    }
  },
});

Deno.test({
  name: "fuse blob: close unmounts, stops the reader thread and removes the dir it made",
  ignore,
  async fn() {
    const stack = await FuseStack.create();
    try {
      const blob = await startFuseBlob(new MemorySource(patternBytes(8192)), `${stack.root}/f`);
      const thread = `/proc/self/task/${blob.readerThreadId}`;
      try {
        assert.ok(blob.readerThreadId > 0 && threadAlive(thread), "reader thread running");
        assert.deepEqual((await Deno.readFile(blob.filePath)).length, 8192);
      } finally {
        await blob.close();
      }
      assert.deepEqual(stack.mounts(), []);
      for (let i = 0; i < 60 && threadAlive(thread); i++) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      assert.ok(!threadAlive(thread), "reader thread gone after close");
      await assert.rejects(() => Deno.stat(`${stack.root}/f`), Deno.errors.NotFound);
      await blob.close(); // a second close is a no-op
      // A busy or already-mounted dir is refused before /dev/fuse is touched.
      const again = await stack.blob(new MemorySource(patternBytes(10)), "g");
      await assert.rejects(
        () => startFuseBlob(new MemorySource(patternBytes(10)), again.mountDir),
        (error) => error instanceof MountError && /already a mount point/.test(error.message),
      );
      await assert.rejects(
        () => startFuseBlob(new MemorySource(patternBytes(10)), `${stack.root}/h`, { name: "a/b" }),
        MountError,
      );
    } finally {
      await stack.cleanup();
    }
  },
});
