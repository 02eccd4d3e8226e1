/**
 * Benchmark of the gzip random-access path (run by scripts/bench-gzip.sh).
 * Usage: deno run -A scripts/bench_gzip.ts LAYER.tar.gz [PEER_BIN]
 *
 * Prints, for one gzip layer: zinfo build time (ours, streaming) vs `gzip -dc` and vs
 * `mkfs.erofs --tar=i --gzinfo` (erofs-utils, which also writes the meta image); a cold
 * sequential read through the checkpoints vs `gzip -dc`; cold random 4 KiB reads (latency and
 * bytes inflated per read); the share of the compressed layer fetched to read 10 % of the
 * files (random or in tar order) for several spans; and checks bytes against `gzip -dc`.
 */
import { buildZinfo } from "../lib/gzip/zinfo_builder.ts";
import { indexGzipLayer } from "../lib/gzip/index_layer.ts";
import { GzipRandomAccess } from "../lib/gzip/gzip_random_access.ts";
import { LocalFile } from "../lib/source/local_file.ts";
import { MemorySource } from "../tests/_support/memory_source.ts";
import { prng } from "../tests/_support/gzip_data.ts";
import { readTar } from "../lib/tar/reader.ts";

const [layer, peerBin] = Deno.args;
if (!layer) {
  console.error("usage: bench_gzip.ts LAYER.tar.gz [PEER_BIN]");
  Deno.exit(2);
}

async function timed<T>(what: string, body: () => Promise<T>): Promise<[T, number]> {
  const start = performance.now();
  const result = await body();
  const ms = performance.now() - start;
  console.log(`${what.padEnd(48)} ${(ms / 1000).toFixed(2).padStart(7)} s`);
  return [result, ms];
}

async function tool(program: string, ...args: string[]): Promise<Uint8Array> {
  const out = await new Deno.Command(program, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) throw new Error(`${program}: ${new TextDecoder().decode(out.stderr)}`);
  return out.stdout;
}

const gzBytes = (await Deno.stat(layer)).size;
console.log(`layer ${layer}: ${(gzBytes / 1e6).toFixed(1)} MB compressed`);

const [tar, gunzipMs] = await timed(
  "gzip -dc (floor for one pass)",
  () => tool("gzip", "-dc", layer),
);
console.log(`  uncompressed ${(tar.length / 1e6).toFixed(1)} MB`);

const [built, buildMs] = await timed("zinfo build, ours (stream once, CRC checked)", async () => {
  using file = await Deno.open(layer);
  return await buildZinfo(file.readable);
});
console.log(`  ${built.members} member(s), ${(built.zinfo.length - 12) / 32785} checkpoints`);

const work = await Deno.makeTempDir({ prefix: "bench-gzip-" });
try {
  await timed("erofs-oci index (zinfo + tar-index meta, ours)", async () => {
    using file = await Deno.open(layer);
    const paths = {
      meta: `${work}/ours.meta.erofs`,
      zinfo: `${work}/ours.zinfo`,
      pieces: `${work}/ours.pieces`,
    };
    return await indexGzipLayer(file.readable, paths, {
      buildTimeSec: 1700000000,
    });
  });
  if (peerBin) {
    await timed("mkfs.erofs --tar=i --gzinfo (erofs-utils, + meta)", () =>
      tool(
        `${peerBin}/mkfs.erofs`,
        "--tar=i",
        `--gzinfo=${work}/peer.zinfo`,
        `${work}/peer.meta.erofs`,
        layer,
      ));
    const peer = await Deno.readFile(`${work}/peer.zinfo`);
    const sameTable = peer.length === built.zinfo.length;
    console.log(
      `  peer zinfo ${peer.length} B, ours ${built.zinfo.length} B, same size: ${sameTable}`,
    );
  }

  const blob = await LocalFile.open(layer);
  try {
    const zinfo = new MemorySource(built.zinfo);
    for (const inflater of ["zlib", "ts"] as const) {
      console.log(`inflater: ${inflater === "zlib" ? "system zlib via FFI" : "pure TypeScript"}`);
      await readBench(blob, zinfo, inflater);
    }
  } finally {
    await blob.close();
  }
  await fetchShares();
} finally {
  await Deno.remove(work, { recursive: true });
}

