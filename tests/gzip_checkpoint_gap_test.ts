/**
 * A read inflates from the zinfo checkpoint before it, so checkpoints far apart make every read
 * cost up to the whole gap (a hostile zinfo with one checkpoint: each 4 KiB read of a 1 GB
 * layer inflated up to 1 GB). Gaps above MAX_CHECKPOINT_GAP_BYTES (between checkpoints and from
 * the last to the end of the tar) are refused when the zinfo is opened; zinfos made by
 * mkfs.erofs 1.9.3 and `erofs-oci index` (a checkpoint every 4 MiB) still open.
 */
import assert from "node:assert/strict";
import { FormatError } from "../lib/errors.ts";
import { GzipRandomAccess } from "../lib/gzip/gzip_random_access.ts";
import { parseIndexRecord, sha256Digest } from "../lib/gzip/index_record.ts";
import { buildZinfo } from "../lib/gzip/zinfo_builder.ts";
import {
  MAX_CHECKPOINT_GAP_BYTES,
  MAX_SPAN_BYTES,
  Zinfo,
  ZINFO_CHECKPOINT_BYTES,
  ZINFO_HEADER_BYTES,
} from "../lib/gzip/zinfo.ts";
import {
  checkTarIndexFiles,
  type TarIndexFiles,
  verifyTarIndexFiles,
} from "../lib/mount/layer_index_files.ts";
import { openTarIndexSource } from "../lib/mount/tar_index_source.ts";
import { LocalFile } from "../lib/source/local_file.ts";
import { crc32 } from "../ffi/zlib.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { gunzip } from "./_support/gzip_data.ts";
import { MemorySource } from "./_support/memory_source.ts";
import { command, FIXTURES, path, PEER_BIN, requires } from "./_support/requires.ts";

const ignore = requires(command("tar"), command("gzip"), path(`${PEER_BIN}/mkfs.erofs`));

/** 80 MiB of data in one file: 16 varying bytes per 4 KiB, so gzip -1 makes ~0.7 MB. */
const DATA_BYTES = 80 << 20;

interface Layer {
  dir: string;
  gz: string;
  tar: Uint8Array;
  /** mkfs.erofs 1.9.3 --tar=i --gzinfo */
  peerZinfo: Uint8Array<ArrayBuffer>;
  /** `erofs-oci index` output: NAME.{meta.erofs,zinfo,pieces,index.json} */
  ours: TarIndexFiles;
}

