/**
 * A/B harness for the host benchmark's cold python step (issue 12), same method as
 * scripts/bench_host.ts up to python: a cold mount (empty disk cache), its GET count and `list`,
 * drop caches, cold `find`, drop caches, cold python start — per round, the variants interleaved
 * (and a local file-backed mount's find and python first). Each variant is a name and environment
 * variables for the mount command (its server inherits them), e.g. `base` and `idle:X=1`.
 * Each mount records a fill trace (EROFS_OCI_FILL_TRACE, lib/source/fill_trace.ts); per run the
 * harness prints find and python seconds, the layer GETs of each step, and from the trace: when
 * the background windows started and the layer bytes fetched by python's start and end (ms and MB
 * relative to python's start), python's demand misses (count, summed wait) and the misses'
 * offsets with what they waited for. A summary per variant (best and median) ends the output.
 * BENCH_CLI=dist times dist/erofs-oci (build it first) instead of the source tree; a variant's
 * PYTHON_AB_CLI=PATH another built artifact (e.g. a copy built before a change). Also: the
 * server's and the machine's CPU during the find, and during python also the registry's (the
 * bytes fetched under python cost CPU on the same cores); PYTHON_AB_VERBOSE=1 each miss and
 * the server's trace events during the find; PYTHON_AB_KEEP_TRACE=1 keeps the trace files; a
 * variant's PYTHON_AB_WAIT_MS=N pauses before the find (diagnostics, not the bench's method);
 * a variant's PYTHON_AB_PUSH=1 pushes the image again with its own CLI and environment to a
 * repository of its own and mounts that (a change to what push makes, e.g. the chunk tables).
 * Example: `BENCH_CLI=dist scripts/bench/python_ab.ts .cache/bench/bench.erofs 3
 * before:PYTHON_AB_CLI=/tmp/erofs-oci-before after` (under flock .cache/bench.lock).
 * Usage: deno run -A scripts/bench/python_ab.ts IMAGE RUNS VARIANT[:ENV=V[,ENV=V…]]…  (root)
 */
import { startRegistry } from "../../tests/_support/registry.ts";
import { type CliResult, runCli } from "../../tests/_support/cli.ts";
import { mountSandbox } from "../../tests/_support/mounts.ts";
import {
  blobGetLines,
  cpuMs,
  dropCaches,
  fileDigest,
  pythonArgs,
  runArtifact,
  timedCommand,
  withLocalMount,
} from "./host_steps.ts";

const [image, runsArg, ...variantArgs] = Deno.args;
if (!image || !runsArg || !variantArgs.length) {
  throw new Error("usage: python_ab.ts IMAGE RUNS VARIANT[:ENV=V[,ENV=V…]]…");
}
const variants = variantArgs.map((arg) => {
  const [name, envText = ""] = arg.split(/:(.*)/s);
  const env: Record<string, string> = {};
  for (const pair of envText.split(",").filter(Boolean)) {
    const [key, value = ""] = pair.split(/=(.*)/s);
    env[key] = value;
  }
  return { name, env };
});
const rounds = Number(runsArg);
/** PYTHON_AB_VERBOSE=1: each miss of python, and the server's events during the find. */
const verbose = Deno.env.get("PYTHON_AB_VERBOSE") === "1";

const benchCli = Deno.env.get("BENCH_CLI") === "dist" ? "dist" : "source";
const runtimeParent = await Deno.makeTempDir({ prefix: "python-ab-runtime-" });

/**
 * A variant's PYTHON_AB_CLI names another built artifact for its commands (e.g. a copy of
 * dist/erofs-oci built from the code before a change), with a runtime cache of its own.
 */
async function cli(args: string[], env: Record<string, string>): Promise<CliResult> {
  const binary = env.PYTHON_AB_CLI;
  if (benchCli === "source" && !binary) return await runCli(args, { env, timeoutMs: 120_000 });
  const runtime = binary ? `runtime-${binary.replaceAll("/", "_")}` : "runtime";
  return await runArtifact(binary ?? `${import.meta.dirname}/../../dist/erofs-oci`, args, {
    runtimeCache: `${runtimeParent}/${runtime}`,
    env,
  });
}

