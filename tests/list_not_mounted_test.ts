/**
 * `list` with a mount that another tool unmounted (a plain `umount DIR`): the record and the
 * server stay, and list says the mount is gone and what clears it instead of "serving".
 */
import assert from "node:assert/strict";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { mountSandbox, pidAlive, serverPids } from "./_support/mounts.ts";
import type { ListedMount } from "../lib/metrics/listed_layer.ts";

Deno.test({
  name: "list: a mount unmounted by another tool is `not mounted`, and umount DIR clears it",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    try {
      Deno.mkdirSync(sandbox.target, { recursive: true });
      assertSuccess(
        await runCli(["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"], {
          env: sandbox.env,
          timeoutMs: 60_000,
        }),
      );
      const listJson = async () => {
        const listed = await runCli(["list", "--json"], { env: sandbox.env });
        assertSuccess(listed);
        return JSON.parse(listed.stdout) as ListedMount[];
      };
      assert.deepEqual((await listJson()).map((m) => [m.mounted, m.state]), [[true, "serving"]]);
      const mountedGauge = async () => {
        const metrics = await runCli(["metrics"], { env: sandbox.env });
        assertSuccess(metrics);
        return metrics.stdout.match(/^erofs_oci_mount_mounted\{[^}]*\} (\d)$/m)?.[1];
      };
      assert.equal(await mountedGauge(), "1");

      const umounted = await new Deno.Command("umount", { args: [sandbox.target] }).output();
      assert.ok(umounted.success, new TextDecoder().decode(umounted.stderr));
      const [server] = serverPids(sandbox.runtimeDir);
      assert.ok(server !== undefined && pidAlive(server), "the server still runs");

      const [gone] = await listJson();
      assert.equal(gone.mounted, false);
      assert.equal(gone.state, "serving", "the server's own state is still reported");
      assert.equal(await mountedGauge(), "0", "metrics tell a scraper the mount is gone");
      const table = await runCli(["list"], { env: sandbox.env });
      assertSuccess(table);
      const row = table.stdout.split("\n").find((line) => line.startsWith(sandbox.target));
      assert.match(row ?? "", /not mounted: umount DIR clears it/, table.stdout);

      const cleared = await runCli(["umount", sandbox.target], { env: sandbox.env });
      assertSuccess(cleared);
      assert.match(cleared.stderr, /was no longer mounted: its record is cleared/);
      assert.deepEqual(await listJson(), []);
      assert.ok(!pidAlive(server), "umount stopped the server");
    } finally {
      await sandbox.cleanup();
    }
  },
});

/**
 * A plain umount of an erofs-oci mount, then another program's EROFS mount elsewhere with the
 * freed mount id: `list` and `umount DIR` must not take it for the recorded one. `olderRecord`:
 * the record as versions before the source was recorded wrote it (id alone).
 */
async function reusedMountId(olderRecord: boolean) {
  const sandbox = await mountSandbox();
  const other = sandbox.target.replace(/\/mnt$/, "/other");
  Deno.mkdirSync(other);
  const mountedAt = (point: string) =>
    Deno.readTextFileSync("/proc/self/mountinfo").split("\n").map((line) => line.split(" "))
      .find((fields) => fields[4] === point);
  try {
    assertSuccess(
      await runCli(["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"], {
        env: sandbox.env,
        timeoutMs: 60_000,
      }),
    );
    const umounted = await new Deno.Command("umount", { args: [sandbox.target] }).output();
    assert.ok(umounted.success, new TextDecoder().decode(umounted.stderr));
    // Another program's EROFS mount. The kernel hands it the lowest free mount id, often the
    // one just freed (under load another mount may take it first): the record is made to
    // name it as the kernel does by itself.
    const mountOther = await new Deno.Command("mount", {
      args: ["-t", "erofs", "-o", "ro", `${FIXTURES}/basic.erofs`, other],
    }).output();
    assert.ok(mountOther.success, new TextDecoder().decode(mountOther.stderr));
    const otherId = Number(mountedAt(other)![0]);
    const [stateDir] = [...Deno.readDirSync(`${sandbox.runtimeDir}/mounts`)];
    const statePath = `${sandbox.runtimeDir}/mounts/${stateDir.name}/state.json`;
    const state = JSON.parse(Deno.readTextFileSync(statePath));
    assert.equal(typeof state.mountId, "number");
    assert.equal(typeof state.mountSource, "string");
    if (olderRecord) {
      delete state.mountSource;
      delete state.mountDevice;
      delete state.mountBackingFile;
    }
    Deno.writeTextFileSync(statePath, JSON.stringify({ ...state, mountId: otherId }));

    const listed = await runCli(["list", "--json"], { env: sandbox.env });
    assertSuccess(listed);
    assert.deepEqual(
      (JSON.parse(listed.stdout) as ListedMount[]).map((m) => m.mounted),
      [false],
      "the other mount is not taken for this one",
    );
    const cleared = await runCli(["umount", sandbox.target], { env: sandbox.env });
    assertSuccess(cleared);
    assert.match(cleared.stderr, /was no longer mounted: its record is cleared/);
    assert.ok(mountedAt(other), `${other} (another program's mount) is still mounted`);
  } finally {
    if (mountedAt(other)) await new Deno.Command("umount", { args: [other] }).output();
    await sandbox.cleanup();
  }
}

Deno.test({
  name:
    "umount DIR after a plain umount leaves alone another EROFS mount that got the freed mount id",
  ignore: requires(root(), path("/dev/fuse")),
  fn: () => reusedMountId(false),
});

Deno.test({
  name: "…and so with a record written before the mount's source was recorded (an upgrade)",
  ignore: requires(root(), path("/dev/fuse")),
  fn: () => reusedMountId(true),
});
