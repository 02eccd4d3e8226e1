/**
 * The 4 KiB layout of tar layers (lib/gzip/aligned_tar.ts), for kernels before 6.4: the
 * erofs-utils 1.9.3 tar-index fixtures re-laid out. Every file's bytes on the device equal its
 * bytes in the tar (plain tar and through the zinfo), the padding reads as zeros, the same meta
 * gives the same device, the host kernel mounts the device and shows the fixture's expected
 * manifest, and hostile meta images are refused with a FormatError.
 */
import assert from "node:assert/strict";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";
import { gunzip, prng } from "./_support/gzip_data.ts";
import { expectedManifest, manifestOf } from "./_support/mounts.ts";
import { ALIGNED_BLOCK_BYTES, AlignedTarSource, alignTarIndex } from "../lib/gzip/aligned_tar.ts";
import { GzipRandomAccess } from "../lib/gzip/gzip_random_access.ts";
import { LocalFile } from "../lib/source/local_file.ts";
import { FormatError } from "../lib/errors.ts";

const ignore = requires(command("gzip"), path(`${FIXTURES}/big-multi.zinfo`, "shared fixtures"));
const ignoreMount = ignore || requires(root(), command("mount"), command("python3"));

function memoryTar(bytes: Uint8Array) {
  return {
    size: bytes.length,
    read: (offset: number, length: number) => {
      assert.ok(offset >= 0 && offset + length <= bytes.length, `tar read ${offset}+${length}`);
      return Promise.resolve(bytes.slice(offset, offset + length));
    },
  };
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * read(), or readInto() a buffer holding other bytes (the FUSE and NBD servers reuse their
 * reply buffers): the padding between files must be written as zeros, not left as it was.
 */
async function readSomeWay(
  source: AlignedTarSource,
  offset: number,
  length: number,
  i: number,
): Promise<Uint8Array> {
  if (i % 2 === 0) return await source.read(offset, length);
  const dest = new Uint8Array(length).fill(0xee);
  await source.readInto(offset, dest);
  return dest;
}

/** The device as it must be: the image, then each extent's tar bytes, zeros elsewhere. */
function referenceDevice(source: AlignedTarSource, tar: Uint8Array): Uint8Array {
  const device = new Uint8Array(source.size);
  device.set(source.index.image);
  const e = source.index.extents;
  for (let k = 0; k < e.count; k++) {
    device.set(tar.subarray(e.tarStart[k], e.tarStart[k] + e.length[k]), e.deviceStart[k]);
  }
  return device;
}

/** (tar data offset, size) of every file with data in `tarName`, from tar-offsets.txt. */
function tarFiles(tarName: string): Set<string> {
  const out = new Set<string>();
  for (const line of Deno.readTextFileSync(`${FIXTURES}/expected/tar-offsets.txt`).split("\n")) {
    const f = line.split("\t");
    if (f[0] !== tarName) continue;
    const size = Number(f[5].slice(5));
    if (size > 0) out.add(`${f[3].slice(5)}+${size}`);
  }
  return out;
}

Deno.test({
  name: "aligned tar: extents are exactly the tar's files, 4 KiB aligned; device bytes = tar",
  ignore,
  async fn() {
    const meta = Deno.readFileSync(`${FIXTURES}/layer.meta.erofs`);
    const tar = Deno.readFileSync(`${FIXTURES}/layer.tar`);
    const source = AlignedTarSource.open(meta, memoryTar(tar));
    const e = source.index.extents;
    const seen = new Set<string>();
    for (let k = 0; k < e.count; k++) {
      assert.equal(e.deviceStart[k] % ALIGNED_BLOCK_BYTES, 0);
      assert.ok(e.deviceStart[k] >= source.index.image.length);
      if (k > 0) assert.ok(e.deviceStart[k] >= e.deviceStart[k - 1] + e.length[k - 1]);
      seen.add(`${e.tarStart[k]}+${e.length[k]}`);
      const got = await source.read(e.deviceStart[k], e.length[k]);
      assert.ok(equalBytes(got, tar.subarray(e.tarStart[k], e.tarStart[k] + e.length[k])));
    }
    // Hard links are one file: tar-offsets lists the link's target once, with data.
    assert.deepEqual(seen, tarFiles("layer.tar"));
    assert.equal(source.size % ALIGNED_BLOCK_BYTES, 0);
    const device = referenceDevice(source, tar);
    assert.ok(equalBytes(await source.read(0, source.size), device));
    const random = prng(7);
    for (let i = 0; i < 3000; i++) {
      const offset = Math.floor(random() * source.size);
      const length = Math.min(
        source.size - offset,
        Math.floor(random() * (i % 10 ? 9000 : 300_000)),
      );
      const got = await readSomeWay(source, offset, length, i);
      assert.ok(equalBytes(got, device.subarray(offset, offset + length)), `${offset}+${length}`);
    }
    await assert.rejects(source.read(source.size - 1, 2), RangeError);
  },
});

for (const name of ["big", "big-multi"]) {
  Deno.test({
    name: `aligned tar: through the zinfo (${name}): every file and random reads equal the tar`,
    ignore,
    async fn() {
      const tar = await gunzip(`${FIXTURES}/${name}.tar.gz`);
      const meta = Deno.readFileSync(`${FIXTURES}/${name}.meta.erofs`);
      const blob = await LocalFile.open(`${FIXTURES}/${name}.tar.gz`);
      const zinfo = await LocalFile.open(`${FIXTURES}/${name}.zinfo`);
      const gzip = await GzipRandomAccess.open(blob, zinfo, { cacheBytes: 3 << 20 });
      const source = AlignedTarSource.open(meta, gzip);
      try {
        const device = referenceDevice(source, tar);
        const e = source.index.extents;
        if (name === "big") {
          assert.deepEqual(
            new Set(Array.from({ length: e.count }, (_, k) => `${e.tarStart[k]}+${e.length[k]}`)),
            tarFiles("big.tar"),
          );
        }
        for (let k = 0; k < e.count; k++) {
          const got = await source.read(e.deviceStart[k], e.length[k]);
          assert.ok(equalBytes(got, tar.subarray(e.tarStart[k], e.tarStart[k] + e.length[k])));
        }
        const random = prng(name.length);
        for (let i = 0; i < 500; i++) {
          const offset = Math.floor(random() * source.size);
          const length = Math.min(source.size - offset, Math.floor(random() * 200_000));
          const got = await readSomeWay(source, offset, length, i);
          assert.ok(
            equalBytes(got, device.subarray(offset, offset + length)),
            `${offset}+${length}`,
          );
        }
      } finally {
        await source.close();
        await blob.close?.();
        await zinfo.close?.();
      }
    },
  });
}

Deno.test({
  name: "aligned tar: the same meta gives the same device bytes (reattach serves the same)",
  ignore,
  fn() {
    for (const name of ["layer", "big"]) {
      const meta = Deno.readFileSync(`${FIXTURES}/${name}.meta.erofs`);
      const a = alignTarIndex(meta), b = alignTarIndex(meta.slice());
      assert.ok(equalBytes(a.image, b.image));
      assert.equal(a.sizeBytes, b.sizeBytes);
      assert.deepEqual(a.extents.deviceStart, b.extents.deviceStart);
      assert.deepEqual(a.extents.tarStart, b.extents.tarStart);
    }
  },
});

/** Writes the whole device to a file, loop-mounts it read-only and returns its manifest. */
async function mountedManifest(source: AlignedTarSource, work: string): Promise<string> {
  const image = `${work}/device.img`;
  Deno.writeFileSync(image, await source.read(0, source.size));
  const dir = `${work}/mnt`;
  Deno.mkdirSync(dir);
  const mount = await new Deno.Command("mount", {
    args: ["-t", "erofs", "-o", "ro,loop", image, dir],
    stderr: "piped",
  }).output();
  assert.equal(mount.code, 0, new TextDecoder().decode(mount.stderr));
  try {
    return await manifestOf(dir);
  } finally {
    await new Deno.Command("umount", { args: [dir] }).output();
  }
}

for (const name of ["layer", "big-multi"]) {
  Deno.test({
    name: `aligned tar: the kernel mounts the 4 KiB device of ${name}; manifest as expected`,
    ignore: ignoreMount,
    async fn() {
      const work = Deno.makeTempDirSync({ prefix: "erofs-oci-aligned-test-" });
      try {
        const tar = name === "layer"
          ? Deno.readFileSync(`${FIXTURES}/layer.tar`)
          : await gunzip(`${FIXTURES}/${name}.tar.gz`);
        const meta = Deno.readFileSync(`${FIXTURES}/${name}.meta.erofs`);
        const source = AlignedTarSource.open(meta, memoryTar(tar));
        const want = expectedManifest(name === "layer" ? "layer.meta.txt" : "big.meta.txt");
        assert.equal(await mountedManifest(source, work), want);
      } finally {
        Deno.removeSync(work, { recursive: true });
      }
    },
  });
}

/** The layer fixture's meta with `patch` applied to a copy. */
function patchedMeta(patch: (view: DataView, bytes: Uint8Array) => void): Uint8Array {
  const bytes = Deno.readFileSync(`${FIXTURES}/layer.meta.erofs`);
  patch(new DataView(bytes.buffer), bytes);
  return bytes;
}

/**
 * Byte offset of the dirent named `name` in the layer fixture's root directory (nid 48,
 * FLAT_INLINE, 980 bytes: one block at block 8, then 468 bytes inline after the inode).
 */
function rootDirentAt(meta: Uint8Array, name: string): number {
  const view = new DataView(meta.buffer, meta.byteOffset);
  for (const [start, length] of [[8 * 512, 512], [1536 + 32, 980 - 512]]) {
    const count = view.getUint16(start + 8, true) / 12;
    for (let k = 0; k < count; k++) {
      const nameStart = view.getUint16(start + k * 12 + 8, true);
      const nameEnd = k + 1 < count ? view.getUint16(start + (k + 1) * 12 + 8, true) : length;
      const bytes = meta.subarray(start + nameStart, start + nameEnd);
      const text = new TextDecoder().decode(bytes).replace(/\0+$/, "");
      if (text === name) return start + k * 12;
    }
  }
  throw new Error(`no root entry ${name}`);
}

function nidOfRootEntry(meta: Uint8Array, name: string): number {
  return Number(
    new DataView(meta.buffer, meta.byteOffset).getBigUint64(rootDirentAt(meta, name), true),
  );
}

Deno.test({
  name: "aligned tar: hostile meta images are refused with a clear FormatError",
  ignore,
  fn() {
    const cases: [string, Uint8Array, RegExp, number?][] = [
      // f4096.bin's chunk (index@2208) pointed at big-1m3.bin's data (tar block 1).
      ["overlapping files", patchedMeta((v) => v.setUint32(2212, 1, true)), /overlap in the tar/],
      // one.bin (index@2976) pointed past the tar's 3328 blocks.
      ["data past the tar", patchedMeta((v) => v.setUint32(2980, 3400, true)), /past the tar/],
      // The tar is shorter than the meta says.
      ["short tar", Deno.readFileSync(`${FIXTURES}/layer.meta.erofs`), /past the tar/, 1_000_000],
      // f4096.bin's chunk on device 0 (the meta itself).
      ["chunk on device 0", patchedMeta((v) => v.setUint16(2210, 0, true)), /device 0/],
      // Root (nid 48, compact, inode@1536) with a huge size.
      [
        "huge directory",
        patchedMeta((v) => v.setUint32(1536 + 8, 0x7fffffff, true)),
        /outside the image|exceed/,
      ],
      ["not a tar index", Deno.readFileSync(`${FIXTURES}/basic.erofs`), /not a tar-index image/],
      // "dir" points at "emptydir": one directory reached by two names.
      [
        "directory twice",
        patchedMeta((v, b) => {
          v.setBigUint64(rootDirentAt(b, "dir"), BigInt(nidOfRootEntry(b, "emptydir")), true);
        }),
        /reachable twice/,
      ],
      // "dir" points at the root itself.
      [
        "directory loop",
        patchedMeta((v, b) => {
          v.setBigUint64(rootDirentAt(b, "dir"), 48n, true);
        }),
        /contains itself|reachable twice/,
      ],
      // f4096.bin (inode@2176) as FLAT_PLAIN: its data would be in the meta image.
      ["file data in the meta", patchedMeta((v) => v.setUint16(2176, 0, true)), /data layout 0/],
      // An xattr with a long-prefix name index (0x80 | 0) on xattr.txt (inode@3072).
      [
        "long xattr prefix",
        patchedMeta((v, b) => {
          const body = 3072 + 32 + 12 + 4 * b[3072 + 32 + 4];
          v.setUint8(body + 1, 0x80);
        }),
        /name index 128/,
      ],
      ["not EROFS", new Uint8Array(4096), /not an EROFS image/],
    ];
    for (const [what, meta, pattern, limit] of cases) {
      assert.throws(
        () => alignTarIndex(meta, { tarLimitBytes: limit }),
        (error: unknown) => error instanceof FormatError && pattern.test(error.message),
        what,
      );
    }
  },
});