async function run(program: string, args: string[], cwd?: string): Promise<void> {
  const out = await new Deno.Command(program, { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`${program} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
}

async function makeLayer(dir: string): Promise<Layer> {
  await Deno.mkdir(`${dir}/tree`);
  const data = new Uint8Array(DATA_BYTES);
  const view = new DataView(data.buffer);
  for (let at = 0; at < DATA_BYTES; at += 4096) {
    for (let j = 0; j < 4; j++) view.setUint32(at + 4 * j, Math.imul(at + j, 2654435761), true);
  }
  await Deno.writeFile(`${dir}/tree/data.bin`, data);
  await run("tar", [
    "--numeric-owner",
    "--owner=0",
    "--group=0",
    "--mtime=@1700000000",
    "-cf",
    `${dir}/layer.tar`,
    "-C",
    `${dir}/tree`,
    "data.bin",
  ]);
  await Deno.remove(`${dir}/tree`, { recursive: true });
  await run("gzip", ["-1", "-n", `${dir}/layer.tar`]);
  const gz = `${dir}/layer.tar.gz`;
  await run(`${PEER_BIN}/mkfs.erofs`, [
    "--tar=i",
    `--gzinfo=${dir}/peer.zinfo`,
    "-T1700000000",
    `${dir}/peer.meta.erofs`,
    gz,
  ]);
  assertSuccess(
    await runCli(["index", gz, "-o", `${dir}/idx`, "--timestamp", "1700000000"], {
      timeoutMs: 120_000,
    }),
  );
  const record = parseIndexRecord(await Deno.readFile(`${dir}/idx/layer.index.json`));
  return {
    dir,
    gz,
    tar: await gunzip(gz),
    peerZinfo: await Deno.readFile(`${dir}/peer.zinfo`),
    ours: {
      record,
      meta: `${dir}/idx/${record.meta.file}`,
      zinfo: `${dir}/idx/${record.zinfo!.file}`,
      pieces: `${dir}/idx/${record.pieces!.file}`,
    },
  };
}

let layer: Promise<Layer> | undefined;
let layerDir: string | undefined;
/** Made once for all tests here; removed by the last test, or at exit if it did not run. */
function sharedLayer(): Promise<Layer> {
  layerDir ??= Deno.makeTempDirSync({ prefix: "erofs-oci-gap-" });
  return layer ??= makeLayer(layerDir);
}
function removeLayer(): void {
  if (layerDir) Deno.removeSync(layerDir, { recursive: true });
  layerDir = undefined;
}
globalThis.addEventListener("unload", removeLayer);

function outputs(zinfo: Uint8Array): number[] {
  const view = new DataView(zinfo.buffer, zinfo.byteOffset, zinfo.byteLength);
  const count = view.getUint32(0, true);
  return Array.from(
    { length: count },
    (_, i) => Number(view.getBigUint64(ZINFO_HEADER_BYTES + i * ZINFO_CHECKPOINT_BYTES + 8, true)),
  );
}

/** The zinfo with only the checkpoints `keep` (indexes), header count adjusted. */
function keepCheckpoints(zinfo: Uint8Array, keep: number[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(ZINFO_HEADER_BYTES + keep.length * ZINFO_CHECKPOINT_BYTES);
  out.set(zinfo.subarray(0, ZINFO_HEADER_BYTES));
  new DataView(out.buffer).setUint32(0, keep.length, true);
  keep.forEach((index, i) => {
    const from = ZINFO_HEADER_BYTES + index * ZINFO_CHECKPOINT_BYTES;
    out.set(
      zinfo.subarray(from, from + ZINFO_CHECKPOINT_BYTES),
      ZINFO_HEADER_BYTES + i * ZINFO_CHECKPOINT_BYTES,
    );
  });
  return out;
}

function maxGap(zinfo: Uint8Array, streamBytes: number): number {
  const outs = [...outputs(zinfo), streamBytes];
  return Math.max(...outs.slice(1).map((out, i) => out - outs[i]));
}

const refusedFor = (pattern: RegExp) => (error: unknown) =>
  error instanceof FormatError && pattern.test(error.message) &&
  /erofs-oci index/.test(error.hint ?? "");

Deno.test({
  name: "checkpoint gap: every fixture zinfo, and erofs-utils' and ours of an 80 MiB layer, open",
  ignore,
  async fn() {
    for (const name of ["layer", "big", "big-multi"]) {
      const zinfo = await Deno.readFile(`${FIXTURES}/${name}.zinfo`);
      const gz = await Deno.stat(`${FIXTURES}/${name}.tar.gz`);
      const tarBytes = (await gunzip(`${FIXTURES}/${name}.tar.gz`)).length;
      await Zinfo.open(new MemorySource(zinfo), gz.size, undefined, { streamBytes: tarBytes });
    }
    const { gz, tar, peerZinfo, ours } = await sharedLayer();
    const gzBytes = (await Deno.stat(gz)).size;
    const ourZinfo = await Deno.readFile(ours.zinfo!);
    // Both producers checkpoint the same way: every ~4 MiB.
    assert.deepEqual(outputs(ourZinfo), outputs(peerZinfo));
    assert.ok(maxGap(peerZinfo, tar.length) < 4.5 * 2 ** 20, `${maxGap(peerZinfo, tar.length)}`);
    await Zinfo.open(new MemorySource(peerZinfo), gzBytes, undefined, { streamBytes: tar.length });
    await verifyTarIndexFiles(ours, ours.record.layer);
    const source = await openTarIndexSource(
      await LocalFile.open(gz),
      { ...ours, meta: ours.meta, layout: "512" },
      ours.record.layer,
      16 << 20,
    );
    try {
      const metaBytes = (await Deno.stat(ours.meta)).size;
      // data.bin's data starts after its 512-byte tar header.
      const at = 70 << 20;
      assert.deepEqual(
        await source.read(metaBytes + 512 + at, 4096),
        tar.slice(512 + at, 512 + at + 4096),
      );
    } finally {
      await source.close();
    }
  },
});

Deno.test({
  name: "checkpoint gap: erofs-utils' zinfo with checkpoints dropped is refused when opened",
  ignore,
  async fn() {
    const { gz, tar, peerZinfo } = await sharedLayer();
    const gzBytes = (await Deno.stat(gz)).size;
    const count = outputs(peerZinfo).length;
    assert.ok(count >= 10, `${count} checkpoints`);
    const open = (zinfo: Uint8Array) =>
      Zinfo.open(new MemorySource(zinfo), gzBytes, undefined, {
        name: "peer.zinfo",
        streamBytes: tar.length,
      });
    // The first and the last: one gap of ~76 MiB in the middle.
    const ends = keepCheckpoints(peerZinfo, [0, count - 1]);
    assert.ok(maxGap(ends, tar.length) > MAX_CHECKPOINT_GAP_BYTES);
    await assert.rejects(
      open(ends),
      refusedFor(/^bad zinfo peer\.zinfo: checkpoints 0 and 1 are \d+ bytes of output apart/),
    );
    // Only the first: the whole tar after it.
    await assert.rejects(
      open(keepCheckpoints(peerZinfo, [0])),
      refusedFor(
        new RegExp(`last checkpoint \\(0\\) is ${tar.length} bytes of output before the end`),
      ),
    );
    // Every other checkpoint: gaps of ~8 MiB are fine.
    const everyOther = keepCheckpoints(
      peerZinfo,
      Array.from({ length: count }, (_, i) => i).filter((i) => i % 2 === 0),
    );
    await open(everyOther);
  },
});

Deno.test({
  name:
    "checkpoint gap: an index whose zinfo lost its checkpoints is refused before a mount, naming it",
  ignore,
  async fn() {
    const { dir, gz, ours } = await sharedLayer();
    const thin = keepCheckpoints(await Deno.readFile(ours.zinfo!), [0]);
    // A hostile artifact is consistent with itself: the record names the edited zinfo.
    const zinfoPath = `${dir}/thin.zinfo`;
    await Deno.writeFile(zinfoPath, thin);
    const record = structuredClone(ours.record);
    record.zinfo = {
      ...record.zinfo!,
      file: "thin.zinfo",
      digest: sha256Digest(thin),
      checkpoints: 1,
    };
    const files = { ...ours, record, zinfo: zinfoPath };
    const named = new RegExp(
      `^bad zinfo thin\\.zinfo of layer ${record.layer.digest}: its last checkpoint \\(0\\)`,
    );
    await assert.rejects(checkTarIndexFiles(files, record.layer), refusedFor(named));
    // The server's own open (no record: the meta's tar size bounds the reads) refuses too.
    const blob = await LocalFile.open(gz);
    try {
      await assert.rejects(
        openTarIndexSource(
          blob,
          { meta: ours.meta, zinfo: zinfoPath, layout: "512" },
          record.layer,
          16 << 20,
        ),
        refusedFor(/^bad zinfo .*thin\.zinfo of layer .*: its last checkpoint \(0\)/),
      );
      // A zinfo that cannot be opened at all: refused, and the meta's file closed again.
      await assert.rejects(
        openTarIndexSource(
          blob,
          { meta: ours.meta, zinfo: `${dir}/missing.zinfo`, layout: "512" },
          record.layer,
          16 << 20,
        ),
        /missing\.zinfo/,
      );
      assert.deepEqual(descriptorsOn(ours.meta), [], "the meta's file is closed");
    } finally {
      await blob.close?.();
    }
  },
});

/** This process's descriptors open on `file`. */
function descriptorsOn(file: string): string[] {
  const real = Deno.realPathSync(file);
  return [...Deno.readDirSync("/proc/self/fd")].map((fd) => fd.name).filter((fd) => {
    try {
      return Deno.readLinkSync(`/proc/self/fd/${fd}`) === real;
    } catch {
      return false;
    }
  });
}

Deno.test({
  name: "checkpoint gap: without the tar size, a read far past the last checkpoint fails at once",
  ignore,
  async fn() {
    const { gz, tar, peerZinfo } = await sharedLayer();
    const blob = await LocalFile.open(gz);
    const gzip = await GzipRandomAccess.open(
      blob,
      new MemorySource(keepCheckpoints(peerZinfo, [0])),
    );
    try {
      assert.deepEqual(await gzip.read(4096, 4096), tar.slice(4096, 8192));
      const inflated = gzip.stats.inflatedBytes;
      const far = MAX_CHECKPOINT_GAP_BYTES + 4096;
      await assert.rejects(
        gzip.read(far, 4096),
        refusedFor(/^read at uncompressed offset \d+ is \d+ bytes past zinfo checkpoint 0/),
      );
      assert.equal(gzip.stats.inflatedBytes, inflated, "nothing inflated for the refused read");
      // Just inside the limit still reads.
      const near = MAX_CHECKPOINT_GAP_BYTES - 4096;
      assert.deepEqual(await gzip.read(near, 4096), tar.slice(near, near + 4096));
    } finally {
      gzip.close();
      await blob.close?.();
    }
  },
});

/**
 * A valid gzip whose single deflate block (fixed Huffman codes: a zero, then matches of 258 at
 * distance 1) holds `outputBytes` zeros: no block boundary for the builder to checkpoint at.
 */
function oneBlockGzip(matches: number): { gz: Uint8Array; outputBytes: number } {
  const out: number[] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
  let bitBuffer = 0, bitCount = 0;
  const bits = (value: number, count: number) => { // LSB first (RFC 1951 §3.1.1)
    bitBuffer |= value << bitCount;
    bitCount += count;
    while (bitCount >= 8) {
      out.push(bitBuffer & 0xff);
      bitBuffer >>>= 8;
      bitCount -= 8;
    }
  };
  const code = (value: number, count: number) => { // Huffman codes MSB first
    for (let i = count - 1; i >= 0; i--) bits((value >> i) & 1, 1);
  };
  bits(1, 1); // BFINAL
  bits(1, 2); // BTYPE 01: fixed codes
  code(0x30, 8); // literal 0
  for (let i = 0; i < matches; i++) {
    code(0xc5, 8); // length 258 (symbol 285)
    code(0, 5); // distance 1
  }
  code(0, 7); // end of block (256)
  if (bitCount > 0) bits(0, 8 - bitCount);
  const outputBytes = 1 + 258 * matches;
  const crc = crc32(0, new Uint8Array(new ArrayBuffer(outputBytes)));
  const trailer = new DataView(new ArrayBuffer(8));
  trailer.setUint32(0, crc, true);
  trailer.setUint32(4, outputBytes, true);
  return { gz: new Uint8Array([...out, ...new Uint8Array(trailer.buffer)]), outputBytes };
}

Deno.test({
  name: "checkpoint gap: index refuses a gzip with no block boundary for more than the limit",
  ignore,
  async fn() {
    const { dir } = await sharedLayer();
    const matches = Math.ceil((MAX_CHECKPOINT_GAP_BYTES + (4 << 20)) / 258);
    const { gz, outputBytes } = oneBlockGzip(matches);
    const file = `${dir}/one-block.gz`;
    await Deno.writeFile(file, gz);
    // A valid gzip (gzip -t checks the CRC and length).
    await run("gzip", ["-t", file]);
    assert.equal((await gunzip(file)).length, outputBytes);
    await assert.rejects(
      buildZinfo(ReadableStream.from([gz])),
      (error: unknown) =>
        error instanceof FormatError && /no deflate block ends in \d+ bytes/.test(error.message),
    );
    // Below the limit the same shape still indexes (one checkpoint).
    const small = oneBlockGzip(Math.floor((MAX_CHECKPOINT_GAP_BYTES - 4096) / 258));
    const built = await buildZinfo(ReadableStream.from([small.gz]));
    assert.equal(outputs(built.zinfo).length, 1);
    assert.equal(built.uncompressedBytes, small.outputBytes);
    await Zinfo.open(new MemorySource(built.zinfo), small.gz.length, undefined, {
      streamBytes: small.outputBytes,
    });
  },
});

Deno.test({
  name: "checkpoint gap: index --span above MAX_SPAN_BYTES is a usage error",
  ignore,
  async fn() {
    const { dir } = await sharedLayer();
    const args = ["index", `${FIXTURES}/layer.tar.gz`, "-o", `${dir}/span`, "--span"];
    const refused = await runCli([...args, String(MAX_SPAN_BYTES + 1)]);
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /--span must be \d+ to 16777216 bytes/);
    assertSuccess(await runCli([...args, String(MAX_SPAN_BYTES)]));
  },
});

Deno.test({ name: "checkpoint gap: remove the shared layer", ignore, fn: removeLayer });
