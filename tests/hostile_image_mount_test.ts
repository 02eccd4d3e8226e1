/**
 * The hostile image of issue 9 through the real product path: `erofs-oci mount --backend fuse`
 * of a local file and of the same image pushed to a real docker-registry. It must mount (or
 * fail with one clear line) while the server's peak memory (VmHWM) stays bounded; before the
 * walk had a budget the server reached 2.3 GB and `mount` said "the kernel sent no INIT".
 */
import assert from "node:assert/strict";
import { command, path as requirePath, PEER_BIN, requires, root } from "./_support/requires.ts";
import { describe, runCli } from "./_support/cli.ts";
import {
  type MountSandbox,
  mountSandbox,
  mountsBelow,
  mountServersOf,
  pidAlive,
  serverPids,
} from "./_support/mounts.ts";
import { hugeDirectoriesImage } from "./_support/hostile_erofs.ts";
import { startRegistry } from "./_support/registry.ts";

/** A server reading the image must stay well below this (it took 2.3 GB before). */
const SERVER_PEAK_LIMIT_BYTES = 300 << 20;

function vmHwmOf(pid: number): number | undefined {
  try {
    const match = /VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync(`/proc/${pid}/status`));
    return match ? Number(match[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

function mib(bytes: number): string {
  return `${Math.round(bytes / 2 ** 20)} MiB`;
}

/**
 * Runs `mount IMAGE` in the sandbox while sampling its server's VmHWM (the server may die
 * before `mount` returns, so it is followed from its start), then reads the patched
 * directories through the kernel and unmounts, checking the server stayed bounded throughout.
 */
async function mountAndCheckBounded(
  sandbox: MountSandbox,
  image: string,
  directories: number,
  extraArgs: string[] = [],
): Promise<void> {
  let peakBytes = 0;
  const seen = new Set<number>();
  const sample = () => {
    for (const pid of mountServersOf(sandbox.runtimeDir)) seen.add(pid);
    for (const pid of seen) peakBytes = Math.max(peakBytes, vmHwmOf(pid) ?? 0);
  };
  const timer = setInterval(sample, 50);
  let mounted;
  let walk: RegExpMatchArray | undefined;
  try {
    mounted = await runCli(["mount", image, sandbox.target, "--backend", "fuse", ...extraArgs], {
      env: sandbox.env,
      timeoutMs: 120_000,
    });
    // Sampled until the directory walk is over (after ready when the image has a list).
    if (mounted.code === 0) {
      walk = await sandbox.serverLogMatch(/metadata prefetch, directories: (\d+) directories/);
    }
    sample();
  } finally {
    clearInterval(timer);
  }
  const logs = sandbox.serverLogs();
  assert.ok(
    peakBytes < SERVER_PEAK_LIMIT_BYTES,
    `server peak ${mib(peakBytes)} during mount\n${describe(mounted)}\n${logs}`,
  );
  // A clear error would also do; this image is valid enough for the kernel to mount.
  assert.equal(mounted.code, 0, `${describe(mounted)}\nserver log:\n${logs}`);
  assert.equal(Number(walk![1]), directories + 1, logs);
  const [pid] = serverPids(sandbox.runtimeDir);
  assert.equal([...Deno.readDirSync(sandbox.target)].length, directories, "root lists all");
  // What the kernel makes of the patched directories is its business (an error or garbage
  // entries); the server must answer those reads without growing.
  for (const name of ["d0", "d1", `d${directories >> 1}`, `d${directories - 1}`]) {
    try {
      for (const _ of Deno.readDirSync(`${sandbox.target}/${name}`)) { /* read it all */ }
    } catch { /* EUCLEAN and friends */ }
  }
  const after = vmHwmOf(pid) ?? 0;
  assert.ok(after < SERVER_PEAK_LIMIT_BYTES, `server peak ${mib(after)} after reads`);
  const unmounted = await runCli(["umount", sandbox.target], {
    env: sandbox.env,
    timeoutMs: 60_000,
  });
  assert.equal(unmounted.code, 0, describe(unmounted));
  assert.deepEqual(mountsBelow(sandbox.target), []);
  assert.ok(!pidAlive(pid), "server stopped");
}

Deno.test({
  name: "hostile mount: a local file of 2,000 dirs claiming 256 MiB mounts, server bounded",
  ignore: requires(
    root(),
    requirePath("/dev/fuse"),
    requirePath(`${PEER_BIN}/mkfs.erofs`, "peer mkfs.erofs"),
  ),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-hostile-" });
    const sandbox = await mountSandbox();
    try {
      const hostile = await hugeDirectoriesImage(work, 2000, 256 << 20);
      await mountAndCheckBounded(sandbox, hostile.path, 2000);
    } finally {
      await sandbox.cleanup();
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test({
  name: "hostile mount: the same kind of image pushed to a registry mounts, server bounded",
  ignore: requires(
    root(),
    requirePath("/dev/fuse"),
    command("docker-registry"),
    requirePath(`${PEER_BIN}/mkfs.erofs`, "peer mkfs.erofs"),
  ),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-hostile-" });
    const registry = await startRegistry({ auth: "none" });
    const sandbox = await mountSandbox();
    try {
      // 64 MiB claims keep the push small; 2,000 of them still took the old walk past 1 GB.
      const hostile = await hugeDirectoriesImage(work, 2000, 64 << 20);
      const image = `${registry.host}/hostile/dirs:v1`;
      const pushed = await runCli(["push", image, hostile.path], { timeoutMs: 120_000 });
      assert.equal(pushed.code, 0, describe(pushed));
      await mountAndCheckBounded(sandbox, image, 2000);
    } finally {
      await sandbox.cleanup();
      await registry.stop();
      await Deno.remove(work, { recursive: true });
    }
  },
});
