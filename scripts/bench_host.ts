/**
 * Host benchmark (real CPU): the speed benchmark's EROFS image pushed to a loopback
 * docker-registry and mounted lazily with the FUSE backend, against a local file-backed mount
 * of the same file. Steps, each after dropping the page cache: mount, cold `find`, cold python
 * start (imports from the mounted stdlib), cold full read (every file's bytes through tar).
 * GETs are the layer blob's (the config blob is one more per mount).
 * Runs: `local`, `cold` (empty disk cache and state dir), `remount` (the disk cache the cold run
 * filled, the chunk table and config it kept),
 * `memory-only` (--no-disk-cache). Prints, per run, seconds per step, registry blob GETs per
 * step, bytes fetched from the registry and the server's peak RSS (VmHWM), as a Markdown table,
 * and writes the same as JSON to OUT (default .cache/bench/host-latest.json).
 * Each mount also prints its start-up timeline (EROFS_OCI_TIMING marks of the CLI and its
 * server, ms since the mount command was spawned).
 * BENCH_CLI=dist times the built single-file artifact dist/erofs-oci (scripts/bench-host.sh
 * builds it first) instead of the source tree (scripts/erofs-oci-dev). BENCH_QUICK=1 leaves
 * out the --no-disk-cache run.
 * Usage: deno run -A scripts/bench_host.ts IMAGE [OUT]   (root; see scripts/bench-host.sh)
 */
import { startRegistry } from "../tests/_support/registry.ts";
import { mountSandbox } from "../tests/_support/mounts.ts";
import {
  artifactOrSource,
  benchCliKind,
  blobGetLines,
  dropCaches,
  fileDigest,
  pythonArgs,
  timedCommand,
  timeline,
  withLocalMount,
} from "./bench/host_steps.ts";
import { loadNow, runInfo } from "./bench/run_info.ts";
import type { HostRun, Step } from "./bench/readme_sources.ts";

const [image, out = ".cache/bench/host-latest.json"] = Deno.args;
if (!image) throw new Error("usage: bench_host.ts IMAGE [OUT]");
const imageBytes = Deno.statSync(image).size;
/** The machine, load and commit go into the JSON (scripts/bench/readme_table.ts reads them). */
const loadBefore = loadNow();

const benchCli = benchCliKind();
const cliRunner = await artifactOrSource(benchCli);
const cli = cliRunner.run;

/** BENCH_QUICK=1: no --no-disk-cache run (its full read is most of a run's minute). */
const quick = Deno.env.get("BENCH_QUICK") === "1";

/** What host-latest.json holds per run: the fields the README table reads, and more. */
interface Run extends HostRun {
  fetchedBytes?: number;
  /** The server's RSS after the full read, anonymous and file-backed (the binary). */
  serverRssAnonMb?: number;
  serverRssFileMb?: number;
  /** The server's peak RSS (VmHWM) at the end of each step: where the peak was reached. */
  serverPeakRssMbAfter?: Record<Step, number>;
  /** The mount's start-up marks, ms since the mount command was spawned. */
  mountTimeline?: string[];
}
const STEPS: Step[] = ["mount", "find", "python", "fullRead"];

async function timed(cmd: string, args: string[]): Promise<number> {
  return (await timedCommand(cmd, args)).seconds;
}

/** find, python, full read on a mounted tree; `between` runs after each step (GET counts). */
async function steps(dir: string, between: (step: Step) => Promise<void>) {
  const seconds = {} as Record<Step, number>;
  dropCaches();
  seconds.find = await timed("find", [dir]);
  await between("find");
  dropCaches();
  // The mounted stdlib first on sys.path; C extension modules stay the host's.
  seconds.python = await timed("python3.11", pythonArgs(dir));
  await between("python");
  dropCaches();
  // tar writing to /dev/null skips file contents (GNU tar): pipe the archive instead.
  seconds.fullRead = await timed("sh", ["-c", `tar -C '${dir}' -cf - . | cat >/dev/null`]);
  await between("fullRead");
  return seconds;
}

function localRun(): Promise<Run> {
  dropCaches();
  return withLocalMount(image, "bench-host-local-", async (dir, mountSeconds) => {
    const seconds = await steps(dir, () => Promise.resolve());
    return { name: "local file-backed mount", seconds: { ...seconds, mount: mountSeconds } };
  });
}

