/**
 * `mount` run through the shipped file: the launcher starts the mount server beside the CLI
 * (lib/daemon/launcher_server.ts). The mount must work as with a server the CLI spawns, and a
 * `mount` that needs no server, or cannot reach this one, must leave neither a process nor a
 * socket behind.
 */
import assert from "node:assert/strict";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import { expectedManifest, manifestOf, mountSandbox, mountServersOf } from "./_support/mounts.ts";
import { build, copiedAlone, isLauncher } from "./_support/dist.ts";

const LAUNCHED = "(started by the launcher with the mount command)";
const needs = requires(root(), path("/dev/fuse"), path(`${FIXTURES}/basic.erofs`));

/** Socket files left in a runtime cache (the launcher names them .server-PID.sock). */
function socketsIn(runtimeCache: string): string[] {
  const found: string[] = [];
  try {
    for (const entry of Deno.readDirSync(runtimeCache)) {
      if (entry.name.endsWith(".sock")) found.push(entry.name);
    }
  } catch { /* not unpacked */ }
  return found;
}

/** Waits (2 s at most) until no server of `runtimeDir` runs; returns those still running. */
async function serversAfterExit(runtimeDir: string): Promise<number[]> {
  for (let i = 0; i < 40 && mountServersOf(runtimeDir).length > 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return mountServersOf(runtimeDir);
}

/** The targets of `pid`'s open descriptors. */
function openFiles(pid: number): string[] {
  const out: string[] = [];
  for (const entry of Deno.readDirSync(`/proc/${pid}/fd`)) {
    try {
      out.push(Deno.readLinkSync(`/proc/${pid}/fd/${entry.name}`));
    } catch { /* closed meanwhile */ }
  }
  return out;
}

Deno.test({
  name: "launcher: mount's server starts beside the CLI, serves the mount, keeps no socket",
  ignore: needs,
  async fn() {
    const result = await build();
    assert.equal(result.code, 0);
    if (!isLauncher(result)) return; // a compiled binary has no launcher
    const copy = await copiedAlone();
    const sandbox = await mountSandbox();
    try {
      const mounted = await copy.run(
        ["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"],
        sandbox.env,
      );
      assert.equal(mounted.code, 0, `${mounted.stderr}\n${sandbox.serverLogs()}`);
      const serverPid = Number(mounted.stdout.match(/server pid (\d+)\)$/m)?.[1]);
      assert.ok(sandbox.serverLogs().includes(LAUNCHED), sandbox.serverLogs());
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      // The server's command line is the launcher's, without the user's arguments (an image
      // reference, registry options) that would stay visible in ps for the mount's life.
      const argv = Deno.readTextFileSync(`/proc/${serverPid}/cmdline`).split("\0");
      assert.equal(argv.filter(Boolean).at(-1), "__mount-server", argv.join(" "));
      assert.deepEqual(socketsIn(copy.env.EROFS_OCI_RUNTIME_CACHE), []);
      const unmounted = await copy.run(["umount", sandbox.target], sandbox.env);
      assert.equal(unmounted.code, 0, unmounted.stderr);
      assert.deepEqual(await serversAfterExit(sandbox.runtimeDir), []);
    } finally {
      await sandbox.cleanup();
      await copy.cleanup();
    }
  },
});

Deno.test({
  name: "launcher: a mount that needs no server ends the one started for it, socket and all",
  ignore: needs,
  async fn(t) {
    const result = await build();
    assert.equal(result.code, 0);
    if (!isLauncher(result)) return;
    const copy = await copiedAlone();
    const sandbox = await mountSandbox();
    try {
      const cases: [string, string[], number][] = [
        ["--help", ["mount", "--help"], 0],
        ["a usage error", ["mount", `${FIXTURES}/basic.erofs`], 2],
        ["an image that is not there", ["mount", `${sandbox.target}.missing`, sandbox.target], 1],
        ["--foreground (its own server)", [
          "mount",
          `${sandbox.target}.missing`,
          sandbox.target,
          "--foreground",
        ], 1],
      ];
      for (const [what, args, code] of cases) {
        await t.step(what, async () => {
          const ran = await copy.run(args, sandbox.env);
          assert.equal(ran.code, code, ran.stderr);
          assert.doesNotMatch(ran.stderr, /internal error|at .*\.js/);
          assert.deepEqual(await serversAfterExit(sandbox.runtimeDir), []);
          assert.deepEqual(socketsIn(copy.env.EROFS_OCI_RUNTIME_CACHE), []);
        });
      }
    } finally {
      await sandbox.cleanup();
      await copy.cleanup();
    }
  },
});

Deno.test({
  name: "launcher: a server that cannot listen is replaced by one the CLI spawns",
  ignore: needs,
  async fn() {
    const result = await build();
    assert.equal(result.code, 0);
    if (!isLauncher(result)) return;
    // A socket path longer than sockaddr_un holds (108 bytes): the launcher's server cannot bind.
    const copy = await copiedAlone((base) => `${base}/${"d".repeat(100)}/runtime`);
    const sandbox = await mountSandbox();
    try {
      const mounted = await copy.run(
        ["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"],
        sandbox.env,
      );
      assert.equal(mounted.code, 0, `${mounted.stderr}\n${sandbox.serverLogs()}`);
      assert.ok(!sandbox.serverLogs().includes(LAUNCHED), sandbox.serverLogs());
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      assert.equal(mountServersOf(sandbox.runtimeDir).length, 1, "only the CLI's server runs");
      assert.equal((await copy.run(["umount", sandbox.target], sandbox.env)).code, 0);
    } finally {
      await sandbox.cleanup();
      await copy.cleanup();
    }
  },
});

Deno.test({
  name: "launcher: its server holds no descriptor the caller left open (flock's lock)",
  ignore: needs || requires(path("/usr/bin/flock")),
  async fn() {
    const result = await build();
    assert.equal(result.code, 0);
    if (!isLauncher(result)) return;
    const copy = await copiedAlone();
    const sandbox = await mountSandbox();
    const lock = `${sandbox.target}.lock`;
    try {
      Deno.writeTextFileSync(lock, "");
      // One lock on a low descriptor (flock(1)), one above 9 (a shell's `exec {fd}>…`).
      const script = `exec 12>"$1.high"; flock "$1" "$2" mount "$3" "$4" --backend fuse`;
      const mounted = await new Deno.Command("bash", {
        args: ["-c", script, "bash", lock, copy.program, `${FIXTURES}/basic.erofs`, sandbox.target],
        env: { ...copy.env, ...sandbox.env },
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert(mounted.success, new TextDecoder().decode(mounted.stderr));
      assert.ok(sandbox.serverLogs().includes(LAUNCHED), sandbox.serverLogs());
      const [server] = mountServersOf(sandbox.runtimeDir);
      assert(server, "the mount's server");
      const open = openFiles(server);
      assert(!open.some((target) => target.startsWith(lock)), open.join("\n"));
      assert.equal((await copy.run(["umount", sandbox.target], sandbox.env)).code, 0);
    } finally {
      try {
        Deno.removeSync(lock);
        Deno.removeSync(`${lock}.high`);
      } catch { /* not made */ }
      await sandbox.cleanup();
      await copy.cleanup();
    }
  },
});