function localRun() {
  dropCaches();
  return withLocalMount(image, "python-ab-local-", async (dir) => {
    dropCaches();
    const find = await timedCommand("find", [dir]);
    dropCaches();
    const python = await timedCommand("python3.11", pythonArgs(dir));
    return { find: find.seconds, python: python.seconds };
  });
}

await using registry = await startRegistry({ auth: "none" });
const layerDigest = await fileDigest(image);
/** The registry's process (its command line names its config in registry.dir), for its CPU. */
const registryPid = (() => {
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const cmdline = Deno.readTextFileSync(`/proc/${entry.name}/cmdline`);
      if (cmdline.startsWith("docker-registry") && cmdline.includes(registry.dir)) {
        return Number(entry.name);
      }
    } catch { /* gone */ }
  }
  return NaN;
})();
const blobGets = async () => (await blobGetLines(registry, layerDigest)).length;
const ref = `${registry.host}/bench/python-ab:v1`;
const pushed = await cli(["push", ref, image], {});
if (pushed.code !== 0) throw new Error(pushed.stderr);
/**
 * A variant with PYTHON_AB_PUSH=1 mounts its own repository, pushed by its own CLI with its
 * environment (a change to the tables push makes), before the rounds.
 */
const refs = new Map<string, string>();
for (const variant of variants) {
  if (variant.env.PYTHON_AB_PUSH !== "1") continue;
  const own = `${registry.host}/bench/python-ab-${variant.name.toLowerCase()}:v1`;
  const ownPush = await cli(["push", own, image], variant.env);
  if (ownPush.code !== 0) throw new Error(ownPush.stderr);
  refs.set(variant.name, own);
}

/** metadata_prefetch.ts's background window size (DEFAULT_PREFETCH_WINDOW_BYTES). */
const WINDOW_BYTES = 4 << 20;

interface TraceEvent {
  ms: number; // epoch
  kind: string;
  fields: string[];
}

/** The server's events (the process with the most lines), on the epoch clock. */
function serverEvents(path: string): TraceEvent[] {
  const all = Deno.readTextFileSync(path).split("\n").map((line) => line.split(" "))
    .filter((f) => f[0] === "fill" && f.length >= 4);
  const perPid = new Map<string, number>();
  for (const f of all) perPid.set(f[1], (perPid.get(f[1]) ?? 0) + 1);
  const pid = [...perPid].sort((a, b) => b[1] - a[1])[0]?.[0];
  const mine = all.filter((f) => f[1] === pid);
  const origin = Number(mine.find((f) => f[3] === "origin")?.[4] ?? 0);
  return mine.filter((f) => f[3] !== "origin")
    .map((f) => ({ ms: origin + Number(f[2]), kind: f[3], fields: f.slice(4) }))
    .sort((a, b) => a.ms - b.ms);
}

interface RunResult {
  variant: string;
  find: number;
  /** During the find: the server's CPU, the machine's busy CPU and iowait (ms, 10 ms ticks). */
  findCpu: { serverMs: number; busyMs: number; iowaitMs: number };
  python: number;
  /** During python: the server's and the registry's CPU, the machine's busy CPU and iowait (ms). */
  pythonCpu: { serverMs: number; registryMs: number; busyMs: number; iowaitMs: number };
  gets: { mount: number; find: number; python: number };
  windowsStartMs?: number;
  fetchedMbAtPython: number;
  fetchedMbAfterPython: number;
  misses: number;
  missWaitMs: number;
  missLines: string[];
}

