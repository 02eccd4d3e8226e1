/**
 * Mount hardening on kernel NBD devices (QEMU guest): the image's setuid file and device node
 * give nothing, the mount goes onto the pinned target, and umount through a parent swapped for
 * a symlink leaves the mount the symlink leads to alone.
 */
import assert from "node:assert/strict";
import { NOT_IN_VM } from "../_support/vm.ts";
import { describe, runCli } from "../_support/cli.ts";
import { mountSandbox, mountsBelow } from "../_support/mounts.ts";
import {
  buildHostileImage,
  canOpenDevice,
  euidOfSetuidId,
  mountOptionsAt,
  NOBODY,
} from "../_support/hostile_image.ts";

Deno.test({
  name: "vm nbd hardening: nosuid,nodev on an NBD mount; umount via a swapped parent is contained",
  ignore: NOT_IN_VM,
  async fn() {
    const sandbox = await mountSandbox();
    const base = sandbox.target.replace(/\/mnt$/, "");
    Deno.chmodSync(base, 0o755);
    const owned = `${base}/owned`;
    const victim = `${base}/victim`;
    try {
      const image = await buildHostileImage(base);
      Deno.mkdirSync(`${owned}/mnt`, { recursive: true });
      Deno.mkdirSync(`${victim}/mnt`, { recursive: true });
      const mounted = await runCli(["mount", image, `${owned}/mnt`, "--backend", "nbd"], {
        env: sandbox.env,
        timeoutMs: 300_000,
      });
      assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
      assert.match(mounted.stdout, /nbd: nbd\d+; ro,nosuid,nodev/);
      const options = mountOptionsAt(`${owned}/mnt`);
      assert.ok(options.includes("nosuid") && options.includes("nodev"), options.join(","));
      assert.equal(await euidOfSetuidId(`${owned}/mnt`), NOBODY);
      assert.equal(canOpenDevice(`${owned}/mnt/null`), false);

      const tmpfs = await new Deno.Command("mount", {
        args: ["-t", "tmpfs", "victim", `${victim}/mnt`],
      }).output();
      assert.equal(tmpfs.code, 0);
      Deno.renameSync(owned, `${base}/owned.moved`);
      Deno.symlinkSync(victim, owned);
      const result = await runCli(["umount", `${owned}/mnt`], {
        env: sandbox.env,
        timeoutMs: 120_000,
      });
      assert.deepEqual(mountsBelow(victim), [`${victim}/mnt`], describe(result));
      assert.equal(result.code, 0, describe(result));
      assert.deepEqual(mountsBelow(`${base}/owned.moved`), []);
      assert.deepEqual([...Deno.readDirSync(`${sandbox.runtimeDir}/mounts`)], []);
    } finally {
      for (const dir of [`${victim}/mnt`, `${base}/owned.moved/mnt`]) {
        if (mountsBelow(dir).length) {
          await new Deno.Command("umount", { args: ["-l", dir], stderr: "null" }).output();
        }
      }
      await sandbox.cleanup();
    }
  },
});
