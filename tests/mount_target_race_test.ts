/**
 * A user who owns a parent of the mount point swaps a path component for a symlink: while
 * `mount` waits for the registry (after checking the target), and after mounting, before
 * `umount`. Root's mount must never land on, and root's umount never detach, what the symlink
 * leads to.
 */
import assert from "node:assert/strict";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";
import { assertSuccess, describe, runCli } from "./_support/cli.ts";
import { mountSandbox, mountsBelow } from "./_support/mounts.ts";
import { startRegistry } from "./_support/registry.ts";
import { startFaultProxy } from "./_support/fault_proxy.ts";
import { unmountNoFollow } from "../lib/mount/unmount_pinned.ts";
import { MountError } from "../lib/errors.ts";

const ignore = requires(root(), path("/dev/fuse"), command("docker-registry"));

async function mountTmpfs(dir: string): Promise<void> {
  const out = await new Deno.Command("mount", { args: ["-t", "tmpfs", "victim", dir] }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
}

async function umountIfMounted(dir: string): Promise<void> {
  if (mountsBelow(dir).length === 0) return;
  await new Deno.Command("umount", { args: ["-l", dir], stderr: "null" }).output();
}

Deno.test({
  name: "mount: a target swapped for a symlink while the registry answers is refused, " +
    "nothing lands on the symlink's destination",
  ignore,
  async fn() {
    const registry = await startRegistry({ auth: "none" });
    const sandbox = await mountSandbox();
    const base = sandbox.target.replace(/\/mnt$/, "");
    let seenManifest: () => void = () => {};
    const manifestRequested = new Promise<void>((resolve) => seenManifest = resolve);
    const proxy = await startFaultProxy(registry.host, [{
      name: "slow manifest",
      match: (request) => {
        if (!request.path.includes("/manifests/")) return false;
        seenManifest();
        return true;
      },
      fault: { kind: "delay", ms: 3000 },
    }]);
    try {
      assertSuccess(
        await runCli(["push", `${registry.host}/demo/basic:v1`, `${FIXTURES}/basic.erofs`], {
          timeoutMs: 120_000,
        }),
      );
      // The user's directory, holding the mount point, and what they want root to cover.
      const owned = `${base}/owned`;
      const victim = `${base}/victim`;
      Deno.mkdirSync(`${owned}/mnt`, { recursive: true });
      Deno.mkdirSync(`${victim}/mnt`, { recursive: true });
      Deno.writeTextFileSync(`${victim}/mnt/precious`, "still here");

      const mounting = runCli(
        ["mount", `${proxy.host}/demo/basic:v1`, `${owned}/mnt`, "--backend", "fuse"],
        { env: sandbox.env, timeoutMs: 120_000 },
      );
      // The target was checked before the registry was asked; swap it now.
      await manifestRequested;
      Deno.renameSync(owned, `${base}/owned.orig`);
      Deno.symlinkSync(victim, owned);
      const result = await mounting;

      assert.deepEqual(
        mountsBelow(victim),
        [],
        `nothing mounted over ${victim}\n${describe(result)}`,
      );
      assert.equal(Deno.readTextFileSync(`${victim}/mnt/precious`), "still here");
      assert.equal(result.code, 1, describe(result));
      assert.match(result.stderr, /replaced/);
      assert.deepEqual(mountsBelow(base), [], "no mount left anywhere");
      assert.deepEqual([...Deno.readDirSync(`${sandbox.runtimeDir}/mounts`)], []);
    } finally {
      await umountIfMounted(`${base}/victim/mnt`);
      await sandbox.cleanup();
      await proxy.stop();
      await registry.stop();
    }
  },
});

Deno.test({
  name: "umount: a mount point whose parent was swapped for a symlink does not detach the " +
    "mount the symlink leads to",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    const base = sandbox.target.replace(/\/mnt$/, "");
    const owned = `${base}/owned`;
    const victim = `${base}/victim`;
    try {
      Deno.mkdirSync(`${owned}/mnt`, { recursive: true });
      Deno.mkdirSync(`${victim}/mnt`, { recursive: true });
      const mounted = await runCli(
        ["mount", `${FIXTURES}/basic.erofs`, `${owned}/mnt`, "--backend", "fuse"],
        { env: sandbox.env, timeoutMs: 120_000 },
      );
      assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
      // An unrelated mount the user would like root to detach.
      await mountTmpfs(`${victim}/mnt`);
      Deno.writeTextFileSync(`${victim}/mnt/precious`, "still here");

      // A mount point cannot be renamed, but its parent can.
      Deno.renameSync(owned, `${base}/owned.moved`);
      Deno.symlinkSync(victim, owned);
      const result = await runCli(["umount", `${owned}/mnt`], {
        env: sandbox.env,
        timeoutMs: 60_000,
      });

      assert.deepEqual(
        mountsBelow(victim),
        [`${victim}/mnt`],
        `tmpfs still mounted\n${describe(result)}`,
      );
      assert.equal(Deno.readTextFileSync(`${victim}/mnt/precious`), "still here");
      // erofs-oci's own mount is found where it went, by its mount id, and unmounted there.
      assert.equal(result.code, 0, describe(result));
      assert.deepEqual(
        mountsBelow(`${base}/owned.moved`),
        [],
        `our mount left where it went\n${describe(result)}`,
      );
      assert.deepEqual(
        listTree(`${sandbox.runtimeDir}/mounts`),
        [],
        `runtime files left\n${describe(result)}`,
      );
    } finally {
      await umountIfMounted(`${victim}/mnt`);
      await umountIfMounted(`${base}/owned.moved/mnt`);
      await sandbox.cleanup();
    }
  },
});

