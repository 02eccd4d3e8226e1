/**
 * The state, recovery and disk cache directories, as root, only where no other user can change
 * them or a directory above them. A helper's repro: a user who owned EROFS_OCI_STATE_DIR
 * planted an "indexed here" tar index whose meta image was another tar's, and root's
 * `mount --require-verified T.tar` served that tar's bytes; a user owning a parent can as
 * well rename root's 0700 directories away and put their own in their place.
 */
import assert from "node:assert/strict";
import { assertCliError, assertSuccess, describe, runCli } from "./_support/cli.ts";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import { mountSandbox, mountsBelow } from "./_support/mounts.ts";
import { DiskCache } from "../lib/source/disk_cache.ts";

const NOBODY = 65534;

Deno.test({
  name: "a state dir another user can change: mount, reattach and cache refuse it, one line",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    try {
      const state = sandbox.env.EROFS_OCI_STATE_DIR;
      Deno.mkdirSync(`${state}/indexed-here`, { recursive: true, mode: 0o755 });
      Deno.chownSync(state, NOBODY, NOBODY);
      const refused =
        /state directory .*\/state is not root's alone: .*\/state is owned by uid 65534/;
      const mount = ["mount", "--require-verified", `${FIXTURES}/layer.tar`, sandbox.target];
      for (const args of [[...mount, "--backend", "fuse"], ["cache"], ["reattach", "--all"]]) {
        const result = await runCli(args, { env: sandbox.env });
        assertCliError(result, 1, refused);
        assert.match(result.stderr, /EROFS_OCI_STATE_DIR/, describe(result));
      }
      assert.deepEqual(mountsBelow(sandbox.target), []);

      // Root's, 0700, but in a directory anyone may write (no sticky bit): anyone could
      // rename it away.
      const open = `${sandbox.runtimeDir}-open`;
      Deno.mkdirSync(`${open}/state`, { recursive: true, mode: 0o700 });
      Deno.chmodSync(open, 0o777);
      try {
        assertCliError(
          await runCli(["cache"], {
            env: { ...sandbox.env, EROFS_OCI_STATE_DIR: `${open}/state` },
          }),
          1,
          /state directory .*-open\/state is not root's alone: .*-open is writable by others/,
        );
      } finally {
        Deno.removeSync(open, { recursive: true });
      }

      // Group-writable: refused when the group is another user's, used when it is root's
      // (only root is in group 0).
      Deno.chownSync(state, 0, NOBODY);
      Deno.chmodSync(state, 0o775);
      assertCliError(
        await runCli(["cache"], { env: sandbox.env }),
        1,
        /state directory .*\/state is not root's alone: .*\/state is writable by others/,
      );
      Deno.chownSync(state, 0, 0);
      const groupRoot = await runCli(["cache"], { env: sandbox.env });
      assertSuccess(groupRoot);
      assert.doesNotMatch(groupRoot.stderr, /not root's alone/);

      // Given back to root alone, it is used.
      Deno.chmodSync(state, 0o700);
      const listed = await runCli(["cache"], { env: sandbox.env });
      assertSuccess(listed);
      assert.doesNotMatch(listed.stderr, /not root's alone/);
    } finally {
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "a recovery dir below a directory anyone may write: umount unmounts, prunes nothing",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    const open = `${sandbox.runtimeDir}-open`;
    try {
      assertSuccess(
        await runCli(["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"], {
          env: sandbox.env,
        }),
      );
      // An index copy nothing names: pruned after the unmount, unless the recovery files
      // (which would name it) are another user's to choose.
      const unnamed = `${sandbox.env.EROFS_OCI_STATE_DIR}/index/sha256-${"ab".repeat(32)}`;
      Deno.mkdirSync(unnamed, { recursive: true, mode: 0o700 });
      Deno.mkdirSync(`${open}/nbd`, { recursive: true, mode: 0o700 });
      Deno.chmodSync(open, 0o777);
      const env = { ...sandbox.env, EROFS_OCI_RECOVERY_DIR: `${open}/nbd` };
      const result = await runCli(["umount", sandbox.target], { env });
      assertSuccess(result);
      assert.match(
        result.stderr,
        /warning: nothing pruned: recovery directory .*-open\/nbd is not root's alone: .*-open is writable by others/,
        describe(result),
      );
      assert.deepEqual(mountsBelow(sandbox.target), []);
      assert.ok(Deno.statSync(unnamed).isDirectory);
    } finally {
      await Deno.remove(open, { recursive: true }).catch(() => {});
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "a disk cache below a directory anyone may write: memory only for mounts, cache refuses",
  ignore: requires(root()),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-cache-trust-" });
    try {
      const dir = `${work}/open/cache`;
      Deno.mkdirSync(`${dir}/blobs`, { recursive: true, mode: 0o700 });
      Deno.chmodSync(`${work}/open`, 0o777);
      const warnings: string[] = [];
      assert.equal(
        DiskCache.open({ dir, onWarning: (message) => warnings.push(message) }),
        undefined,
      );
      assert.equal(warnings.length, 1);
      assert.match(
        warnings[0],
        /^disk cache .*\/open\/cache unusable \(.*\/open is writable by others: .*EROFS_OCI_CACHE_DIR.*\); keeping the memory cache only$/,
      );
      assertCliError(
        await runCli(["cache"], {
          env: { EROFS_OCI_CACHE_DIR: dir, EROFS_OCI_STATE_DIR: `${work}/state` },
        }),
        1,
        /disk cache .*\/open\/cache unusable \(.*\/open is writable by others/,
      );
      // A parent owned by another user, not writable by others: the same.
      Deno.chmodSync(`${work}/open`, 0o755);
      Deno.chownSync(`${work}/open`, NOBODY, NOBODY);
      warnings.length = 0;
      assert.equal(
        DiskCache.open({ dir, onWarning: (message) => warnings.push(message) }),
        undefined,
      );
      assert.match(warnings[0], /\/open is owned by uid 65534/);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "a state dir through a symlink that leads nowhere now: cache refuses it in one line, umount unmounts and prunes nothing",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    const link = `${sandbox.runtimeDir}-state-link`;
    try {
      assertSuccess(
        await runCli(["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"], {
          env: sandbox.env,
        }),
      );
      // Another user's link (in /tmp) flipped between nowhere and root's state dir: where it
      // led at the check was not where the prune then removed things.
      Deno.symlinkSync(`${link}-nowhere`, link);
      const env = { ...sandbox.env, EROFS_OCI_STATE_DIR: link };
      const refusal =
        /state directory .*-state-link leads through the symlink .*-state-link, which does not lead to a directory now/;
      assertCliError(await runCli(["cache"], { env }), 1, refusal);
      const result = await runCli(["umount", sandbox.target], { env });
      assertSuccess(result);
      assert.match(result.stderr, /warning: nothing pruned: state directory/, describe(result));
      assert.deepEqual(mountsBelow(sandbox.target), []);
    } finally {
      await Deno.remove(link).catch(() => {});
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name:
    "records dirs: a dangling link refused before mkdir (was an internal error); a relative one not made yet is not checked against /",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    const work = `${sandbox.runtimeDir}-rel`;
    try {
      Deno.mkdirSync(`${work}/real`, { recursive: true, mode: 0o700 });
      Deno.symlinkSync(`${work}/nowhere`, `${work}/dangling`);
      const mounted = await runCli(["mount", `${FIXTURES}/basic.erofs`, sandbox.target], {
        env: { ...sandbox.env, EROFS_OCI_STATE_DIR: `${work}/dangling` },
      });
      assertCliError(mounted, 1, /state directory .*dangling leads through the symlink/);
      assert.deepEqual(mountsBelow(sandbox.target), []);
      // `bin` a symlink to a directory, as /bin is: the relative path is taken from the cwd.
      Deno.symlinkSync(`${work}/real`, `${work}/bin`);
      const listed = await runCli(["cache"], {
        env: { ...sandbox.env, EROFS_OCI_STATE_DIR: "bin/state" },
        cwd: work,
      });
      assertSuccess(listed);
    } finally {
      await Deno.remove(work, { recursive: true }).catch(() => {});
      await sandbox.cleanup();
    }
  },
});
