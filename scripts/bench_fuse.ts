/**
 * Cold full-read throughput: an EROFS image read directly vs through the FUSE blob, and a big
 * file inside EROFS mounted on the plain file vs on the FUSE blob. Page caches are dropped
 * before every run. Root only; prints figures, asserts nothing.
 *
 * Usage: tools/bin/deno run -A scripts/bench_fuse.ts [--size-mib 256] [--image FILE --file PATH]
 * Without --image, builds an image with one random file of --size-mib in a temp dir.
 */
import { parseArgs } from "node:util";
import { startFuseBlob } from "../lib/fuse/blob.ts";
import { mountErofsFile, unmountErofs } from "../lib/mount/erofs_file.ts";
import { writeSmallFile } from "../ffi/files.ts";
import { LocalFile } from "../lib/source/local_file.ts";
import type { Source } from "../lib/source/source.ts";

const { values } = parseArgs({
  options: {
    "size-mib": { type: "string", default: "256" },
    image: { type: "string" },
    file: { type: "string" },
  },
});

const work = await Deno.makeTempDir({ prefix: "erofs-oci-bench-" });

function dropCaches(): void {
  writeSmallFile("/proc/sys/vm/drop_caches", "3");
}

/** Reads `file` to the end with 1 MiB reads in a child (`dd`), returns MB/s. */
async function readThroughput(file: string): Promise<{ mbps: number; bytes: number }> {
  dropCaches();
  const start = performance.now();
  const out = await new Deno.Command("dd", {
    args: [`if=${file}`, "of=/dev/null", "bs=1M"],
    stderr: "piped",
  }).output();
  const seconds = (performance.now() - start) / 1000;
  if (!out.success) throw new Error(`dd ${file}: ${new TextDecoder().decode(out.stderr)}`);
  const bytes = Number(/^(\d+) bytes/m.exec(new TextDecoder().decode(out.stderr))?.[1] ?? 0);
  return { mbps: bytes / 1e6 / seconds, bytes };
}

function report(label: string, result: { mbps: number; bytes: number }): void {
  console.log(
    `${label.padEnd(44)} ${result.mbps.toFixed(0).padStart(6)} MB/s  (${result.bytes} B)`,
  );
}

async function buildImage(sizeMiB: number): Promise<{ image: string; file: string }> {
  const tree = `${work}/tree`;
  await Deno.mkdir(tree);
  const data = new Uint8Array(sizeMiB << 20);
  const view = new Uint32Array(data.buffer);
  let x = 0x9e3779b9;
  for (let i = 0; i < view.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    view[i] = x;
  }
  await Deno.writeFile(`${tree}/big.bin`, data);
  const image = `${work}/bench.erofs`;
  const out = await new Deno.Command("mkfs.erofs", { args: [image, tree], stdout: "null" })
    .output();
  if (!out.success) throw new Error("mkfs.erofs failed");
  await Deno.remove(tree, { recursive: true });
  return { image, file: "big.bin" };
}

async function withFuse<T>(source: Source, body: (file: string) => Promise<T>): Promise<T> {
  const blob = await startFuseBlob(source, `${work}/fuse`);
  try {
    const result = await body(blob.filePath);
    const { reads, bytes } = blob.stats();
    console.log(`  FUSE: ${reads} READs, average ${(bytes / reads / 1024).toFixed(0)} KiB`);
    return result;
  } finally {
    await blob.close();
  }
}

async function withErofs<T>(file: string, body: (dir: string) => Promise<T>): Promise<T> {
  const dir = `${work}/mnt`;
  await Deno.mkdir(dir, { recursive: true });
  await mountErofsFile(file, dir);
  try {
    return await body(dir);
  } finally {
    await unmountErofs(dir);
  }
}

try {
  const { image, file } = values.image
    ? { image: values.image, file: values.file ?? "" }
    : await buildImage(Number(values["size-mib"]));
  if (!file) throw new Error("--image needs --file (a big file inside the image)");
  console.log(`image ${image} (${(await Deno.stat(image)).size} B), file /${file}`);

  report("image, direct file", await readThroughput(image));
  const local = await LocalFile.open(image);
  try {
    report("image via FUSE blob (LocalFile source)", await withFuse(local, readThroughput));
    const memory = await Deno.readFile(image);
    const inMemory: Source = {
      size: memory.length,
      read: (offset, length) => Promise.resolve(memory.subarray(offset, offset + length)),
    };
    report("image via FUSE blob (in-memory source)", await withFuse(inMemory, readThroughput));
    report(
      "EROFS on direct file, read /" + file,
      await withErofs(image, (dir) => readThroughput(`${dir}/${file}`)),
    );
    report(
      "EROFS on FUSE blob (LocalFile), read /" + file,
      await withFuse(local, (blob) => withErofs(blob, (dir) => readThroughput(`${dir}/${file}`))),
    );
    report(
      "EROFS on FUSE blob (in-memory), read /" + file,
      await withFuse(
        inMemory,
        (blob) => withErofs(blob, (dir) => readThroughput(`${dir}/${file}`)),
      ),
    );
  } finally {
    await local.close();
  }
} finally {
  await Deno.remove(work, { recursive: true });
}
