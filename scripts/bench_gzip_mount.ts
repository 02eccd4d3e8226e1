/**
 * A tar.gz layer mounted from a registry through its pushed index (FUSE backend, registry on
 * loopback, no disk cache): what a lazy mount fetches and how long it takes for the first
 * file, 10 % of the files in tar order (a contiguous run, as a directory subtree), every 10th
 * file in path order, and a cold full read — against `curl | gunzip | tar x` of the same blob.
 * Fetched bytes are counted from the Range headers passing a counting proxy. Root only;
 * prints figures, asserts nothing.
 *
 * Usage: tools/bin/deno run -A scripts/bench_gzip_mount.ts LAYER.tar.gz [--span BYTES]
 *        [--runs N] [--delay-ms MS] [--compare-erofs] [--disk-cache]
 *        [--steps first,tenth,every10th,full,device,index-missing,curl]
 * (MS: added to every blob GET, a crude RTT; --compare-erofs: the same tree built into an EROFS
 * layer with `erofs-oci build`, mounted and read the same way, to separate the tar-index
 * cost from the FUSE path's; index-missing: the layer pushed without an index, mounted with
 * `--index-missing` and the disk cache, then read whole: what nobody's index costs)
 * The figures also go to .cache/bench/gzip-mount-latest.json (one entry per step of each run,
 * with the machine, load and commit) for scripts/bench/readme_table.ts.
 */
import { parseArgs } from "node:util";
import { startRegistry } from "../tests/_support/registry.ts";
import { pushImage } from "../tests/_support/oci_raw.ts";
import { isBlobGet, startFaultProxy } from "../tests/_support/fault_proxy.ts";
import { runCli } from "../tests/_support/cli.ts";
import { mountSandbox, serverPids } from "../tests/_support/mounts.ts";
import { loadNow, runInfo } from "./bench/run_info.ts";
import { digestOfAsync } from "../lib/oci/digest.ts";
import type { GzipStep } from "./bench/readme_sources.ts";

const loadBefore = loadNow();
/** One per measured step of each run: what gzip-mount-latest.json holds. */
const records: GzipStep[] = [];
let currentRun = 0;

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    span: { type: "string" },
    runs: { type: "string", default: "1" },
    "delay-ms": { type: "string", default: "0" },
    /** Also the same tree as an EROFS layer (erofs-oci build), mounted the same way. */
    "compare-erofs": { type: "boolean" },
    /** Mount with the disk cache (default: --no-disk-cache, so every read is a GET). */
    "disk-cache": { type: "boolean" },
    /** Steps to run (default all): first,tenth,every10th,full,device,index-missing,curl */
    steps: { type: "string", default: "first,tenth,every10th,full,device,index-missing,curl" },
  },
});
const layerPath = positionals[0];
if (!layerPath) throw new Error("usage: bench_gzip_mount.ts LAYER.tar.gz");
const layer = await Deno.readFile(layerPath);
const delayMs = Number(values["delay-ms"]);
const LONG = { timeoutMs: 600_000 };

function dropCaches(): void {
  Deno.writeTextFileSync("/proc/sys/vm/drop_caches", "3");
}

/** Paths of regular files in tar order (`tar tf` order = the layer's byte order). */
async function tarOrder(): Promise<string[]> {
  const out = await new Deno.Command("sh", {
    // Regular files; the name is what follows the first five fields (it may hold spaces).
    args: ["-c", `gzip -dc '${layerPath}' | tar tvf - | sed -nE 's/^-[^ ]* +([^ ]+ +){4}//p'`],
    stdout: "piped",
  }).output();
  return new TextDecoder().decode(out.stdout).split("\n").filter(Boolean);
}

async function timed<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const start = performance.now();
  const value = await fn();
  return [(performance.now() - start) / 1000, value];
}

async function readAll(root: string, files: string[]): Promise<void> {
  // In a child so the read is the kernel's, not this process's event loop's.
  const list = await Deno.makeTempFile();
  await Deno.writeTextFile(list, files.join("\n") + "\n");
  const out = await new Deno.Command("sh", {
    args: ["-c", `cd '${root}' && xargs -d '\\n' cat < '${list}' > /dev/null`],
  }).output();
  await Deno.remove(list);
  if (!out.success) throw new Error("reading files failed");
}

