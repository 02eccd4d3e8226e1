/**
 * `list`'s HIT RATE is the memory cache's, for layers it serves. Over the disk cache (the
 * default) it only passes reads on and counted nothing but reads of pinned pages as hits: 100%
 * however much was fetched. Such a mount shows "-" (DISK HITS says what the disk saved); a
 * memory-only one its rate.
 */
import assert from "node:assert/strict";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";
import { mountSandbox } from "./_support/mounts.ts";
import { startRegistry } from "./_support/registry.ts";

Deno.test({
  name: "list: HIT RATE is '-' over the disk cache, the memory cache's rate without it",
  ignore: requires(root(), path("/dev/fuse"), command("docker-registry")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const image = `${registry.host}/hits/app:v1`;
    assertSuccess(await runCli(["push", image, `${FIXTURES}/basic.erofs`], { timeoutMs: 60_000 }));
    for (const diskCache of [true, false]) {
      const sandbox = await mountSandbox();
      try {
        assertSuccess(
          await runCli([
            "mount",
            image,
            sandbox.target,
            "--backend",
            "fuse",
            ...(diskCache ? [] : ["--no-disk-cache"]),
          ], { env: sandbox.env, timeoutMs: 60_000 }),
        );
        await Deno.readFile(`${sandbox.target}/big-1m3.bin`);
        const json = await runCli(["list", "--json"], { env: sandbox.env });
        assertSuccess(json);
        const [mount] = JSON.parse(json.stdout);
        const table = await runCli(["list"], { env: sandbox.env });
        const row = table.stdout.split("\n")[1] ?? "";
        if (diskCache) {
          assert.equal(mount.cacheHitRate, undefined, json.stdout);
          assert.doesNotMatch(row, /100\.0%/, table.stdout);
        } else {
          assert.equal(typeof mount.cacheHitRate, "number", json.stdout);
          assert.ok(mount.cacheHitRate < 1, `a cold read missed: ${mount.cacheHitRate}`);
        }
        assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
      } finally {
        await sandbox.cleanup();
      }
    }
  },
});
