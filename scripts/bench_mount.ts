/**
 * Mount start-up benchmark (real CPU, FUSE backend): the host benchmark's image from a loopback
 * docker-registry, mounted and unmounted ROUNDS times (default 5), each round a mount on an
 * empty disk cache and state dir ("cold") and a remount on what it left in both (filled chunks,
 * kept chunk table and config), each after dropping the page cache — the host benchmark's mount step alone, repeated, so a start-up change shows
 * through the noise of single runs. Prints each mount's seconds and its timeline
 * (EROFS_OCI_TIMING marks) and the CPU the machine spent meanwhile (the CLI, its server and the
 * registry: what a CPU-bound guest, the TCG VM, pays for), then min and median per kind.
 * BENCH_CLI=dist times dist/erofs-oci (build it first: scripts/build.sh); BENCH_AB=FILE also
 * times the artifact FILE (another build), each round alternating the two.
 * Usage: deno run -A scripts/bench_mount.ts IMAGE [ROUNDS]   (root; the image from
 * scripts/bench/build-image.sh)
 */
import { startRegistry } from "../tests/_support/registry.ts";
import { mountSandbox } from "../tests/_support/mounts.ts";
import { artifactOrSource, benchCliKind, cpuMs, dropCaches, timeline } from "./bench/host_steps.ts";

const [image, roundsText = "5"] = Deno.args;
const rounds = Number(roundsText);
if (!image || !Number.isInteger(rounds) || rounds < 1) {
  throw new Error("usage: bench_mount.ts IMAGE [ROUNDS]");
}
const variants = [{ name: "", cli: await artifactOrSource(benchCliKind()) }];
const other = Deno.env.get("BENCH_AB");
if (other) {
  variants[0].name = "A ";
  variants.push({ name: "B ", cli: await artifactOrSource("dist", other) });
}
await using registry = await startRegistry({ auth: "none" });
const ref = `${registry.host}/bench/mount:v1`;
const pushed = await variants[0].cli.run(["push", ref, image], { timeoutMs: 600_000 });
if (pushed.code !== 0) throw new Error(pushed.stderr);

type Cli = (typeof variants)[number]["cli"];

/** One mount after a page-cache drop: its seconds and marks; unmounted before returning. */
async function timedMount(
  cli: Cli,
  hostDir: string,
): Promise<{ seconds: number; busyMs: number; marks: string[] }> {
  const sandbox = await mountSandbox();
  const timingFile = await Deno.makeTempFile({ prefix: "bench-mount-timing-" });
  // The disk cache and the state dir (kept tables, configs) a remount finds on a real host.
  const env = {
    ...sandbox.env,
    EROFS_OCI_CACHE_DIR: `${hostDir}/cache`,
    EROFS_OCI_STATE_DIR: `${hostDir}/state`,
  };
  try {
    dropCaches();
    const busyBefore = cpuMs(Deno.pid).busyMs;
    const start = performance.now();
    const mounted = await cli.run(
      ["mount", ref, sandbox.target, "--plain-http", "--backend", "fuse"],
      { env: { ...env, EROFS_OCI_TIMING: timingFile }, timeoutMs: 120_000 },
    );
    const seconds = (performance.now() - start) / 1000;
    const busyMs = cpuMs(Deno.pid).busyMs - busyBefore;
    if (mounted.code !== 0) throw new Error(mounted.stderr);
    return { seconds, busyMs, marks: timeline(timingFile, performance.timeOrigin + start) };
  } finally {
    await sandbox.cleanup();
    await Deno.remove(timingFile).catch(() => {});
  }
}

const times = new Map<string, number[]>();
const busy = new Map<string, number[]>();
try {
  for (let round = 1; round <= rounds; round++) {
    // Alternating which goes first: the first of a round meets a registry idle for longer.
    const order = round % 2 ? variants : [...variants].reverse();
    for (const { name, cli } of order) {
      const hostDir = await Deno.makeTempDir({ prefix: "bench-mount-host-" });
      try {
        for (const kind of ["cold", "remount"]) {
          const { seconds, busyMs, marks } = await timedMount(cli, hostDir);
          const key = `${name}${kind}`;
          times.set(key, [...times.get(key) ?? [], seconds]);
          busy.set(key, [...busy.get(key) ?? [], busyMs]);
          console.log(
            `${round} ${key} ${seconds.toFixed(3)} s, machine CPU ${busyMs} ms: ${
              marks.join(", ")
            }`,
          );
        }
      } finally {
        await Deno.remove(hostDir, { recursive: true });
      }
    }
  }
} finally {
  for (const { cli } of variants) await cli.cleanup();
}
const median = (values: number[]) => [...values].sort((a, b) => a - b)[values.length >> 1];
for (const [kind, values] of [...times].sort()) {
  console.log(
    `${kind}: min ${Math.min(...values).toFixed(3)} s, median ${median(values).toFixed(3)} s, ` +
      `machine CPU median ${median(busy.get(kind)!)} ms (${values.length} mounts)`,
  );
}
