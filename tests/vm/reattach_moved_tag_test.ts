/**
 * Issue 9 item 6, in the VM: a device mounted by erofs-utils' `mount.erofs -o oci.layer=0`
 * records a tag and a layer index (OCI_LAYER), and its devices are 2^63 bytes whatever the
 * image. When the tag has moved to another image while the server was dead, `erofs-oci
 * reattach` must refuse (the mounted file system would otherwise read another image's blocks),
 * leave the device as it was, and proceed only with --accept-changed-image.
 */
import assert from "node:assert/strict";
import { FIXTURES } from "../_support/requires.ts";
import {
  killAndWait,
  nbdIndexAt,
  nbdServerProcess,
  nbdSysfs,
  RECOVERY_DIR,
  runPeer,
} from "../_support/peer_nbd.ts";
import { startRegistry } from "../_support/registry.ts";
import { assertSuccess, describe, runCli } from "../_support/cli.ts";
import { mountSandbox, mountsBelow, pidAlive } from "../_support/mounts.ts";
import { pushImage } from "../_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE } from "../_support/oci_fixtures.ts";
import { NOT_IN_VM } from "../_support/vm.ts";

Deno.test({
  name: "vm reattach moved tag: an OCI_LAYER device is not reattached to a moved tag " +
    "unless --accept-changed-image",
  ignore: NOT_IN_VM,
  async fn() {
    Deno.mkdirSync(RECOVERY_DIR, { recursive: true, mode: 0o700 });
    const sandbox = await mountSandbox();
    const base = sandbox.target.replace(/\/mnt$/, "");
    const peerLog = `${base}/peer.log`;
    const dir = `${base}/peer-mnt`;
    const registry = await startRegistry({ auth: "none", startTimeoutMs: 60_000 });
    let index: number | undefined;
    let recoveryFile: string | undefined;
    let peerServer: number | undefined;
    try {
      const ref = `${registry.host}/moved/app:v1`;
      const first = Deno.readFileSync(`${FIXTURES}/basic.erofs`);
      await pushImage(registry, "moved/app", "v1", [{ bytes: first, mediaType: EROFS_MEDIA_TYPE }]);
      Deno.mkdirSync(dir, { recursive: true });
      const peer = await runPeer(
        ["-t", "erofs.nbd", "-o", "oci.layer=0,oci.insecure", ref, dir],
        peerLog,
      );
      assert.equal(peer.code, 0, `mount.erofs:\n${peer.log}`);
      index = nbdIndexAt(dir);
      recoveryFile = nbdSysfs(index, "backend");
      assert.ok(recoveryFile, "the peer wrote a recovery file (netlink)");
      assert.match(Deno.readTextFileSync(recoveryFile), /^OCI_LAYER /);
      assert.equal(Deno.readTextFileSync(`${dir}/dir/a.txt`).length > 0, true);
      peerServer = nbdServerProcess(index);
      const deadTask = nbdSysfs(index, "pid");
      await killAndWait(peerServer);

      // The tag moves while nothing serves the device.
      const second = Deno.readFileSync(`${FIXTURES}/basic-lz4.erofs`);
      await pushImage(registry, "moved/app", "v1", [{
        bytes: second,
        mediaType: EROFS_MEDIA_TYPE,
      }]);

      const refused = await runCli(["reattach", `/dev/nbd${index}`], {
        env: sandbox.env,
        timeoutMs: 120_000,
      });
      console.log(`refused reattach: ${refused.stdout.trim()} | ${refused.stderr.trim()}`);
      assert.equal(refused.code, 1, describe(refused));
      assert.match(refused.stderr, /different image than the one mounted at/, describe(refused));
      assert.match(refused.stderr, /--accept-changed-image/, describe(refused));
      assert.match(refused.stdout, new RegExp(`nbd${index}\\s+failed`), describe(refused));
      // Untouched: same recovery file, still the dead server's task id (the attribute stays
      // until a new server or a disconnect), nothing alive serving it, still mounted.
      assert.equal(nbdSysfs(index, "backend"), recoveryFile);
      assert.equal(nbdSysfs(index, "pid"), deadTask, "no server was started");
      assert.ok(!pidAlive(Number(deadTask)), "no server was started");
      assert.deepEqual(mountsBelow(dir), [dir]);

      // A rebuild of the same tree: UUID, blocks and inodes alike, only the build time differs
      // (6.1 does not report the UUID through statfs; the root inode's mtime still tells).
      const rebuilt = first.slice();
      new DataView(rebuilt.buffer).setBigUint64(1024 + 24, 1_800_000_000n, true);
      await pushImage(registry, "moved/app", "v1", [{
        bytes: rebuilt,
        mediaType: EROFS_MEDIA_TYPE,
      }]);
      const refusedAgain = await runCli(["reattach", `/dev/nbd${index}`], {
        env: sandbox.env,
        timeoutMs: 120_000,
      });
      console.log(`refused reattach (rebuilt): ${refusedAgain.stderr.trim()}`);
      assert.equal(refusedAgain.code, 1, describe(refusedAgain));
      assert.match(refusedAgain.stderr, /different image .*build time/, describe(refusedAgain));
      assert.equal(nbdSysfs(index, "pid"), deadTask, "no server was started");

      const forced = await runCli(["reattach", `/dev/nbd${index}`, "--accept-changed-image"], {
        env: sandbox.env,
        timeoutMs: 120_000,
      });
      assertSuccess(forced);
      assert.match(forced.stdout, new RegExp(`nbd${index}\\s+reattached`), describe(forced));
      // RECONFIGURE keeps the pid attribute of the first server: ask erofs-oci, which adopted
      // the device, whether its new server serves.
      const listed = await runCli(["list", "--json"], { env: sandbox.env, timeoutMs: 60_000 });
      assertSuccess(listed);
      const mounts = JSON.parse(listed.stdout) as { target: string; state: string }[];
      assert.deepEqual(mounts.map((m) => [m.target, m.state]), [[dir, "serving"]], listed.stdout);
      assertSuccess(await runCli(["umount", dir], { env: sandbox.env, timeoutMs: 60_000 }));
      assert.deepEqual(mountsBelow(dir), []);
      assert.equal(nbdSysfs(index, "pid"), undefined, `nbd${index} disconnected`);
    } finally {
      if (mountsBelow(dir).length) {
        await new Deno.Command("umount", { args: ["-l", dir] }).output();
      }
      await sandbox.cleanup();
      if (index !== undefined && (nbdSysfs(index, "pid") || nbdSysfs(index, "backend"))) {
        await runPeer(["--disconnect", `/dev/nbd${index}`], peerLog);
      }
      for (const p of recoveryFile ? [recoveryFile, `${recoveryFile}.erofs-oci.json`] : []) {
        try {
          Deno.removeSync(p);
        } catch { /* gone (umount removes it) */ }
      }
      await registry.stop();
    }
  },
});
