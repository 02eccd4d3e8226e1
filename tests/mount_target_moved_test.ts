/**
 * A user renames a parent of their mount point after `mount` last checked it, before mount(2):
 * the mount goes onto the pinned directory, now elsewhere. `mount` must find it there (by what
 * it mounted, not by the path it checked), say where it is, record it with its mount id, and
 * `umount` of the new path must undo it all. It reported the old path and recorded no mount id:
 * `umount` then refused the old path ("leads through a symlink") or, once an empty directory
 * was back there, said "unmounted" and left the EROFS mounted.
 */
import assert from "node:assert/strict";
import { FIXTURES, path, REPO_ROOT, requires, root } from "./_support/requires.ts";
import { describe, runCli } from "./_support/cli.ts";
import {
  expectedManifest,
  killMountServersOf,
  manifestOf,
  mountSandbox,
  mountsBelow,
} from "./_support/mounts.ts";
import { HoldPoint } from "./_support/hold.ts";

async function umountIfMounted(dir: string): Promise<void> {
  if (mountsBelow(dir).length === 0) return;
  await new Deno.Command("umount", { args: ["-l", dir], stderr: "null" }).output();
}

for (const overlay of [false, true]) {
  Deno.test({
    name: `mount: a target whose parent is renamed right before mount(2) is recorded where it ` +
      `went (${overlay ? "overlay with --upper" : "one layer"})`,
    ignore: requires(root(), path("/dev/fuse")),
    async fn() {
      const sandbox = await mountSandbox();
      const base = sandbox.target.replace(/\/mnt$/, "");
      const owned = `${base}/owned`, moved = `${base}/owned.moved`;
      using hold = new HoldPoint("mount-target-rechecked", `${sandbox.runtimeDir}-hold`);
      Deno.mkdirSync(`${owned}/mnt`, { recursive: true });
      const upperArgs = overlay ? ["--upper", `${base}/rw/upper`, "--work", `${base}/rw/work`] : [];
      if (overlay) {
        Deno.mkdirSync(`${base}/rw/upper`, { recursive: true, mode: 0o700 });
        Deno.mkdirSync(`${base}/rw/work`, { recursive: true, mode: 0o700 });
        Deno.chmodSync(`${base}/rw`, 0o700);
      }
      const mount = new Deno.Command(`${REPO_ROOT}/scripts/erofs-oci-dev`, {
        args: [
          "mount",
          `${FIXTURES}/basic.erofs`,
          `${owned}/mnt`,
          "--backend",
          "fuse",
          ...upperArgs,
        ],
        env: { ...sandbox.env, ...hold.env },
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const output = mount.output();
      try {
        await hold.reached("mount to recheck its target");
        Deno.renameSync(owned, moved);
        hold.release();
        const done = await output;
        const stderr = new TextDecoder().decode(done.stderr);
        assert.equal(done.code, 0, stderr);
        assert.match(stderr, new RegExp(`mounted at ${moved}/mnt`), stderr);
        assert.deepEqual(mountsBelow(moved), [`${moved}/mnt`]);
        // Below the root: an overlay's root is its upper directory's.
        const belowRoot = (manifest: string) => manifest.split("\n").slice(1).join("\n");
        assert.equal(
          belowRoot(await manifestOf(`${moved}/mnt`)),
          belowRoot(expectedManifest("basic.txt")),
        );

        const list = await runCli(["list", "--json"], { env: sandbox.env, timeoutMs: 60_000 });
        assert.equal(list.code, 0, describe(list));
        const [state] = JSON.parse(list.stdout);
        assert.equal(state.target, `${moved}/mnt`, list.stdout);
        // A writable mount's --upper and --work are shown (they are not under DIR).
        assert.deepEqual(
          [state.upper, state.work],
          overlay ? [`${base}/rw/upper`, `${base}/rw/work`] : [undefined, undefined],
          list.stdout,
        );
        const table = await runCli(["list"], { env: sandbox.env, timeoutMs: 60_000 });
        assert.equal(table.code, 0, describe(table));
        assert.equal(table.stdout.includes(`upper=${base}/rw/upper`), overlay, table.stdout);

        const umount = await runCli(["umount", `${moved}/mnt`], {
          env: sandbox.env,
          timeoutMs: 60_000,
        });
        assert.equal(umount.code, 0, describe(umount));
        assert.deepEqual(mountsBelow(base), [], "nothing left mounted");
        assert.deepEqual([...Deno.readDirSync(`${sandbox.runtimeDir}/mounts`)], []);
      } finally {
        try {
          mount.kill("SIGKILL");
        } catch { /* ended */ }
        await output.catch(() => {});
        await umountIfMounted(`${moved}/mnt`);
        await umountIfMounted(`${owned}/mnt`);
        killMountServersOf(sandbox.runtimeDir);
        await sandbox.cleanup();
      }
    },
  });
}