/**
 * Share of the compressed layer a reader must fetch to read 10 % of the files: union of the
 * compressed ranges read (no chunk rounding), plus the zinfo itself, per span.
 */
async function fetchShares() {
  const files: { offset: number; size: number }[] = [];
  for await (const entry of readTar(ReadableStream.from([tar]))) {
    if (entry.kind === "file" && entry.size > 0 && !entry.sparse) {
      files.push({ offset: entry.dataOffset, size: entry.size });
    }
  }
  const gz = await Deno.readFile(layer);
  const rng = prng(7);
  const tenth = Math.max(1, Math.floor(files.length / 10));
  const randomPick = [...files].sort(() => rng() - 0.5).slice(0, tenth)
    .sort((a, b) => a.offset - b.offset);
  const start = Math.floor(rng() * (files.length - tenth));
  const runPick = files.slice(start, start + tenth);
  console.log(`fetch share for 10 % of ${files.length} files (compressed bytes / layer):`);
  for (const span of [4 << 20, 1 << 20, 256 << 10]) {
    const zinfo = (await buildZinfo(ReadableStream.from([gz]), { spanBytes: span })).zinfo;
    const shares = [];
    for (const pick of [randomPick, runPick]) {
      const blob = new MemorySource(gz);
      const reader = new GzipRandomAccess(
        blob,
        (await GzipRandomAccess.open(blob, new MemorySource(zinfo))).zinfo,
        { cacheBytes: 256 << 20 },
      );
      for (const file of pick) await reader.read(file.offset, file.size);
      reader.close();
      shares.push(union(blob.reads) / gz.length);
    }
    console.log(
      `  span ${(span / 1024).toString().padStart(5)} KiB: random ${pct(shares[0])}, ` +
        `in tar order ${pct(shares[1])}; zinfo ${pct(zinfo.length / gz.length)} of the layer`,
    );
  }
}

function union(reads: { offset: number; length: number }[]): number {
  const sorted = [...reads].sort((a, b) => a.offset - b.offset);
  let total = 0, end = -1;
  for (const { offset, length } of sorted) {
    const from = Math.max(offset, end);
    if (offset + length > from) total += offset + length - from;
    end = Math.max(end, offset + length);
  }
  return total;
}

function pct(x: number): string {
  return `${(x * 100).toFixed(1)} %`;
}

async function readBench(blob: LocalFile, zinfo: MemorySource, inflater: "zlib" | "ts") {
  const sequential = await GzipRandomAccess.open(blob, zinfo, { inflater });
  const [, seqMs] = await timed("cold sequential read, 1 MiB reads (ours)", async () => {
    for (let at = 0; at < tar.length; at += 1 << 20) {
      const got = await sequential.read(at, Math.min(1 << 20, tar.length - at));
      if (got[0] !== tar[at] || got.at(-1) !== tar[at + got.length - 1]) {
        throw new Error(`mismatch at ${at}`);
      }
    }
  });
  sequential.close();
  console.log(
    `  ${(seqMs / gunzipMs).toFixed(2)}x gzip -dc; build ${(buildMs / gunzipMs).toFixed(2)}x`,
  );

  const reads = 200;
  const random = await GzipRandomAccess.open(blob, zinfo, { cacheBytes: 1 << 20, inflater });
  const rng = prng(42);
  const [, randMs] = await timed(`cold random 4 KiB reads x${reads} (1 MiB cache)`, async () => {
    for (let i = 0; i < reads; i++) {
      const at = Math.floor(rng() * (tar.length - 4096));
      const got = await random.read(at, 4096);
      for (let j = 0; j < 4096; j += 512) {
        if (got[j] !== tar[at + j]) throw new Error(`mismatch at ${at + j}`);
      }
    }
  });
  console.log(
    `  ${(randMs / reads).toFixed(1)} ms/read, ${
      (random.stats.inflatedBytes / reads / 1e6).toFixed(2)
    } MB inflated/read, ${((random.stats.inflatedBytes / randMs) / 1e3).toFixed(0)} MB/s inflate`,
  );
  random.close();
}
