/**
 * `erofs-oci cache` names the mounts using a blob on the row of the origin they read it from:
 * two real registries serve the same layer, one mount from each, and the disk cache keeps a
 * file set per origin. Matched by digest alone, both rows listed both mounts.
 */
import assert from "node:assert/strict";
import { command, path, requires, root } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { assertSuccess, describe, runCli } from "./_support/cli.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE, loadFixture } from "./_support/oci_fixtures.ts";
import { mountSandbox } from "./_support/mounts.ts";

Deno.test({
  name: "cache: IN USE names each mount on the row of the registry it reads the blob from",
  ignore: requires(root(), path("/dev/fuse"), command("docker-registry")),
  async fn() {
    await using first = await startRegistry({ auth: "none" });
    await using second = await startRegistry({ auth: "none" });
    const fixture = await loadFixture("basic.erofs");
    const layer = { bytes: fixture.bytes, mediaType: EROFS_MEDIA_TYPE };
    const digest = (await pushImage(first, "origin/app", "v1", [layer])).layers[0].digest;
    await pushImage(second, "origin/app", "v1", [layer]);
    const sandbox = await mountSandbox();
    const targets = [sandbox.target, `${sandbox.target}-2`];
    Deno.mkdirSync(targets[1]);
    const mounted: string[] = [];
    try {
      for (const [index, registry] of [first, second].entries()) {
        assertSuccess(
          await runCli(
            [
              "mount",
              `${registry.host}/origin/app:v1`,
              targets[index],
              "--plain-http",
              "--backend",
              "fuse",
            ],
            { env: sandbox.env, timeoutMs: 60_000 },
          ),
        );
        mounted.push(targets[index]);
      }
      const table = await runCli(["cache"], { env: sandbox.env });
      assertSuccess(table);
      const rows = table.stdout.split("\n").filter((line) => line.startsWith(digest.slice(0, 19)));
      assert.equal(rows.length, 2, describe(table));
      for (const [index, registry] of [first, second].entries()) {
        const row = rows.find((line) => line.includes(` http://${registry.host} `));
        const inUse = row?.trim().split(/ +/).at(-2);
        assert.equal(inUse, targets[index], describe(table));
      }
    } finally {
      for (const target of mounted) {
        await runCli(["umount", target], { env: sandbox.env, timeoutMs: 30_000 });
      }
      await sandbox.cleanup();
    }
  },
});