await using registry = await startRegistry({ auth: "none" });
await pushImage(registry, "bench/gz", "v1", [
  { bytes: layer, mediaType: "application/vnd.oci.image.layer.v1.tar+gzip" },
]);
const direct = `${registry.host}/bench/gz:v1`;
const [indexSec, indexed] = await timed(() =>
  runCli(["index", direct, "--push", ...(values.span ? ["--span", values.span] : [])], LONG)
);
if (indexed.code !== 0) throw new Error(indexed.stderr);
// The same layer with no index anywhere, for `mount --index-missing`.
await pushImage(registry, "bench/plain", "v1", [
  { bytes: layer, mediaType: "application/vnd.oci.image.layer.v1.tar+gzip" },
]);
await using proxy = await startFaultProxy(registry.host, [
  { match: (r) => delayMs > 0 && isBlobGet(r), fault: { kind: "delay", ms: delayMs } },
]);
const ref = `${proxy.host}/bench/gz:v1`;
const files = await tarOrder();
const layerBytes = layer.length;
console.log(
  `layer ${(layerBytes / 1e6).toFixed(1)} MB compressed, ${files.length} files; ` +
    `index --push ${indexSec.toFixed(2)} s; blob GET delay ${delayMs} ms`,
);

const layerDigest = await digestOfAsync(layer);

/** Bytes of the layer blob fetched since request number `from` (from the Range headers). */
function fetchedSince(from: number): { bytes: number; gets: number } {
  let bytes = 0, gets = 0;
  for (const r of proxy.requests.slice(from)) {
    if (!isBlobGet({ method: r.method, path: r.path, headers: new Headers() })) continue;
    if (!r.path.endsWith(layerDigest)) continue; // the config blob, say
    const m = /^bytes=(\d+)-(\d+)/.exec(r.range ?? "");
    bytes += m ? Number(m[2]) - Number(m[1]) + 1 : layerBytes;
    gets++;
  }
  return { bytes, gets };
}

async function withMount(
  fn: (root: string, runtimeDir: string) => Promise<void>,
  image = ref,
  options: { indexMissing?: boolean } = {},
): Promise<void> {
  const sandbox = await mountSandbox();
  const state = await Deno.makeTempDir({ prefix: "bench-gzip-state-" });
  const env = { ...sandbox.env, EROFS_OCI_STATE_DIR: state };
  try {
    const mark = proxy.requests.length;
    const [sec, mounted] = await timed(() =>
      runCli([
        "mount",
        "--backend",
        "fuse",
        // Indexing here reads the layer through the disk cache (the reads after fetch nothing).
        ...(values["disk-cache"] || options.indexMissing ? [] : ["--no-disk-cache"]),
        ...(options.indexMissing ? ["--index-missing"] : []),
        image,
        sandbox.target,
      ], {
        env,
        ...LONG,
      })
    );
    if (mounted.code !== 0) throw new Error(mounted.stderr + sandbox.serverLogs());
    console.log(`  mount ${sec.toFixed(2)} s`);
    if (options.indexMissing) line("mount --index-missing", sec, fetchedSince(mark), "index-here");
    dropCaches();
    const cpuBefore = serverCpuSec(sandbox.runtimeDir);
    const firstRecord = records.length;
    await fn(sandbox.target, sandbox.runtimeDir);
    const peakMb = serverPeakMb(sandbox.runtimeDir);
    const serverCpu = serverCpuSec(sandbox.runtimeDir) - cpuBefore;
    console.log(
      `  ${"".padEnd(40)} server CPU ${serverCpu.toFixed(2)} s, peak RSS ${peakMb} MB`,
    );
    for (const r of records.slice(firstRecord)) {
      r.mountSeconds = sec;
      r.serverCpuSeconds = serverCpu;
      r.serverPeakRssMb = peakMb;
    }
    await runCli(["umount", sandbox.target], { env });
  } finally {
    await sandbox.cleanup();
    await Deno.remove(state, { recursive: true }).catch(() => {});
  }
}

