/**
 * What the host benchmarks (bench_host.ts, bench_trace.ts, bench/python_ab.ts) share: a cold
 * page cache before each step, timed commands, the local mount they compare with, the python
 * start they time, the built artifact's commands, and the layer's GETs in the access log.
 */
import { writeSmallFile } from "../../ffi/files.ts";
import { digestOfAsync } from "../../lib/oci/digest.ts";
import { type CliResult, runCli } from "../../tests/_support/cli.ts";
import type { TestRegistry } from "../../tests/_support/registry.ts";

/** The stdlib modules bench_host.ts and python_ab.ts import (bench_trace.ts uses fewer). */
export const PYTHON_IMPORTS =
  "import json, decimal, email.parser, argparse, asyncio, http.client, logging, csv, typing";

/** Written-back and dropped: the next step reads the disk, as after a boot. */
export function dropCaches(): void {
  new Deno.Command("sync").outputSync();
  writeSmallFile("/proc/sys/vm/drop_caches", "3");
}

/** The host's python3.11 with the mounted stdlib first on sys.path (C modules stay the host's). */
export function pythonArgs(dir: string, imports = PYTHON_IMPORTS): string[] {
  const lib = `${dir}/usr/lib/python3.11`;
  return [
    "-B",
    "-c",
    `import sys; sys.path.insert(0, ${JSON.stringify(lib)}); ${imports}; ` +
    `assert json.__file__.startswith(${JSON.stringify(lib)}), json.__file__`,
  ];
}

/** `sha256:<hex>` of a file: the layer digest of an image pushed as one layer. */
export async function fileDigest(path: string): Promise<string> {
  return digestOfAsync(await Deno.readFile(path));
}

/** A command's wall time, and when it started and ended on the epoch clock (ms). */
export interface Timed {
  seconds: number;
  startMs: number;
  endMs: number;
}

/** Runs `cmd` to its end (stdout dropped) and times it; throws with its stderr if it fails. */
export async function timedCommand(
  cmd: string,
  args: string[],
  env?: Record<string, string>,
): Promise<Timed> {
  const startMs = performance.timeOrigin + performance.now();
  const result = await new Deno.Command(cmd, { args, env, stdout: "null", stderr: "piped" })
    .output();
  const endMs = performance.timeOrigin + performance.now();
  if (!result.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(result.stderr)}`);
  }
  return { seconds: (endMs - startMs) / 1000, startMs, endMs };
}

/**
 * `image` mounted read-only by the kernel itself (file-backed EROFS: the local baseline) on a
 * new directory for `body`, with the mount's seconds; unmounted and removed afterwards.
 */
export async function withLocalMount<T>(
  image: string,
  prefix: string,
  body: (dir: string, mountSeconds: number) => Promise<T>,
): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix });
  try {
    const mounted = await timedCommand("mount", ["-t", "erofs", "-o", "ro", image, dir]);
    try {
      return await body(dir, mounted.seconds);
    } finally {
      await timedCommand("umount", [dir]);
    }
  } finally {
    await Deno.remove(dir);
  }
}

/**
 * A command of a built single-file artifact (dist/erofs-oci or a copy), unpacked into
 * `runtimeCache` (its parent must be the caller's and closed to others: the launcher checks).
 */
export async function runArtifact(
  binary: string,
  args: string[],
  options: { runtimeCache: string; env?: Record<string, string>; timeoutMs?: number },
): Promise<CliResult> {
  const output = await new Deno.Command(binary, {
    args,
    env: { EROFS_OCI_RUNTIME_CACHE: options.runtimeCache, ...options.env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: options.timeoutMs === undefined ? undefined : AbortSignal.timeout(options.timeoutMs),
  }).output();
  const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return {
    code: output.code,
    stdout: text(output.stdout),
    stderr: text(output.stderr),
    timedOut: false,
    commandLine: `${binary} ${args.join(" ")}`,
  };
}

/** BENCH_CLI=dist: the built artifact is timed, else the source tree (scripts/erofs-oci-dev). */
export function benchCliKind(): "dist" | "source" {
  return Deno.env.get("BENCH_CLI") === "dist" ? "dist" : "source";
}

/**
 * Runs erofs-oci commands from the source tree or a built artifact (`binary`, default
 * dist/erofs-oci), the latter unpacked into its own runtime cache (the first command unpacks),
 * removed by `cleanup`.
 */
export async function artifactOrSource(
  kind: "dist" | "source",
  binary = `${import.meta.dirname}/../../dist/erofs-oci`,
): Promise<{
  run(
    args: string[],
    options?: { env?: Record<string, string>; timeoutMs?: number },
  ): Promise<CliResult>;
  cleanup(): Promise<void>;
}> {
  if (kind === "source") {
    return { run: (args, options = {}) => runCli(args, options), cleanup: () => Promise.resolve() };
  }
  // The launcher wants the cache's parent to be ours and closed to others (not /tmp itself).
  const runtimeParent = await Deno.makeTempDir({ prefix: "bench-runtime-" });
  return {
    run: (args, options = {}) =>
      runArtifact(binary, args, {
        runtimeCache: `${runtimeParent}/runtime`,
        env: options.env,
        timeoutMs: options.timeoutMs ?? 20_000,
      }),
    cleanup: async () => {
      await new Deno.Command("chmod", { args: ["-R", "u+w", runtimeParent] }).output();
      await Deno.remove(runtimeParent, { recursive: true });
    },
  };
}

/**
 * EROFS_OCI_TIMING marks in the file at `path` as `label +ms` since `spawnedAtMs` (epoch), in
 * time order.
 */
export function timeline(path: string, spawnedAtMs: number): string[] {
  let text = "";
  try {
    text = Deno.readTextFileSync(path);
  } catch { /* no marks */ }
  return text.split("\n").filter((line) => line.startsWith("timing "))
    .map((line) => line.split(" "))
    .map((fields) => ({
      label: fields.slice(2, -2).join(" "),
      ms: Number(fields.at(-2)) - spawnedAtMs,
    }))
    .sort((a, b) => a.ms - b.ms)
    .map(({ label, ms }) => `${label} ${ms.toFixed(0)}`);
}

/** The registry's access-log lines of GETs of blob `digest` so far. */
export async function blobGetLines(registry: TestRegistry, digest: string): Promise<string[]> {
  return (await registry.accessLog()).filter((line) => line.includes(`/blobs/${digest} `));
}

/** CPU time of `pid` (user + system) and of the whole machine (busy, iowait), in ms. */
export function cpuMs(pid: number) {
  const tick = 10; // USER_HZ 100
  let processMs = NaN;
  try {
    const fields = Deno.readTextFileSync(`/proc/${pid}/stat`).split(") ")[1].split(" ");
    processMs = (Number(fields[11]) + Number(fields[12])) * tick;
  } catch { /* gone */ }
  const all = Deno.readTextFileSync("/proc/stat").split("\n")[0].split(/\s+/).slice(1).map(Number);
  const [user, nice, system, idle, iowait, irq, softirq, steal] = all;
  return {
    processMs,
    busyMs: (user + nice + system + irq + softirq + steal) * tick,
    iowaitMs: iowait * tick,
    idleMs: idle * tick,
  };
}