await using registry = await startRegistry({ auth: "none" });
// The layer is the image file itself: count GETs of its digest (not the config's).
const layerDigest = await fileDigest(image);
const blobGets = async () => (await blobGetLines(registry, layerDigest)).length;
/** Body bytes of the layer's GETs so far (the access log's size field). */
const blobBytes = async () =>
  (await blobGetLines(registry, layerDigest))
    .reduce((sum, line) => sum + (Number(/" \d{3} (\d+) /.exec(line)?.[1]) || 0), 0);
const ref = `${registry.host}/bench/host:v1`;
const pushed = await cli(["push", ref, image], { timeoutMs: 600_000 });
if (pushed.code !== 0) throw new Error(pushed.stderr);
const cacheDir = await Deno.makeTempDir({ prefix: "bench-host-disk-cache-" });
// The host's state dir (chunk tables and configs kept by a mount) as it is after the runs
// before: the remount finds what the first mount kept, as on a real host.
const stateDir = await Deno.makeTempDir({ prefix: "bench-host-state-" });

async function lazyRun(name: string, extra: string[]): Promise<Run> {
  const sandbox = await mountSandbox();
  const env = { ...sandbox.env, EROFS_OCI_CACHE_DIR: cacheDir, EROFS_OCI_STATE_DIR: stateDir };
  // The server inherits EROFS_OCI_TIMING and marks on after the mount returns (directories,
  // node:crypto): removed only once it is gone, or it writes the file anew.
  const timingFile = await Deno.makeTempFile({ prefix: "bench-host-timing-" });
  try {
    dropCaches();
    let last = await blobGets();
    const bytesBefore = await blobBytes();
    const gets = {} as Record<Step, number>;
    const peaks = {} as Record<Step, number>;
    let serverPid = 0;
    const count = async (step: Step) => {
      const now = await blobGets();
      gets[step] = now - last;
      last = now;
      if (!serverPid) {
        serverPid = JSON.parse((await cli(["list", "--json"], { env })).stdout)[0].serverPid;
      }
      const status = Deno.readTextFileSync(`/proc/${serverPid}/status`);
      peaks[step] = Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? NaN) / 1024;
    };
    const start = performance.now();
    const spawnedAtMs = performance.timeOrigin + start;
    const mounted = await cli(
      ["mount", ref, sandbox.target, "--plain-http", "--backend", "fuse", ...extra],
      { env: { ...env, EROFS_OCI_TIMING: timingFile }, timeoutMs: 120_000 },
    );
    const mountSeconds = (performance.now() - start) / 1000;
    if (mounted.code !== 0) throw new Error(mounted.stderr);
    const mountTimeline = timeline(timingFile, spawnedAtMs);
    await count("mount");
    const seconds = await steps(sandbox.target, count);
    const listed = JSON.parse((await cli(["list", "--json"], { env })).stdout)[0];
    const status = Deno.readTextFileSync(`/proc/${listed.serverPid}/status`);
    const kb = (field: string) =>
      Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? NaN);
    const hwmKb = kb("VmHWM");
    return {
      name,
      seconds: { ...seconds, mount: mountSeconds },
      gets,
      fetchedBytes: listed.bytesFetched,
      registryBytes: await blobBytes() - bytesBefore,
      serverPeakRssMb: hwmKb / 1024,
      serverRssAnonMb: kb("RssAnon") / 1024,
      serverRssFileMb: kb("RssFile") / 1024,
      serverPeakRssMbAfter: peaks,
      mountTimeline,
    };
  } finally {
    await sandbox.cleanup();
    await Deno.remove(timingFile).catch(() => {});
  }
}

const runs: Run[] = [];
try {
  runs.push(await localRun());
  runs.push(await lazyRun("erofs-oci, empty disk cache", []));
  runs.push(await lazyRun("erofs-oci remount (disk cache)", []));
  if (!quick) runs.push(await lazyRun("erofs-oci --no-disk-cache", ["--no-disk-cache"]));
} finally {
  await Deno.remove(cacheDir, { recursive: true });
  await Deno.remove(stateDir, { recursive: true });
  await cliRunner.cleanup();
}

const local = runs[0].seconds;
const cell = (run: Run, step: Step) => {
  const s = run.seconds[step];
  const ratio = run === runs[0] || step === "mount" ? "" : ` (${(s / local[step]).toFixed(1)}×)`;
  const gets = run.gets ? `, ${run.gets[step]} GETs` : "";
  return `${s.toFixed(2)} s${ratio}${gets}`;
};
const cpu = /model name\s*:\s*(.*)/.exec(Deno.readTextFileSync("/proc/cpuinfo"))?.[1] ?? "?";
console.log(
  `Host benchmark ${new Date().toISOString().slice(0, 10)}, ${cpu}, ` +
    `${Deno.osRelease()}, image ${(imageBytes / 1e6).toFixed(0)} MB (FUSE backend, ` +
    `CLI from ${benchCli === "dist" ? "dist/erofs-oci" : "source"}, load ${
      Deno.loadavg().map((l) => l.toFixed(2)).join(" ")
    })\n`,
);
console.log(
  "| run | mount | cold find | cold python | cold full read | fetched / image | server peak RSS |",
);
console.log("|---|---|---|---|---|---|---|");
for (const run of runs) {
  console.log(
    `| ${run.name} | ${STEPS.map((step) => cell(run, step)).join(" | ")} | ${
      run.registryBytes === undefined ? "—" : (run.registryBytes / imageBytes).toFixed(2)
    } | ${run.serverPeakRssMb === undefined ? "—" : `${run.serverPeakRssMb.toFixed(0)} MB`} |`,
  );
}
Deno.mkdirSync(out.replace(/\/[^/]*$/, ""), { recursive: true });
Deno.writeTextFileSync(
  out,
  JSON.stringify(
    { ...runInfo(loadBefore), cli: benchCli, imageBytes, runs },
    null,
    2,
  ) +
    "\n",
);
console.log("\nMount timelines (ms since the mount command was spawned):");
for (const run of runs) {
  if (run.mountTimeline) console.log(`- ${run.name}: ${run.mountTimeline.join(", ")}`);
}
