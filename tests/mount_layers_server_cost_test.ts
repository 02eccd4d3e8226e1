/**
 * What a layer costs its mount server: a hostile manifest may list one small layer hundreds of
 * times (the overlay's option page is the only cap). With a /dev/fuse reader thread per layer
 * (a V8 isolate each) a 56 KB manifest listing a 16 KiB layer 419 times took a server to
 * 2.7 GB, 7,000 descriptors and 424 threads; one reader thread serves every layer now.
 */
import assert from "node:assert/strict";
import { assertSuccess, describe, runCli } from "./_support/cli.ts";
import {
  mountSandbox,
  mountsBelow,
  mountServersOf,
  runningKeepersOf,
  serverPids,
} from "./_support/mounts.ts";
import { pushImage, sha256Digest } from "./_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE, loadFixture } from "./_support/oci_fixtures.ts";
import { startRegistry } from "./_support/registry.ts";
import { command, path, requires, root } from "./_support/requires.ts";

const LAYERS = 64;
/** layer1.erofs's shared.bin (fixtures/expected/layer1.txt). */
const SHARED_BIN_SHA256 = "8a16a39c46254f040f404e1e2115d08501b2019a2f77c64380330b8eb5d57c9e";

function statusField(pid: number, field: string): number {
  const line = Deno.readTextFileSync(`/proc/${pid}/status`).split("\n")
    .find((l) => l.startsWith(`${field}:`));
  return Number(line?.split(/\s+/)[1]);
}

Deno.test({
  name:
    `mount of one small layer listed ${LAYERS} times: server threads, memory and fds stay small`,
  ignore: requires(root(), path("/dev/fuse"), command("docker-registry")),
  async fn() {
    const registry = await startRegistry({ auth: "none" });
    const sandbox = await mountSandbox();
    try {
      const layer = (await loadFixture("layer1.erofs")).bytes;
      await pushImage(
        registry,
        "demo/many",
        "v1",
        Array.from({ length: LAYERS }, () => ({ bytes: layer, mediaType: EROFS_MEDIA_TYPE })),
      );
      const mounted = await runCli(
        ["mount", `${registry.host}/demo/many:v1`, sandbox.target, "--backend", "fuse"],
        { env: sandbox.env, timeoutMs: 240_000 },
      );
      assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
      assert.match(mounted.stdout, new RegExp(`${LAYERS} layers`));
      assert.equal(
        await sha256Digest(await Deno.readFile(`${sandbox.target}/shared.bin`)),
        `sha256:${SHARED_BIN_SHA256}`,
      );
      assert.equal(await Deno.readTextFile(`${sandbox.target}/data/a.txt`), "a1\n");

      const [pid] = serverPids(sandbox.runtimeDir);
      const threads = statusField(pid, "Threads");
      const rssMb = statusField(pid, "VmRSS") / 1024;
      const fds = [...Deno.readDirSync(`/proc/${pid}/fd`)].length;
      // A reader thread per layer: over LAYERS threads, ~6.7 MB and 17 descriptors a layer.
      // Now: some 10 threads, ~80 MB and 9 descriptors a layer (its disk cache files, twice).
      const cost = `${threads} threads, ${rssMb.toFixed(0)} MB, ${fds} fds`;
      assert.ok(threads < LAYERS / 2, cost);
      assert.ok(rssMb < 4 * LAYERS, cost);
      assert.ok(fds < 12 * LAYERS + 100, cost);

      // umount took ~120 ms a layer (a worker thread per umount2, lib/sys/mount_task.ts); it
      // must still take every layer, FUSE mount, server, keeper and record with it.
      assertSuccess(
        await runCli(["umount", sandbox.target], { env: sandbox.env, timeoutMs: 240_000 }),
      );
      assert.deepEqual(mountsBelow(sandbox.target), []);
      assert.deepEqual(mountsBelow(sandbox.runtimeDir), [], "no layer or FUSE mount left");
      assert.deepEqual(mountServersOf(sandbox.runtimeDir), [], "no server left");
      assert.deepEqual(runningKeepersOf(sandbox.runtimeDir), [], "no FUSE keeper left");
      assert.deepEqual([...Deno.readDirSync(`${sandbox.runtimeDir}/mounts`)], [], "no record");
    } finally {
      await sandbox.cleanup();
      await registry.stop();
    }
  },
});