async function lazyRun(variant: { name: string; env: Record<string, string> }) {
  const sandbox = await mountSandbox();
  const cacheDir = await Deno.makeTempDir({ prefix: "python-ab-cache-" });
  const tracePath = await Deno.makeTempFile({ prefix: "python-ab-trace-" });
  const env = { ...sandbox.env, EROFS_OCI_CACHE_DIR: cacheDir };
  try {
    dropCaches();
    let last = await blobGets();
    const step = async () => {
      const now = await blobGets();
      const n = now - last;
      last = now;
      return n;
    };
    const mounted = await cli(
      ["mount", refs.get(variant.name) ?? ref, sandbox.target, "--plain-http", "--backend", "fuse"],
      { ...env, ...variant.env, EROFS_OCI_FILL_TRACE: tracePath },
    );
    if (mounted.code !== 0) throw new Error(mounted.stderr);
    const mountGets = await step();
    // The official bench asks `list --json` here (its server pid): the same gap before find.
    const listed = await cli(["list", "--json"], { ...env, ...variant.env });
    const serverPid = Number(JSON.parse(listed.stdout)[0]?.serverPid);
    // PYTHON_AB_WAIT_MS (diagnostics, not the bench's method): a pause before the find.
    const waitMs = Number(variant.env.PYTHON_AB_WAIT_MS ?? 0);
    if (waitMs > 0) await new Promise((resolve) => setTimeout(resolve, waitMs));
    dropCaches();
    const cpuBefore = cpuMs(serverPid);
    const find = await timedCommand("find", [sandbox.target]);
    const cpuAfter = cpuMs(serverPid);
    const findGets = await step();
    dropCaches();
    const cpuBeforePython = cpuMs(serverPid);
    const registryBefore = cpuMs(registryPid).processMs;
    const python = await timedCommand("python3.11", pythonArgs(sandbox.target));
    const cpuAfterPython = cpuMs(serverPid);
    const registryAfter = cpuMs(registryPid).processMs;
    const pythonGets = await step();
    await new Promise((resolve) => setTimeout(resolve, 300)); // the trace's flush
    const events = serverEvents(tracePath);
    const fetchedBy = (ms: number) =>
      events.filter((e) => e.kind === "fetch" && e.ms <= ms)
        .reduce((sum, e) => sum + Number(e.fields[2]), 0) / 1e6;
    const windowsStart = events.find((e) => e.kind === "windows-start");
    if (verbose) {
      // What the server did during the find (events, relative to the find's start).
      for (const e of events.filter((e) => e.ms >= find.startMs - 20 && e.ms <= find.endMs)) {
        console.log(
          `      find +${(e.ms - find.startMs).toFixed(1)} ms: ${e.kind} ${e.fields.join(" ")}`,
        );
      }
    }
    const inPython = events.filter((e) => e.ms >= python.startMs && e.ms <= python.endMs);
    const open = new Map<string, number>();
    const missLines: string[] = [];
    let missWaitMs = 0;
    for (const e of inPython) {
      const key = `${e.fields[0]} ${e.fields[1]}`;
      if (e.kind === "miss") open.set(key, e.ms);
      if (e.kind !== "miss-ready" || !open.has(key)) continue;
      const waited = e.ms - open.get(key)!;
      open.delete(key);
      missWaitMs += waited;
      // Whether a background window of the missed offset began before the miss, and when.
      const window = Math.floor(Number(e.fields[0]) / WINDOW_BYTES);
      const began = events.find((w) =>
        w.kind === "window" && Math.floor(Number(w.fields[0]) / WINDOW_BYTES) === window &&
        w.ms <= e.ms
      );
      missLines.push(
        `+${(e.ms - waited - python.startMs).toFixed(0)} ms: ${e.fields[1]} B at ${
          (Number(e.fields[0]) / (1 << 20)).toFixed(2)
        } MiB waited ${waited.toFixed(1)} ms (${e.fields[2]}), window ${window} ${
          began ? `began at +${(began.ms - python.startMs).toFixed(0)} ms` : "not begun"
        }`,
      );
    }
    const result: RunResult = {
      variant: variant.name,
      find: find.seconds,
      findCpu: {
        serverMs: cpuAfter.processMs - cpuBefore.processMs,
        busyMs: cpuAfter.busyMs - cpuBefore.busyMs,
        iowaitMs: cpuAfter.iowaitMs - cpuBefore.iowaitMs,
      },
      python: python.seconds,
      pythonCpu: {
        serverMs: cpuAfterPython.processMs - cpuBeforePython.processMs,
        registryMs: registryAfter - registryBefore,
        busyMs: cpuAfterPython.busyMs - cpuBeforePython.busyMs,
        iowaitMs: cpuAfterPython.iowaitMs - cpuBeforePython.iowaitMs,
      },
      gets: { mount: mountGets, find: findGets, python: pythonGets },
      windowsStartMs: windowsStart ? windowsStart.ms - python.startMs : undefined,
      fetchedMbAtPython: fetchedBy(python.startMs),
      fetchedMbAfterPython: fetchedBy(python.endMs),
      misses: missLines.length,
      missWaitMs,
      missLines,
    };
    return result;
  } finally {
    await sandbox.cleanup();
    await Deno.remove(cacheDir, { recursive: true });
    if (Deno.env.get("PYTHON_AB_KEEP_TRACE")) console.log(`trace kept: ${tracePath}`);
    else await Deno.remove(tracePath);
  }
}

