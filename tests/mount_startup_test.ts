/**
 * Mount start-up: the detached server (a second Deno) starts while the CLI still resolves the
 * image, and a resolution that fails leaves no server behind.
 */
import assert from "node:assert/strict";
import { describe, runCli } from "./_support/cli.ts";
import { mountSandbox, mountServersOf } from "./_support/mounts.ts";
import { path, requires, root } from "./_support/requires.ts";

Deno.test({
  name: "mount: the server is up while the manifest is awaited, and gone when resolution fails",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    // A "registry" that accepts connections and never answers: the CLI waits in resolution.
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const conns: Deno.Conn[] = [];
    const accepting = (async () => {
      try {
        for await (const conn of listener) conns.push(conn);
      } catch { /* closed */ }
    })();
    const sandbox = await mountSandbox();
    try {
      const image = `127.0.0.1:${listener.addr.port}/never/answers:v1`;
      const mounting = runCli(
        ["mount", image, sandbox.target, "--plain-http", "--backend", "fuse"],
        { env: sandbox.env, timeoutMs: 60_000 },
      );
      let servers: number[] = [];
      for (let i = 0; i < 200 && (servers.length === 0 || conns.length === 0); i++) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        servers = mountServersOf(sandbox.runtimeDir);
      }
      assert(conns.length > 0, "the CLI never asked the registry");
      assert.equal(servers.length, 1, "no server process while the manifest was awaited");

      listener.close();
      for (const conn of conns) conn.close();
      const result = await mounting;
      assert.notEqual(result.code, 0, describe(result));
      assert.deepEqual(mountServersOf(sandbox.runtimeDir), [], "a server outlived the failure");
    } finally {
      try {
        listener.close();
      } catch { /* closed */ }
      for (const conn of conns) {
        try {
          conn.close();
        } catch { /* closed */ }
      }
      await accepting;
      await sandbox.cleanup();
    }
  },
});
