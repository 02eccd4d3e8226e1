import { deepStrictEqual as assertEquals, ok, rejects } from "node:assert/strict";
import assert from "node:assert/strict";
import { LocalFile } from "./local_file.ts";
import { preadExact } from "./disk_cache_io.ts";
import { preadFully } from "../../ffi/files.ts";
import { patternBytes } from "../../tests/_support/memory_source.ts";

Deno.test("LocalFile: concurrent positioned reads return exactly the file's bytes", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const data = patternBytes(3 * 1024 * 1024 + 11);
    await Deno.writeFile(`${dir}/f`, data);
    const file = await LocalFile.open(`${dir}/f`);
    try {
      assertEquals(file.size, data.length);
      const reads: [number, number][] = [];
      for (let i = 0; i < 50; i++) {
        const offset = (i * 104729) % data.length;
        reads.push([offset, Math.min(70000 + i * 1000, data.length - offset)]);
      }
      reads.push([0, data.length], [data.length, 0], [data.length - 1, 1]);
      const results = await Promise.all(reads.map(([o, l]) => file.read(o, l)));
      reads.forEach(([o, l], i) => assertEquals(results[i], data.subarray(o, o + l)));
      await rejects(file.read(data.length - 1, 2), RangeError);
      await rejects(file.read(-1, 1), RangeError);
    } finally {
      await file.close();
    }
    await rejects(file.read(0, 1), /after close/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("LocalFile: a file that shrinks under it fails the read instead of returning short data", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeFile(`${dir}/f`, new Uint8Array(10000).fill(7));
    const file = await LocalFile.open(`${dir}/f`);
    try {
      await Deno.truncate(`${dir}/f`, 5000);
      await rejects(file.read(4000, 2000), /file ended/);
      ok((await file.read(0, 10)).every((b) => b === 7));
    } finally {
      await file.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("LocalFile: directories and missing files are refused", async () => {
  await rejects(LocalFile.open("/"), /not a regular file/);
  await rejects(LocalFile.open("/nonexistent/erofs-oci"), Deno.errors.NotFound);
});

Deno.test("LocalFile direct reads: the same file again and a map of every chunk present", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-local-direct-" });
  try {
    const path = `${dir}/image`;
    const bytes = new Uint8Array(2_500_000).map((_, i) => (i * 7) & 0xff);
    await Deno.writeFile(path, bytes);
    const file = await LocalFile.open(path);
    const files = file.openDirectReads();
    assert(files, "direct reads of a regular file");
    try {
      const chunks = Math.ceil(bytes.length / files.chunkBytes);
      const map = new Uint8Array(chunks + 1);
      assert.equal(preadFully(files.mapFd, map, 0), chunks, "one map byte per chunk");
      assert(map.subarray(0, chunks).every((b) => files.presentBytes.includes(b)));
      const got = new Uint8Array(1000);
      preadExact(files.dataFd, got, 2_000_000);
      assert.deepEqual(got, bytes.subarray(2_000_000, 2_001_000));
    } finally {
      files.close();
    }
    // Another file at the path since: a reader thread would read it, so none is offered.
    await Deno.rename(path, `${dir}/moved`);
    await Deno.writeFile(path, bytes);
    assert.equal(file.openDirectReads(), undefined);
    await file.close();
    assert.equal(file.openDirectReads(), undefined, "none after close");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