/** Every path below `dir` (relative), so a failure shows what was left. */
function listTree(dir: string, prefix = ""): string[] {
  const found: string[] = [];
  for (const entry of Deno.readDirSync(`${dir}/${prefix}`)) {
    const name = `${prefix}${entry.name}`;
    found.push(name);
    if (entry.isDirectory) found.push(...listTree(dir, `${name}/`));
  }
  return found;
}

Deno.test({
  name:
    "mount: three mounts racing onto one directory: one wins, the others say so (no 'replaced')",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    try {
      const results = await Promise.all(
        [0, 1, 2].map(() =>
          runCli(["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"], {
            env: sandbox.env,
            timeoutMs: 60_000,
          })
        ),
      );
      const won = results.filter((r) => r.code === 0);
      assert.equal(won.length, 1, results.map(describe).join("\n"));
      for (const lost of results.filter((r) => r.code !== 0)) {
        assert.equal(lost.code, 1, describe(lost));
        // A race between two mounts is no symlink attack: the message must not say one was.
        assert.doesNotMatch(lost.stderr, /replaced/, describe(lost));
        assert.match(lost.stderr, /already mounted by erofs-oci|was mounted on while/);
      }
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
      assert.deepEqual(mountsBelow(sandbox.target), []);
      assert.deepEqual(mountsBelow(sandbox.runtimeDir), []);
    } finally {
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "umount by path: a directory on the way that is now a symlink is refused as such, " +
    "not taken for 'nothing mounted here'",
  ignore: requires(root()),
  async fn() {
    const base = await Deno.makeTempDir({ prefix: "erofs-oci-umount-symlink-" });
    const victim = `${base}/victim`;
    try {
      Deno.mkdirSync(`${victim}/mnt`, { recursive: true });
      await mountTmpfs(`${victim}/mnt`);
      Deno.symlinkSync(victim, `${base}/owned`);
      // The last directory of the walk is the symlink: openat2 says ENOTDIR, not ELOOP.
      await assert.rejects(
        () => unmountNoFollow(`${base}/owned/mnt`),
        (e: unknown) => e instanceof MountError && /now leads through a symlink/.test(e.message),
      );
      assert.deepEqual(mountsBelow(victim), [`${victim}/mnt`]);
    } finally {
      await umountIfMounted(`${victim}/mnt`);
      await Deno.remove(base, { recursive: true });
    }
  },
});
