/**
 * A registry that restarts right after a mount (connections refused for a second or two): the
 * mount's reads ride it out. A mount server's fresh client took a refused connection before any
 * answer of its own for a mistyped host (two attempts), so a first read failed at once with
 * EIO (and the range stayed refused for 5 s after the registry was back) although the mount
 * command had reached the registry moments before (a helper's concurrency rounds): its client
 * is now made `reachedBefore`.
 */
import assert from "node:assert/strict";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";
import { assertSuccess, describe, runCli } from "./_support/cli.ts";
import { expectedManifest, mountSandbox } from "./_support/mounts.ts";
import { startRegistry } from "./_support/registry.ts";
import { RegistryClient } from "../lib/oci/client.ts";
import { pullScope } from "../lib/oci/scope.ts";

/** A TCP forwarder to `target` that can be taken down (refusing) and brought back on its port. */
function restartableForwarder(target: string) {
  const [hostname, portText] = target.split(":");
  const conns = new Set<Deno.Conn>();
  let listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const serve = async (current: Deno.Listener) => {
    for await (const conn of current) {
      conns.add(conn);
      Deno.connect({ hostname, port: Number(portText) }).then(async (upstream) => {
        conns.add(upstream);
        await Promise.allSettled([
          conn.readable.pipeTo(upstream.writable),
          upstream.readable.pipeTo(conn.writable),
        ]);
      }, () => conn.close());
    }
  };
  serve(listener).catch(() => {});
  return {
    host: `127.0.0.1:${port}`,
    down() {
      listener.close();
      for (const conn of conns) {
        try {
          conn.close();
        } catch { /* closed */ }
      }
      conns.clear();
    },
    up() {
      listener = Deno.listen({ hostname: "127.0.0.1", port });
      serve(listener).catch(() => {});
    },
    close() {
      this.down();
    },
  };
}

Deno.test({
  name: "mount: a registry down for a moment right after the mount: reads wait for it, not EIO",
  ignore: requires(root(), path("/dev/fuse"), command("docker-registry")),
  async fn() {
    const registry = await startRegistry({ auth: "none" });
    const forwarder = restartableForwarder(registry.host);
    const sandbox = await mountSandbox();
    try {
      assertSuccess(
        await runCli(["push", `${registry.host}/blip/basic:v1`, `${FIXTURES}/basic.erofs`], {
          timeoutMs: 120_000,
        }),
      );
      const env = { ...sandbox.env, EROFS_OCI_BACKGROUND_WINDOWS: "0" };
      const mounted = await runCli(
        [
          "mount",
          `${forwarder.host}/blip/basic:v1`,
          sandbox.target,
          "--backend",
          "fuse",
          "--no-disk-cache",
        ],
        { env, timeoutMs: 120_000 },
      );
      assert.equal(mounted.code, 0, describe(mounted));

      forwarder.down();
      const back = new Promise((resolve) => setTimeout(resolve, 1500)).then(() => forwarder.up());
      // Not fetched yet (no background windows): needs the registry.
      const read = await Deno.readFile(`${sandbox.target}/big-1m3.bin`).catch((e) => e as Error);
      await back;
      assert.ok(
        read instanceof Uint8Array,
        `the read failed: ${(read as Error).message}\n${sandbox.serverLogs()}`,
      );
      const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", read));
      const hex = [...digest].map((byte) => byte.toString(16).padStart(2, "0")).join("");
      const line = expectedManifest("basic.txt").split("\n").find((l) => l.startsWith("big-1m3"));
      assert.equal(hex, line?.split("\t")[7]);
    } finally {
      await sandbox.cleanup();
      forwarder.close();
      await registry.stop();
    }
  },
});

Deno.test({
  name: "RegistryClient: refused before any answer — two tries, unless reached before (retried)",
  ignore: requires(command("docker-registry")),
  async fn() {
    const registry = await startRegistry({ auth: "none" });
    const forwarder = restartableForwarder(registry.host);
    try {
      const ask = async (reachedBefore: boolean) => {
        forwarder.down();
        const back = new Promise((resolve) => setTimeout(resolve, 1500)).then(() => forwarder.up());
        const client = new RegistryClient(forwarder.host, { plainHttp: true, reachedBefore });
        const answer = await client.request({
          method: "GET",
          path: "/v2/",
          scope: pullScope("blip/basic"),
        }).then(
          async (response) => {
            await response.body?.cancel();
            return response.status;
          },
          (error) => error as Error,
        );
        await back;
        return answer;
      };
      // A host never reached: a refusal is taken for a typo, said at once.
      assert.ok((await ask(false)) instanceof Error);
      // Reached by the command that started this process: an outage, waited out.
      assert.equal(await ask(true), 200);
    } finally {
      forwarder.close();
      await registry.stop();
    }
  },
});
