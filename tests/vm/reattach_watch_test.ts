/**
 * `erofs-oci reattach --watch` with kernel NBD (in the VM): the server of a mount is killed with
 * SIGKILL in the middle of a 48 MiB read; the watcher notices within 2 s (pidfd) and reattaches
 * the device, and the reader finishes with the exact sha256 with nobody running `reattach`.
 * The new server answers scrapes at the mount's --metrics-listen socket again.
 */
import assert from "node:assert/strict";
import { assertSuccess, runCli } from "../_support/cli.ts";
import { mountSandbox, pidAlive, serverPids } from "../_support/mounts.ts";
import { NOT_IN_VM } from "../_support/vm.ts";
import { killMidRead, withBigImage } from "../_support/kill_mid_read.ts";
import { startWatcher } from "../_support/watcher.ts";
import { parsePrometheus, sampleOf, scrape } from "../_support/prometheus.ts";

Deno.test({
  name: "vm reattach --watch: kill -9 of an NBD server mid-read, the reader finishes unattended",
  ignore: NOT_IN_VM,
  async fn() {
    await withBigImage(async (registry, image, sha256, gate) => {
      assertSuccess(
        await runCli(["push", `${registry.host}/watch/big:v1`, image], { timeoutMs: 180_000 }),
      );
      const sandbox = await mountSandbox();
      const socket = `${sandbox.runtimeDir}/metrics.sock`;
      const watcher = startWatcher(sandbox.env);
      try {
        await watcher.waitFor(/watching/, 180_000);
        assertSuccess(
          await runCli([
            "mount",
            `${gate.proxy.host}/watch/big:v1`,
            sandbox.target,
            "--backend",
            "nbd",
            "--metrics-listen",
            `unix:${socket}`,
          ], {
            env: sandbox.env,
            timeoutMs: 180_000,
          }),
        );
        // The watcher's next scan (1 s) opens a pidfd for the new server.
        await new Promise((r) => setTimeout(r, 3_000));
        const { killedPid, killedAtMs, recoveredMs } = await killMidRead(
          sandbox.runtimeDir,
          gate,
          `${sandbox.target}/big.bin`,
          sha256,
          () => Promise.resolve(), // nobody reattaches: the watcher must
          { readerTimeoutMs: 400_000 },
        );
        const noticed = await watcher.waitFor(new RegExp(`server ${killedPid} is gone`));
        const reactionMs = noticed.atMs - killedAtMs;
        console.log(`noticed in ${reactionMs} ms, reader done ${recoveredMs} ms after the kill`);
        console.log(watcher.lines.join("\n"));
        assert.ok(reactionMs < 2_000, `the watcher took ${reactionMs} ms to notice`);
        const [serverPid] = serverPids(sandbox.runtimeDir);
        assert.notEqual(serverPid, killedPid);
        assert.ok(pidAlive(serverPid), "list's server runs");
        const families = await parsePrometheus(await scrape(socket));
        assert.equal(sampleOf(families, "erofs_oci_mount_info", { mount: sandbox.target }), 1);
        assert(sampleOf(families, "erofs_oci_layer_fetched_bytes_total", { layer: "0" }) > 0);
        assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
      } finally {
        await watcher.stop();
        await sandbox.cleanup();
      }
    });
  },
});
