/**
 * Mount start-up: the detached server (a second Deno) starts while the CLI still resolves the
 * image, and a resolution that fails leaves no server behind.
 */
import assert from "node:assert/strict";
import { describe, runCli } from "./_support/cli.ts";
import { mountSandbox, mountServersOf } from "./_support/mounts.ts";
import { path, requires, root } from "./_support/requires.ts";

/** A "registry" that accepts connections and never answers: the CLI waits in resolution. */
function silentRegistry() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  const accepting = (async () => {
    try {
      for await (const conn of listener) conns.push(conn);
    } catch { /* closed */ }
  })();
  const closeQuietly = (closer: { close(): void }) => {
    try {
      closer.close();
    } catch { /* closed */ }
  };
  return {
    image: `127.0.0.1:${listener.addr.port}/never/answers:v1`,
    /** The connections accepted so far. */
    conns,
    /** Closes the listener and every connection (again: nothing more). */
    async close() {
      closeQuietly(listener);
      conns.forEach(closeQuietly);
      await accepting;
    },
  };
}

Deno.test({
  name: "mount: the server is up while the manifest is awaited, and gone when resolution fails",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const registry = silentRegistry();
    const conns = registry.conns;
    const sandbox = await mountSandbox();
    try {
      const image = registry.image;
      const timingFile = `${sandbox.target}.timing`;
      const mounting = runCli(
        ["mount", image, sandbox.target, "--plain-http", "--backend", "fuse"],
        { env: { ...sandbox.env, EROFS_OCI_TIMING: timingFile }, timeoutMs: 60_000 },
      );
      let servers: number[] = [];
      // Until the server has marked too (its own `cli: main`): a loaded machine got it killed
      // by the failure below before it came that far, and its marks were missing.
      const markedPids = async () =>
        new Set(
          (await Deno.readTextFile(timingFile).catch(() => "")).split("\n").filter(Boolean)
            .map((line) => line.split(" ")[1]),
        ).size;
      for (
        let i = 0;
        i < 200 && (servers.length === 0 || conns.length === 0 || await markedPids() < 2);
        i++
      ) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        servers = mountServersOf(sandbox.runtimeDir);
      }
      assert(conns.length > 0, "the CLI never asked the registry");
      assert.equal(
        servers.length,
        1,
        "no server process while the manifest was awaited; marks:\n" +
          (await Deno.readTextFile(timingFile).catch(() => "(none)")),
      );

      await registry.close();
      const result = await mounting;
      assert.notEqual(result.code, 0, describe(result));
      assert.deepEqual(mountServersOf(sandbox.runtimeDir), [], "a server outlived the failure");
      // The server was spawned before mount's own modules had loaded (lib/cli/mount_ahead.ts),
      // and mount took that one instead of spawning another.
      const lines = Deno.readTextFileSync(timingFile).trimEnd().split("\n");
      const labels = lines.map((line) => line.split(" ").slice(2, -2).join(" "));
      const at = (label: string) => labels.indexOf(label);
      assert(at("cli: server spawned ahead") >= 0, labels.join("\n"));
      assert(at("cli: server spawned ahead") < at("cli: mount loaded"), labels.join("\n"));
      assert.equal(labels.filter((l) => l.startsWith("cli: server spawned")).length, 2);
      // Two processes marked: this CLI and one server (the server's own CLI entry marks).
      assert.equal(new Set(lines.map((line) => line.split(" ")[1])).size, 2, lines.join("\n"));
    } finally {
      await registry.close();
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "mount: a mount refused after its server was spawned ahead leaves no server behind",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    try {
      const image = "127.0.0.1:9/never/asked:v1";
      const refusals = [
        // mount.ts's own checks, after main.ts spawned the server on its quick look
        ["mount", image, sandbox.target, "--backend", "fuse", "--upper", "/tmp"],
        ["mount", image, `${sandbox.target}/missing`, "--backend", "fuse"],
        ["mount", image, sandbox.target, "--backend", "fuse", "--cache-size", "lots"],
      ];
      for (const args of refusals) {
        const timingFile = `${sandbox.target}.timing`;
        const result = await runCli(args, {
          env: { ...sandbox.env, EROFS_OCI_TIMING: timingFile },
        });
        assert.notEqual(result.code, 0, describe(result));
        const marks = Deno.readTextFileSync(timingFile);
        Deno.removeSync(timingFile);
        assert.match(marks, / cli: server spawned ahead /, "no server was spawned ahead");
        assert.deepEqual(
          mountServersOf(sandbox.runtimeDir),
          [],
          `${describe(result)}: server left`,
        );
      }
    } finally {
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name:
    "mount: the manifest is asked for ahead of mount's own checks, and ended when mount is refused",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const registry = silentRegistry();
    const conns = registry.conns;
    const sandbox = await mountSandbox();
    try {
      const image = registry.image;
      const run = async (args: string[]) => {
        const timingFile = `${sandbox.target}.timing`;
        const result = await runCli(args, {
          env: { ...sandbox.env, EROFS_OCI_TIMING: timingFile },
        });
        const marks = Deno.readTextFileSync(timingFile);
        Deno.removeSync(timingFile);
        return { result, marks };
      };
      // Refused by mount.ts's target check, after the GET went out on the early look: the
      // CLI does not wait for the registry that never answers.
      const missing = `${sandbox.target}/missing`;
      const refused = await run(["mount", image, missing, "--plain-http", "--backend", "fuse"]);
      assert.equal(refused.result.code, 1, describe(refused.result));
      assert.match(refused.result.stderr, /does not exist/, describe(refused.result));
      assert.match(refused.marks, / cli: manifest asked ahead /, refused.marks);
      for (let i = 0; i < 40 && conns.length === 0; i++) {
        await new Promise((resolve) => setTimeout(resolve, 50)); // our accept loop's turn
      }
      assert(conns.length > 0, "the manifest GET started ahead never reached the registry");
      assert.deepEqual(mountServersOf(sandbox.runtimeDir), [], "a server outlived the refusal");
      // Credentials on the command line: not ahead (stdin and the hand-off are mount's).
      const before = conns.length;
      const withCredentials = await run([
        "mount",
        image,
        missing,
        "--plain-http",
        "--backend",
        "fuse",
        "--username",
        "u",
        "--password",
        "p",
      ]);
      assert.equal(withCredentials.result.code, 1, describe(withCredentials.result));
      assert.doesNotMatch(withCredentials.marks, /manifest asked ahead/, withCredentials.marks);
      assert.equal(conns.length, before, "a GET went out for a mount given credentials");
    } finally {
      await registry.close();
      await sandbox.cleanup();
    }
  },
});
