/**
 * Recorded-prefetch benchmark (host, real CPU, FUSE backend): a cold python start (imports
 * from the mounted stdlib) right after a cold mount of the speed benchmark's image, without a
 * trace (--no-prefetch), with a trace recorded by `erofs-oci trace --push`, and from a local
 * file-backed mount of the same file. Each lazy run gets an empty disk cache and a dropped page
 * cache; the median of RUNS is printed as a Markdown table and written as JSON to OUT.
 * Usage: deno run -A scripts/bench_trace.ts IMAGE [OUT]   (root; see scripts/bench-trace.sh)
 */
import { startRegistry } from "../tests/_support/registry.ts";
import { runCli } from "../tests/_support/cli.ts";
import { mountSandbox } from "../tests/_support/mounts.ts";
import {
  dropCaches,
  pythonArgs as pythonArgsFor,
  timedCommand,
  withLocalMount,
} from "./bench/host_steps.ts";
import { loadNow, runInfo } from "./bench/run_info.ts";
import { startFaultProxy } from "../tests/_support/fault_proxy.ts";

const [image, out = ".cache/bench/trace-latest.json"] = Deno.args;
if (!image) throw new Error("usage: bench_trace.ts IMAGE [OUT]");
const RUNS = Number(Deno.env.get("BENCH_RUNS") ?? "3");
/** BENCH_DELAY_MS=N: every registry request waits N ms in a proxy (an added round trip). */
const DELAY_MS = Number(Deno.env.get("BENCH_DELAY_MS") ?? "0");
const PYTHON_IMPORTS = "import json, email, http.client";
/** The machine, load and commit go into the JSON (scripts/bench/readme_table.ts reads them). */
const loadBefore = loadNow();

const pythonArgs = (dir: string) => pythonArgsFor(dir, PYTHON_IMPORTS);

async function timedPython(dir: string): Promise<number> {
  return (await timedCommand("python3.11", pythonArgs(dir))).seconds;
}

const median = (xs: number[]) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function localRun(): Promise<number> {
  return withLocalMount(image, "bench-trace-local-", (dir) => {
    dropCaches();
    return timedPython(dir);
  });
}

await using registry = await startRegistry({ auth: "none" });
const pushed = await runCli(["push", `${registry.host}/bench/trace:v1`, image], {
  timeoutMs: 600_000,
});
if (pushed.code !== 0) throw new Error(pushed.stderr);
await using proxy = await startFaultProxy(
  registry.host,
  DELAY_MS ? [{ match: () => true, fault: { kind: "delay", ms: DELAY_MS } }] : [],
);
const ref = `${proxy.host}/bench/trace:v1`;

/** Mount on an empty disk cache, then at once the python start; seconds of each. */
async function lazyRun(extra: string[]): Promise<{ mount: number; python: number }> {
  const sandbox = await mountSandbox();
  try {
    dropCaches();
    const start = performance.now();
    const mounted = await runCli(
      ["mount", ref, sandbox.target, "--plain-http", "--backend", "fuse", ...extra],
      { env: sandbox.env, timeoutMs: 120_000 },
    );
    if (mounted.code !== 0) throw new Error(mounted.stderr);
    const mount = (performance.now() - start) / 1000;
    const python = await timedPython(sandbox.target);
    if (Deno.env.get("BENCH_SHOW_LOG")) console.log(sandbox.serverLogs());
    return { mount, python };
  } finally {
    await sandbox.cleanup();
  }
}

const local: number[] = [];
const untraced: { mount: number; python: number }[] = [];
const traced: { mount: number; python: number }[] = [];
{
  const sandbox = await mountSandbox();
  try {
    const recorded = await runCli(
      [
        "trace",
        ref,
        "--plain-http",
        "--backend",
        "fuse",
        "--push",
        "--",
        "python3.11",
        ...pythonArgs("{}"),
      ],
      { env: sandbox.env, timeoutMs: 300_000 },
    );
    if (recorded.code !== 0) throw new Error(recorded.stderr);
    console.log(recorded.stdout.trim().split("\n").at(-1));
  } finally {
    await sandbox.cleanup();
  }
}
// Interleaved, so a burst of load on the shared host hits all three kinds alike.
for (let i = 0; i < RUNS; i++) {
  local.push(await localRun());
  untraced.push(await lazyRun(["--no-prefetch"]));
  traced.push(await lazyRun([]));
}

const localS = median(local);
const row = (name: string, runs: { mount: number; python: number }[]) => {
  const python = median(runs.map((r) => r.python));
  const mount = median(runs.map((r) => r.mount));
  // Per iteration against the local run next to it: the host's load moves all three together.
  const ratio = median(runs.map((r, i) => r.python / local[i]));
  return `| ${name} | ${mount.toFixed(2)} s | ${python.toFixed(3)} s | ${ratio.toFixed(2)}× |`;
};
const cpu = /model name\s*:\s*(.*)/.exec(Deno.readTextFileSync("/proc/cpuinfo"))?.[1] ?? "?";
console.log(
  `Trace benchmark ${new Date().toISOString().slice(0, 10)}, ${cpu}, ${Deno.osRelease()}, ` +
    `median of ${RUNS}, python3.11 -c '${PYTHON_IMPORTS}' (FUSE backend, loopback registry, ` +
    `+${DELAY_MS} ms per request)\n`,
);
console.log("| run | cold mount | cold python right after | vs local (median of ratios) |");
console.log("|---|---|---|---|");
console.log(`| local file-backed mount | — | ${localS.toFixed(3)} s | 1 |`);
console.log(row("erofs-oci, no trace (--no-prefetch)", untraced));
console.log(row("erofs-oci, trace prefetch", traced));
Deno.mkdirSync(out.replace(/\/[^/]*$/, ""), { recursive: true });
Deno.writeTextFileSync(
  out,
  JSON.stringify(
    { ...runInfo(loadBefore), delayMs: DELAY_MS, local, untraced, traced },
    null,
    2,
  ) + "\n",
);
