/**
 * The FUSE per-request path on a real tree: every file of an EROFS image read (`tar | cat`)
 * through EROFS on the FUSE blob, against the same image mounted from the file. The blob's
 * source is the mount server's stack (pinned pages → chunk cache → disk cache) over the local
 * image, the disk cache filled first: no network, only the FUSE path. Page caches are dropped
 * before every read; local and FUSE rounds alternate, and so do the FUSE blob's two modes:
 * `direct` (FOPEN_DIRECT_IO, every EROFS read one FUSE READ) and `page` (the FUSE file's page
 * cache and readahead, FuseServerLimits.pageCache). Root only; prints figures (wall time and
 * this process's CPU time, i.e. the server's), asserts nothing.
 *
 * Usage: tools/bin/deno run -A scripts/bench_fuse_tree.ts [IMAGE] [ROUNDS]
 * (IMAGE: default .cache/bench/bench.erofs from scripts/bench/build-image.sh)
 */
import { type FuseBlob, startFuseBlob } from "../lib/fuse/blob.ts";
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
  const modes = (Deno.env.get("BENCH_FUSE_MODES") ?? "direct,page").split(",");
  const blobs = new Map<string, FuseBlob>();
  for (const mode of modes) {
    blobs.set(
      mode,
      await startFuseBlob(served, `${work}/fuse-${mode}`, { pageCache: mode === "page" }),
    );
  }
  const times = new Map<string, number[]>(["local", ...modes].map((m) => [m, []]));
  try {
    for (let round = 0; round < rounds; round++) {
      await mountErofsFile(image, mnt);
      try {
        times.get("local")!.push(await fullRead(mnt));
      } finally {
        await unmountErofs(mnt);
      }
      const line = [`round ${round}: local ${times.get("local")![round].toFixed(2)} s`];
      for (const [mode, blob] of blobs) {
        await mountErofsFile(blob.filePath, mnt);
        try {
          const before = blob.stats();
          const cpuBefore = processCpuSeconds();
          times.get(mode)!.push(await fullRead(mnt));
          const cpu = processCpuSeconds() - cpuBefore;
          await new Promise((resolve) => setTimeout(resolve, 100)); // served reads are reported
          const after = blob.stats();
          line.push(
            `${mode} ${times.get(mode)![round].toFixed(2)} s (server CPU ${cpu.toFixed(2)} s, ` +
              `${after.reads - before.reads} READs, ${after.directReads - before.directReads} ` +
              `by the reader thread, ${((after.bytes - before.bytes) / 2 ** 20).toFixed(0)} MiB)`,
          );
        } finally {
          await unmountErofs(mnt);
        }
      }
      console.log(line.join(", "));
    }
  } finally {
    for (const blob of blobs.values()) await blob.close();
  }
  const best = (mode: string) => Math.min(...times.get(mode)!);
  console.log(
    `best: local ${best("local").toFixed(2)} s` +
      modes.map((m) => `, ${m} ${best(m).toFixed(2)} s (${(best(m) / best("local")).toFixed(2)}×)`)
        .join(""),
  );
} finally {
  await served.close();
  await Deno.remove(work, { recursive: true });
}

/** User + system CPU seconds of this process so far (/proc/self/stat, clock ticks of 10 ms). */
function processCpuSeconds(): number {
  const stat = Deno.readTextFileSync("/proc/self/stat");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}
