/**
 * In-process replay of the gzip-mount benchmark's file reads (scripts/bench_gzip_mount.ts)
 * against the source a mount serves for a tar.gz layer (openTarIndexSource over a counting
 * blob), without a registry, FUSE or kernel: exact blob bytes and reads, inflated bytes and
 * cursors opened, CPU time. Reads follow each file's data in the tar in `--read-kib` pieces
 * (default 128, the kernel's usual readahead), one at a time — the kernel's own readahead and
 * page cache are not modelled, so use it to compare changes, and the mount benchmark for the
 * figures. `--delay-ms` adds a wait to every blob read (a crude RTT).
 *
 * Usage: tools/bin/deno run -A scripts/bench_gzip_replay.ts LAYER.tar.gz INDEX_DIR
 *        [--delay-ms MS] [--read-kib K] [--cache-mib M]
 * (INDEX_DIR: the output of `erofs-oci index LAYER.tar.gz -o INDEX_DIR`)
 */
import { parseArgs } from "node:util";
import process from "node:process";
import { readTar } from "../lib/tar/mod.ts";
import { parseIndexRecord } from "../lib/gzip/index_record.ts";
import { openTarIndexSource } from "../lib/mount/tar_index_source.ts";
import type { Source } from "../lib/source/source.ts";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    "delay-ms": { type: "string", default: "0" },
    "read-kib": { type: "string", default: "128" },
    "cache-mib": { type: "string", default: "64" },
    /** Replay this trace instead (lines "startMs durationMs tarOffset length"), in order. */
    trace: { type: "string" },
    /** Print every blob read (offset+length in KiB). */
    ranges: { type: "boolean" },
  },
});
const [layerPath, indexDir] = positionals;
if (!layerPath || !indexDir) {
  throw new Error("usage: bench_gzip_replay.ts LAYER.tar.gz INDEX_DIR");
}
const delayMs = Number(values["delay-ms"]);
const readBytes = Number(values["read-kib"]) * 1024;
const layer = await Deno.readFile(layerPath);

interface TarFile {
  path: string;
  dataOffset: number;
  size: number;
}

async function tarFiles(): Promise<TarFile[]> {
  const files: TarFile[] = [];
  const tar = (await Deno.open(layerPath)).readable.pipeThrough(
    new DecompressionStream("gzip"),
  );
  for await (const entry of readTar(tar)) {
    if (entry.kind === "file" && !entry.sparse) {
      files.push({ path: entry.path, dataOffset: entry.dataOffset, size: entry.size });
    }
  }
  return files;
}

class CountingBlob implements Source {
  readonly size = layer.length;
  reads = 0;
  bytes = 0;
  log: string[] = [];
  read(offset: number, length: number): Promise<Uint8Array> {
    this.reads++;
    this.bytes += length;
    if (values.ranges) this.log.push(`${offset >> 10}+${length >> 10}`);
    const bytes = layer.slice(offset, offset + length);
    if (delayMs <= 0) return Promise.resolve(bytes);
    return new Promise((resolve) => setTimeout(() => resolve(bytes), delayMs));
  }
}

const dir = indexDir.replace(/\/$/, "");
const recordName = [...Deno.readDirSync(dir)].find((e) => e.name.endsWith(".index.json"))!.name;
const record = parseIndexRecord(await Deno.readFile(`${dir}/${recordName}`));
const spec = {
  meta: `${dir}/${record.meta.file}`,
  zinfo: record.zinfo ? `${dir}/${record.zinfo.file}` : undefined,
  pieces: record.pieces ? `${dir}/${record.pieces.file}` : undefined,
  record,
};
const files = await tarFiles();
const metaBytes = (await Deno.stat(spec.meta)).size;

async function scenario(label: string, chosen: TarFile[], reads?: number[][]): Promise<void> {
  const blob = new CountingBlob();
  const source = await openTarIndexSource(
    blob,
    spec,
    record.layer,
    Number(values["cache-mib"]) << 20,
  );
  const cpu0 = process.cpuUsage();
  const start = performance.now();
  let data = 0;
  try {
    for (const [offset, length] of reads ?? []) {
      await source.read(metaBytes + offset, length);
      data += length;
    }
    for (const file of chosen) {
      for (let at = 0; at < file.size; at += readBytes) {
        const length = Math.min(readBytes, file.size - at);
        await source.read(metaBytes + file.dataOffset + at, length);
      }
      data += file.size;
    }
  } finally {
    await source.close();
  }
  const sec = (performance.now() - start) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const cpuSec = (cpu.user + cpu.system) / 1e6;
  console.log(
    `${label.padEnd(34)} ${sec.toFixed(2).padStart(6)} s (cpu ${cpuSec.toFixed(2)} s)  ` +
      `${(data / 1e6).toFixed(1).padStart(6)} MB data  ${blob.reads} blob reads  ` +
      `${(blob.bytes / 1e6).toFixed(2)} MB fetched (${
        (100 * blob.bytes / layer.length).toFixed(1)
      } %)`,
  );
  if (values.ranges) {
    const last = chosen.reduce((m, f) => Math.max(m, f.dataOffset + f.size), 0);
    const first = chosen.reduce((m, f) => Math.min(m, f.dataOffset), Infinity);
    console.log(`  tar range (KiB): ${first >> 10}..${last >> 10}`);
    console.log(`  blob reads (KiB): ${blob.log.join(" ")}`);
  }
}

console.log(
  `layer ${(layer.length / 1e6).toFixed(1)} MB, ${files.length} files, ` +
    `${record.zinfo?.checkpoints ?? 0} checkpoints; read ${readBytes >> 10} KiB, ` +
    `delay ${delayMs} ms`,
);
if (values.trace) {
  const reads = (await Deno.readTextFile(values.trace)).split("\n").filter(Boolean)
    .map((line) => line.split(" ").map(Number)).sort((a, b) => a[0] - b[0])
    .map((f) => [f[2], f[3]]);
  await scenario(`trace ${values.trace}`, [], reads);
  Deno.exit(0);
}
const tenth = Math.ceil(files.length / 10);
const sorted = [...files].sort((a, b) => a.path < b.path ? -1 : a.path > b.path ? 1 : 0);
await scenario("first file (middle of the tar)", [files[Math.floor(files.length / 2)]]);
const from = Math.floor(files.length * 0.3);
await scenario("10 % of files, tar order", files.slice(from, from + tenth));
await scenario("every 10th file, path order", sorted.filter((_, i) => i % 10 === 0));
await scenario("full read, tar order", files);
