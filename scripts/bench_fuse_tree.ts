/**
 * The FUSE per-request path on a real tree: every file of an EROFS image read (`tar | cat`)
 * through EROFS on the FUSE blob, against the same image mounted from the file. The blob's
 * source is the mount server's stack (pinned pages → chunk cache → disk cache) over the local
 * image, the disk cache filled first: no network, only the FUSE path. Page caches are dropped
 * before every read; local and FUSE rounds alternate, and so do the FUSE blob's two modes:
 * `direct` (FOPEN_DIRECT_IO, every EROFS read one FUSE READ) and `page` (the FUSE file's page
 * cache and readahead, FuseServerLimits.pageCache). Root only; prints figures (wall time and
 * the CPU time of the reader, tar, and of this process, the server), asserts nothing.
 *
 * Usage: tools/bin/deno run -A scripts/bench_fuse_tree.ts [IMAGE] [ROUNDS]
 * (IMAGE: default .cache/bench/bench.erofs from scripts/bench/build-image.sh)
 */
import { type FuseBlob, startFuseBlob } from "../lib/fuse/blob.ts";
import { mountErofsFile, unmountErofs } from "../lib/mount/erofs_file.ts";
import { writeSmallFile } from "../ffi/files.ts";
import { LocalFile } from "../lib/source/local_file.ts";
import { DiskCache } from "../lib/source/disk_cache.ts";
import { CachedSource } from "../lib/source/cached.ts";
import { PrefetchedSource } from "../lib/source/prefetched.ts";

const image = Deno.args[0] ?? ".cache/bench/bench.erofs";
const rounds = Number(Deno.args[1] ?? 3);
const work = await Deno.makeTempDir({ prefix: "erofs-oci-bench-tree-" });

/** Reader CPU seconds (tar and cat, user + system) of each fullRead, by mode. */
const readerCpu = new Map<string, number[]>();
/** This process's CPU seconds during each FUSE fullRead, by mode. */
const serverCpu = new Map<string, number[]>();
const median = (values: number[]) => [...values].sort((a, b) => a - b)[values.length >> 1];

async function fullRead(dir: string, mode: string): Promise<number> {
  new Deno.Command("sync").outputSync();
  writeSmallFile("/proc/sys/vm/drop_caches", "3");
  const start = performance.now();
  // bash's `time` on a subshell: user and system CPU of tar and cat (the page cache copies and
  // EROFS's reads run in tar's context).
  const out = await new Deno.Command("bash", {
    args: ["-c", `TIMEFORMAT='%U %S'; time (tar -C '${dir}' -cf - . | cat >/dev/null)`],
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error("tar failed");
  const seconds = (performance.now() - start) / 1000;
  const [user, system] = new TextDecoder().decode(out.stderr).trim().split(/\s+/).map(Number);
  readerCpu.set(mode, [...readerCpu.get(mode) ?? [], user + system]);
  return seconds;
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
        times.get("local")!.push(await fullRead(mnt, "local"));
      } finally {
        await unmountErofs(mnt);
      }
      const line = [
        `round ${round}: local ${times.get("local")![round].toFixed(2)} s ` +
        `(reader CPU ${readerCpu.get("local")![round].toFixed(2)} s)`,
      ];
      for (const [mode, blob] of blobs) {
        await mountErofsFile(blob.filePath, mnt);
        try {
          const before = blob.stats();
          const cpuBefore = processCpuSeconds();
          times.get(mode)!.push(await fullRead(mnt, mode));
          const cpu = processCpuSeconds() - cpuBefore;
          serverCpu.set(mode, [...serverCpu.get(mode) ?? [], cpu]);
          await new Promise((resolve) => setTimeout(resolve, 100)); // served reads are reported
          const after = blob.stats();
          line.push(
            `${mode} ${times.get(mode)![round].toFixed(2)} s (reader CPU ` +
              `${readerCpu.get(mode)![round].toFixed(2)} s, server CPU ${cpu.toFixed(2)} s, ` +
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
  console.log(
    `median CPU (reader + server): local ${median(readerCpu.get("local")!).toFixed(2)} s` +
      modes.map((m) =>
        `, ${m} ${median(readerCpu.get(m)!).toFixed(2)} + ${median(serverCpu.get(m)!).toFixed(2)} s`
      ).join(""),
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
