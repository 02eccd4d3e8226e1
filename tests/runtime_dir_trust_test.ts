/**
 * A runtime directory another user made first (EROFS_OCI_RUNTIME_DIR under /tmp): its mount
 * records are not acted on. A helper planted a record there naming a tmpfs of root's, and
 * root's `umount --all` unmounted it.
 */
import assert from "node:assert/strict";
import { assertCliError, runCli } from "./_support/cli.ts";
import { FIXTURES, requires, root } from "./_support/requires.ts";

Deno.test({
  name: "a runtime dir another user can change: list and umount --all refuse it, one line",
  ignore: requires(root()),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-runtime-trust-" });
    try {
      await Deno.chmod(work, 0o755);
      await Deno.mkdir(`${work}/run/mounts/fake`, { recursive: true });
      await Deno.writeTextFile(`${work}/run/mounts/fake/state.json`, "{}");
      const chowned = await new Deno.Command("chown", {
        args: ["-R", "65534:65534", `${work}/run`],
      }).output();
      assert(chowned.success);
      const env = { EROFS_OCI_RUNTIME_DIR: `${work}/run` };
      for (const args of [["list"], ["umount", "--all"]]) {
        const result = await runCli(args, { env });
        assertCliError(result, 1, /runtime directory .*\/run is not root's alone: .*uid 65534/);
      }
      // Root's own (made by erofs-oci, or given back to root) is used.
      await Deno.chown(`${work}/run`, 0, 0);
      await Deno.chmod(`${work}/run`, 0o700);
      const listed = await runCli(["list"], { env });
      assert.doesNotMatch(listed.stderr, /not root's alone/);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test({
  name: "a runtime dir too long for a mount's control socket: refused before anything starts",
  ignore: requires(root()),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-runtime-long-" });
    try {
      await Deno.mkdir(`${work}/mnt`);
      // mounts/ID/control.sock adds 29 bytes: past 107 in all, bind(2) cannot take the path.
      const runtime = `${work}/${"r".repeat(Math.max(1, 79 - work.length - 1))}`;
      const result = await runCli(
        ["mount", `${FIXTURES}/basic.erofs`, `${work}/mnt`, "--backend", "fuse"],
        { env: { EROFS_OCI_RUNTIME_DIR: runtime } },
      );
      // It was the server's "path must be shorter than SUN_LEN", naming nothing.
      assertCliError(
        result,
        1,
        /EROFS_OCI_RUNTIME_DIR .* is too long: a mount's control socket under it would be 108 bytes/,
      );
      assert.deepEqual([...Deno.readDirSync(work)].map((e) => e.name), ["mnt"], "nothing made");
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});
