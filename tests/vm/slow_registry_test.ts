/**
 * A registry slower than the kernel's NBD request timeout: with several connections the kernel
 * drops a socket whose reply is late and requeues its requests; the server must replace the
 * socket (RECONFIGURE) so readers never see an error and every byte is right.
 */
import assert from "node:assert/strict";
import { FIXTURES } from "../_support/requires.ts";
import { startRegistry } from "../_support/registry.ts";
import { isBlobGet, startFaultProxy } from "../_support/fault_proxy.ts";
import { assertSuccess, describe, runCli } from "../_support/cli.ts";
import { expectedManifest, manifestOf, mountSandbox } from "../_support/mounts.ts";
import { NOT_IN_VM } from "../_support/vm.ts";

Deno.test({
  name: "vm slow registry: replies later than the NBD timeout cost a reconnect, not an error",
  ignore: NOT_IN_VM,
  async fn() {
    const registry = await startRegistry({ auth: "none", startTimeoutMs: 60_000 });
    const proxy = await startFaultProxy(registry.host, [
      // 3 s per blob read against a 2 s kernel timeout: the first socket times out, the
      // requeued request joins the same fetch on another socket and is answered in time.
      { name: "slow", match: isBlobGet, fault: { kind: "delay", ms: 3000 } },
    ]);
    const sandbox = await mountSandbox();
    try {
      const image = `${proxy.host}/slow/basic:v1`;
      assertSuccess(
        await runCli(["push", `${registry.host}/slow/basic:v1`, `${FIXTURES}/basic.erofs`], {
          timeoutMs: 120_000,
        }),
      );
      const env = { ...sandbox.env, EROFS_OCI_NBD_TIMEOUT_S: "2" };
      const mounted = await runCli(["mount", image, sandbox.target, "--backend", "nbd"], {
        env,
        timeoutMs: 180_000,
      });
      assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
      await new Deno.Command("sh", { args: ["-c", "echo 3 > /proc/sys/vm/drop_caches"] })
        .output();
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      const log = sandbox.serverLogs();
      assert.match(log, /replaced a connection/, `no socket was dropped and replaced:\n${log}`);
      assert.ok(proxy.hits(0) > 0);
      assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 60_000 }));
    } finally {
      await sandbox.cleanup();
      await proxy.stop();
      await registry.stop();
    }
  },
});
