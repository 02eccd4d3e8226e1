/**
 * The FUSE per-request path on a real tree: every file of an EROFS image read (`tar | cat`)
 * through EROFS on the FUSE blob, against the same image mounted from the file. The blob's
 * source is the mount server's stack (pinned pages → chunk cache → disk cache) over the local
 * image, the disk cache filled first: no network, only the FUSE path. Page caches are dropped
 * before every read; local and FUSE rounds alternate. Root only; prints figures, asserts nothing.
 *
 * Usage: tools/bin/deno run -A scripts/bench_fuse_tree.ts [IMAGE] [ROUNDS]
 * (IMAGE: default .cache/bench/bench.erofs from scripts/bench/build-image.sh)
 */
import { startFuseBlob } from "../lib/fuse/blob.ts";
import { mountErofsFile, unmountErofs } from "../lib/mount/erofs_file.ts";
import { writeSmallFile } from "../ffi/libc.ts";
import { LocalFile } from "../lib/source/local_file.ts";
import { DiskCache } from "../lib/source/disk_cache.ts";
import { CachedSource } from "../lib/source/cached.ts";
import { PrefetchedSource } from "../lib/source/prefetched.ts";

const image = Deno.args[0] ?? ".cache/bench/bench.erofs";
const rounds = Number(Deno.args[1] ?? 3);
const work = await Deno.makeTempDir({ prefix: "erofs-oci-bench-tree-" });

async function fullRead(dir: string): Promise<number> {
  new Deno.Command("sync").outputSync();
  writeSmallFile("/proc/sys/vm/drop_caches", "3");
  const start = performance.now();
  const out = await new Deno.Command("sh", {
    args: ["-c", `tar -C '${dir}' -cf - . | cat >/dev/null`],
  }).output();
  if (!out.success) throw new Error("tar failed");
  return (performance.now() - start) / 1000;
}

const file = await LocalFile.open(image);
const cache = DiskCache.open({ dir: `${work}/cache` })!;
const disk = cache.wrap(file, { digest: "sha256:" + "ab".repeat(32), origin: "local" });
const served = new PrefetchedSource(new CachedSource(disk));
const mnt = `${work}/mnt`;
try {
  for (let at = 0; at < disk.size; at += 1 << 20) {
    await disk.read(at, Math.min(1 << 20, disk.size - at));
  }
  Deno.mkdirSync(mnt);
  const blob = await startFuseBlob(served, `${work}/fuse`);
  const local: number[] = [];
  const fuse: number[] = [];
  try {
    for (let round = 0; round < rounds; round++) {
      await mountErofsFile(image, mnt);
      try {
        local.push(await fullRead(mnt));
      } finally {
        await unmountErofs(mnt);
      }
      await mountErofsFile(blob.filePath, mnt);
      try {
        const before = blob.stats();
        fuse.push(await fullRead(mnt));
        await new Promise((resolve) => setTimeout(resolve, 100)); // served reads are reported
        const after = blob.stats();
        console.log(
          `round ${round}: local ${local[round].toFixed(2)} s, FUSE ${fuse[round].toFixed(2)} s, ` +
            `${after.reads - before.reads} READs (${after.directReads - before.directReads} ` +
            `answered by the reader thread)`,
        );
      } finally {
        await unmountErofs(mnt);
      }
    }
  } finally {
    await blob.close();
  }
  console.log(
    `best: local ${Math.min(...local).toFixed(2)} s, FUSE ${Math.min(...fuse).toFixed(2)} s ` +
      `(${(Math.min(...fuse) / Math.min(...local)).toFixed(2)}×)`,
  );
} finally {
  await served.close();
  await Deno.remove(work, { recursive: true });
}
