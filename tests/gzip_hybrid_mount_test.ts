/**
 * [meta][tar] served lazily from a gzip layer + zinfo (erofs-utils 1.9.3 fixtures) as one FUSE
 * file, mounted by the host kernel's EROFS driver through mount(8) (loop), compared with the
 * expected manifests; only part of the compressed blob is read for part of the files.
 */
import assert from "node:assert/strict";
import { HybridTarSource, tarIndexLayout } from "../lib/gzip/hybrid_tar.ts";
import { openTarMetaFile } from "../lib/gzip/tar_meta_file.ts";
import { openIndexFile } from "../lib/mount/layer_index_files.ts";
import { LocalFile } from "../lib/source/local_file.ts";
import type { Source } from "../lib/source/source.ts";
import { FormatError } from "../lib/errors.ts";
import { deadline, expected, FuseStack, manifest } from "./_support/fuse_stack.ts";
import { MemorySource } from "./_support/memory_source.ts";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";
import { prng } from "./_support/gzip_data.ts";

const ignore = requires(
  root(),
  path("/dev/fuse"),
  command("python3"),
  command("mount"),
  path(`${FIXTURES}/big-multi.zinfo`, "shared fixtures"),
);

async function run(program: string, ...args: string[]): Promise<void> {
  const out = await deadline(
    new Deno.Command(program, { args, stdout: "piped", stderr: "piped" }).output(),
    `${program} ${args.join(" ")}`,
    60_000,
  );
  if (!out.success) {
    throw new Error(`${program} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
}

/** Mounts `source` as one FUSE file, then EROFS on it via mount(8); always unmounts. */
async function withMountedSource(
  source: Source,
  body: (mnt: string) => Promise<void>,
): Promise<void> {
  const stack = await FuseStack.create();
  let mnt: string | undefined;
  try {
    const blob = await stack.blob(source, "fuse");
    const target = await stack.dir("mnt");
    await run("mount", "-t", "erofs", "-o", "ro", blob.filePath, target);
    mnt = target;
    await body(mnt);
  } finally {
    try {
      if (mnt) await run("umount", mnt);
    } finally {
      await stack.cleanup();
    }
  }
}

for (
  const [name, meta, manifestName] of [
    ["layer", "layer", "layer.meta.txt"],
    ["big", "big", "big.meta.txt"],
    ["big-multi", "big-multi", "big.meta.txt"],
  ]
) {
  Deno.test({
    name: `hybrid [meta][tar.gz via zinfo] mounted by the kernel has the expected tree: ${name}`,
    ignore,
    async fn() {
      const blob = new MemorySource(await Deno.readFile(`${FIXTURES}/${name}.tar.gz`));
      const zinfo = await LocalFile.open(`${FIXTURES}/${name}.zinfo`);
      try {
        const metaBytes = await Deno.readFile(`${FIXTURES}/${meta}.meta.erofs`);
        const source = await HybridTarSource.openGzip(metaBytes, blob, zinfo);
        try {
          assert.equal(source.layout.metaBytes, metaBytes.length);
          await withMountedSource(source, async (mnt) => {
            assert.equal(await manifest(mnt), await expected(manifestName));
          });
        } finally {
          await source.close();
        }
        // Every compressed byte was fetched at most a few times (cursor reuse, piece cache).
        const fetched = blob.reads.reduce((n, r) => n + r.length, 0);
        assert.ok(fetched < 3 * blob.size, `fetched ${fetched} of ${blob.size}`);
        assert.deepEqual(blob.outOfRange, []);
      } finally {
        await zinfo.close();
      }
    },
  });
}

Deno.test({
  name: "hybrid: reading one small file of big.tar.gz fetches only the span it lives in",
  ignore,
  async fn() {
    const blob = new MemorySource(await Deno.readFile(`${FIXTURES}/big.tar.gz`));
    const zinfo = await LocalFile.open(`${FIXTURES}/big.zinfo`);
    const metaBytes = await Deno.readFile(`${FIXTURES}/big.meta.erofs`);
    const source = await HybridTarSource.openGzip(metaBytes, blob, zinfo);
    try {
      await withMountedSource(source, async (mnt) => {
        const names: string[] = [];
        for await (const entry of Deno.readDir(`${mnt}/small`)) names.push(entry.name);
        assert.ok(names.length > 0);
        const before = blob.reads.reduce((n, r) => n + r.length, 0);
        await Deno.readFile(`${mnt}/small/${names.sort()[0]}`);
        const fetched = blob.reads.reduce((n, r) => n + r.length, 0) - before;
        assert.ok(fetched < blob.size / 2, `fetched ${fetched} of ${blob.size} for one small file`);
      });
    } finally {
      await source.close();
      await zinfo.close();
    }
  },
});

Deno.test("tar index layout: fixture facts, and refusals", async () => {
  const meta = await Deno.readFile(`${FIXTURES}/layer.meta.erofs`);
  assert.deepEqual(tarIndexLayout(meta), {
    blockSizeBytes: 512,
    metaBytes: 31232,
    tarBytes: 3328 * 512,
  });
  const basic = await Deno.readFile(`${FIXTURES}/basic.erofs`);
  assert.throws(() => tarIndexLayout(basic), /not a tar-index/);
  assert.throws(() => tarIndexLayout(meta.subarray(0, 30720)), /mapped at block 61/);
  const noDeviceTable = meta.slice();
  new DataView(noDeviceTable.buffer).setUint16(1024 + 88, 0xffff, true);
  assert.throws(() => tarIndexLayout(noDeviceTable), FormatError);
  // A plain tar shorter than what the index refers to is refused at open.
  assert.throws(
    () => HybridTarSource.plainTar(meta, new MemorySource(new Uint8Array(1000))),
    /refers to 1703936 bytes/,
  );
  const tar = await Deno.readFile(`${FIXTURES}/layer.tar`);
  const plain = HybridTarSource.plainTar(meta, new MemorySource(tar));
  const across = await plain.read(31232 - 10, 20);
  assert.deepEqual(across, new Uint8Array([...meta.subarray(31222), ...tar.subarray(0, 10)]));
  // readInto fills the caller's buffer (a reused reply buffer): meta, tar and both at once.
  const device = new Uint8Array([...meta, ...tar.subarray(0, plain.size - meta.length)]);
  for (const [offset, length] of [[100, 4000], [31232 - 10, 20], [40000, 65536], [0, plain.size]]) {
    const dest = new Uint8Array(length).fill(0xee);
    await plain.readInto(offset, dest);
    assert.deepEqual(dest, device.subarray(offset, offset + length), `${offset}+${length}`);
  }
  await assert.rejects(() => plain.read(plain.size - 1, 2), RangeError);
  await assert.rejects(() => plain.readInto(plain.size - 1, new Uint8Array(2)), RangeError);
});

Deno.test("tar index meta read from its file: the same device bytes, the file closed with the source", async () => {
  const metaPath = `${FIXTURES}/layer.meta.erofs`;
  const meta = await Deno.readFile(metaPath);
  const tar = await Deno.readFile(`${FIXTURES}/layer.tar`);
  const inMemory = HybridTarSource.plainTar(meta, new MemorySource(tar));
  const file = openIndexFile(metaPath);
  const metaFile = await openTarMetaFile(file, metaPath);
  // Only the head is held: the superblock and the device table.
  assert.equal(metaFile.head.length < meta.length, true);
  assert.deepEqual(tarIndexLayout(metaFile), tarIndexLayout(meta));
  const fromFile = new HybridTarSource(metaFile, new MemorySource(tar));
  const random = prng(11);
  for (let i = 0; i < 300; i++) {
    const offset = Math.floor(random() * inMemory.size);
    const length = Math.min(inMemory.size - offset, Math.floor(random() * 70_000));
    const dest = new Uint8Array(length).fill(0xee);
    await fromFile.readInto(offset, dest);
    assert.deepEqual(dest, await inMemory.read(offset, length), `${offset}+${length}`);
  }
  await fromFile.close();
  await assert.rejects(() => file.read(0, 10), /read after close/);
  // Changed in place after it was opened (a `cp` over a --tarindex file): the changed block
  // fails its reads, the others read as they were.
  const copy = await Deno.makeTempFile({ suffix: ".meta.erofs" });
  try {
    await Deno.writeFile(copy, meta);
    const changed = await openTarMetaFile(openIndexFile(copy), copy);
    const original = await openTarMetaFile(openIndexFile(metaPath));
    assert.equal(changed.digest, original.digest);
    await assert.rejects(
      () => original.readInto(original.size - 10, new Uint8Array(20)),
      RangeError,
    );
    original.close();
    const handle = await Deno.open(copy, { write: true });
    await handle.seek(20_000, Deno.SeekMode.Start);
    await handle.write(new Uint8Array([meta[20_000] ^ 0xff]));
    handle.close();
    await assert.rejects(
      () => changed.readInto(20_000 - 5, new Uint8Array(10)),
      /bytes 16384\.\.20480 of the meta image .* changed since the mount checked it/,
    );
    await assert.rejects(() => changed.readInto(16384, new Uint8Array(4096)), FormatError);
    const before = new Uint8Array(4096);
    await changed.readInto(8192, before);
    assert.deepEqual(before, meta.subarray(8192, 12288));
    changed.close();
  } finally {
    await Deno.remove(copy);
  }
  // Not an EROFS image: refused at open, and its file closed.
  const tarFile = openIndexFile(`${FIXTURES}/layer.tar`);
  await assert.rejects(() => openTarMetaFile(tarFile, "layer.tar"), FormatError);
  await assert.rejects(() => tarFile.read(0, 10), /read after close/);
});