/** CPU seconds (user + system) the mount's server processes have used so far. */
function serverCpuSec(runtimeDir: string): number {
  let ticks = 0;
  for (const pid of serverPids(runtimeDir)) {
    try {
      const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      ticks += Number(fields[11]) + Number(fields[12]); // utime, stime (fields 14, 15)
    } catch { /* gone */ }
  }
  return ticks / 100; // USER_HZ
}

/** Peak resident memory (VmHWM) of the mount's server processes, in MB. */
function serverPeakMb(runtimeDir: string): number {
  let kb = 0;
  for (const pid of serverPids(runtimeDir)) {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync(`/proc/${pid}/status`));
      kb += m ? Number(m[1]) : 0;
    } catch { /* gone */ }
  }
  return Math.round(kb / 1024);
}

function line(
  label: string,
  sec: number,
  fetched: { bytes: number; gets: number },
  step: string,
  cpuSeconds?: number,
): void {
  records.push({
    run: currentRun,
    step,
    seconds: sec,
    gets: fetched.gets,
    fetchedBytes: fetched.bytes,
    cpuSeconds,
  });
  console.log(
    `  ${label.padEnd(40)} ${sec.toFixed(2).padStart(6)} s  ` +
      `${(fetched.bytes / 1e6).toFixed(1).padStart(6)} MB fetched (${
        (100 * fetched.bytes / layerBytes).toFixed(0)
      } %) in ${fetched.gets} GETs`,
  );
}

const steps = new Set(values.steps.split(","));
const tenth = Math.ceil(files.length / 10);
const sorted = [...files].sort();
for (let run = 0; run < Number(values.runs); run++) {
  currentRun = run + 1;
  console.log(`run ${run + 1}`);
  if (steps.has("first")) {
    await withMount(async (root) => {
      const mark = proxy.requests.length;
      const [sec] = await timed(() => readAll(root, [files[Math.floor(files.length / 2)]]));
      line("first file (middle of the tar)", sec, fetchedSince(mark), "first");
    });
  }
  if (steps.has("tenth")) {
    await withMount(async (root) => {
      const mark = proxy.requests.length;
      const start = Math.floor(files.length * 0.3);
      const chosen = files.slice(start, start + tenth);
      const [sec] = await timed(() => readAll(root, chosen));
      const bytes = chosen.reduce((n, f) => n + Deno.statSync(`${root}/${f}`).size, 0);
      line(
        `10 % of files, tar order (${(bytes / 1e6).toFixed(1)} MB)`,
        sec,
        fetchedSince(mark),
        "tenth",
      );
      if (Deno.env.get("BENCH_RANGES")) {
        console.log(proxy.requests.slice(mark).map((r) => r.range).join(" "));
      }
    });
  }
  if (steps.has("every10th")) {
    await withMount(async (root) => {
      const mark = proxy.requests.length;
      const [sec] = await timed(() => readAll(root, sorted.filter((_, i) => i % 10 === 0)));
      line("every 10th file, path order", sec, fetchedSince(mark), "every10th");
    });
  }
  if (steps.has("full")) {
    await withMount(async (root) => {
      const mark = proxy.requests.length;
      const [sec, cpu] = await timed(() => shell(`tar -C '${root}' -cf - . | wc -c > /dev/null`));
      line("cold full read (tar cf - . | wc)", sec, fetchedSince(mark), "full", cpu);
      console.log(`  ${"".padEnd(40)} reader CPU ${cpu.toFixed(2)} s (tar, wc)`);
      if (Deno.env.get("BENCH_RANGES")) {
        console.log(proxy.requests.slice(mark).map((r) => r.range).join(" "));
      }
    });
  }
  if (steps.has("device")) {
    await withMount(async (_root, runtimeDir) => {
      const mark = proxy.requests.length;
      const mounts = `${runtimeDir}/mounts`;
      const [id] = [...Deno.readDirSync(mounts)].map((e) => e.name);
      const [sec] = await timed(async () => {
        const out = await new Deno.Command("dd", {
          args: [`if=${mounts}/${id}/fuse-0/layer.erofs`, "of=/dev/null", "bs=1M"],
          stderr: "null",
        }).output();
        if (!out.success) throw new Error("dd of the device failed");
      });
      line("cold device read ([meta][tar], dd bs=1M)", sec, fetchedSince(mark), "device");
    });
  }
  if (steps.has("index-missing")) {
    await withMount(
      async (root) => {
        const mark = proxy.requests.length;
        const [sec, cpu] = await timed(() => shell(`tar -C '${root}' -cf - . | wc -c > /dev/null`));
        line(
          "  then cold full read (tar cf - . | wc)",
          sec,
          fetchedSince(mark),
          "index-here-full",
          cpu,
        );
      },
      `${proxy.host}/bench/plain:v1`,
      { indexMissing: true },
    );
  }
  if (values["compare-erofs"]) await compareErofs();
  if (steps.has("curl")) await curlGunzipTar();
}
{
  const dir = `${import.meta.dirname}/../.cache/bench`;
  Deno.mkdirSync(dir, { recursive: true });
  const record = {
    ...runInfo(loadBefore),
    layerBytes,
    diskCache: Boolean(values["disk-cache"]),
    delayMs,
    steps: records,
  };
  Deno.writeTextFileSync(`${dir}/gzip-mount-latest.json`, JSON.stringify(record, null, 2) + "\n");
}