const results: RunResult[] = [];
const locals: { find: number; python: number }[] = [];
try {
  for (let round = 0; round < rounds; round++) {
    const local = await localRun();
    locals.push(local);
    console.log(
      `round ${round + 1} local: find ${local.find.toFixed(3)} s, python ${
        local.python.toFixed(3)
      } s (load ${Deno.loadavg()[0].toFixed(2)})`,
    );
    // Each round in a different order, so no variant always follows the local run.
    const order = variants.map((_, i) => variants[(i + round) % variants.length]);
    for (const variant of order) {
      const r = await lazyRun(variant);
      results.push(r);
      console.log(
        `  ${r.variant}: find ${r.find.toFixed(3)} s (server CPU ${r.findCpu.serverMs} ms, ` +
          `machine busy ${r.findCpu.busyMs} ms, iowait ${r.findCpu.iowaitMs} ms), python ${
            r.python.toFixed(3)
          } s (server CPU ${r.pythonCpu.serverMs} ms, registry ${r.pythonCpu.registryMs} ms, machine busy ${r.pythonCpu.busyMs} ms, ` +
          `iowait ${r.pythonCpu.iowaitMs} ms), GETs ${r.gets.mount}/${r.gets.find}/${r.gets.python}, windows start ${
            r.windowsStartMs === undefined ? "never" : `${r.windowsStartMs.toFixed(0)} ms`
          } (python = 0), fetched ${r.fetchedMbAtPython.toFixed(1)} -> ${
            r.fetchedMbAfterPython.toFixed(1)
          } MB, misses ${r.misses} waited ${r.missWaitMs.toFixed(0)} ms`,
      );
      if (verbose) { for (const line of r.missLines) console.log(`      ${line}`); }
    }
  }
} finally {
  await new Deno.Command("chmod", { args: ["-R", "u+w", runtimeParent] }).output();
  await Deno.remove(runtimeParent, { recursive: true });
}

const median = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)];
};
const best = (values: number[]) => Math.min(...values);
const localPython = best(locals.map((l) => l.python));
const localFind = best(locals.map((l) => l.find));
console.log(
  `\nlocal: find best ${localFind.toFixed(3)} s, python best ${localPython.toFixed(3)} s ` +
    `median ${median(locals.map((l) => l.python)).toFixed(3)} s`,
);
for (const variant of variants) {
  const mine = results.filter((r) => r.variant === variant.name);
  const py = mine.map((r) => r.python);
  const fd = mine.map((r) => r.find);
  console.log(
    `${variant.name}: python best ${best(py).toFixed(3)} s (${
      (best(py) / localPython).toFixed(2)
    }x) median ${median(py).toFixed(3)} s; find best ${best(fd).toFixed(3)} s (${
      (best(fd) / localFind).toFixed(2)
    }x) median ${median(fd).toFixed(3)} s; python GETs median ${
      median(mine.map((r) => r.gets.python))
    }, misses median ${median(mine.map((r) => r.misses))}, wait median ${
      median(mine.map((r) => r.missWaitMs)).toFixed(0)
    } ms`,
  );
}