async function curlGunzipTar(): Promise<void> {
  const extract = await Deno.makeTempDir({ prefix: "bench-gzip-x-" });
  try {
    const mark = proxy.requests.length;
    const url = `http://${proxy.host}/v2/bench/gz/blobs/${layerDigest}`;
    const [sec, cpu] = await timed(() =>
      shell(`curl -sf '${url}' | gunzip | tar -C '${extract}' -xf -`)
    );
    line("curl | gunzip | tar x", sec, fetchedSince(mark), "curl", cpu);
    console.log(`  ${"".padEnd(40)} CPU ${cpu.toFixed(2)} s (curl, gunzip, tar)`);
  } finally {
    await Deno.remove(extract, { recursive: true });
  }
}

/** Runs `script` with sh; returns the CPU seconds (user + system) of its children. */
async function shell(script: string): Promise<number> {
  const out = await new Deno.Command("sh", {
    args: ["-c", `${script}\nstatus=$?; times; exit $status`],
    stdout: "piped",
  }).output();
  if (!out.success) throw new Error(`${script} failed`);
  // `times`: the shell's user and system time, then its children's ("0m1.234s 0m0.056s").
  const children = new TextDecoder().decode(out.stdout).trim().split("\n").at(-1) ?? "";
  return [...children.matchAll(/(\d+)m([\d.]+)s/g)]
    .reduce((sum, m) => sum + Number(m[1]) * 60 + Number(m[2]), 0);
}

async function compareErofs(): Promise<void> {
  const work = await Deno.makeTempDir({ prefix: "bench-gzip-erofs-" });
  try {
    const built = await runCli(["build", layerPath, "-o", `${work}/layer.erofs`], LONG);
    if (built.code !== 0) throw new Error(built.stderr);
    const pushed = await runCli(
      ["push", `${registry.host}/bench/erofs:v1`, `${work}/layer.erofs`],
      LONG,
    );
    if (pushed.code !== 0) throw new Error(pushed.stderr);
    const size = Deno.statSync(`${work}/layer.erofs`).size;
    await withMount(async (root) => {
      const [sec] = await timed(async () => {
        const out = await new Deno.Command("sh", {
          args: ["-c", `tar -C '${root}' -cf - . | wc -c > /dev/null`],
        }).output();
        if (!out.success) throw new Error("tar of the mount failed");
      });
      console.log(
        `  same tree as EROFS (${(size / 1e6).toFixed(1)} MB), cold full read ${sec.toFixed(2)} s`,
      );
    }, `${proxy.host}/bench/erofs:v1`);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
}
