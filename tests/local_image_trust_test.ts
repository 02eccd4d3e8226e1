/**
 * A local image is served as the file `mount` checked, never through another user's symlink:
 * `serve FILE` followed any user's link (a 0600 image of root's was served to them), and the
 * mount server opened the checked path again by name, so a user who owns a directory on the
 * way could put a link to a file of root's there in between (a helper's repro, ~1 try in 10).
 */
import assert from "node:assert/strict";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { mountSandbox } from "./_support/mounts.ts";
import { openLayerSource } from "../lib/mount/layer_source.ts";
import { LayoutFile } from "../lib/oci/layout_file.ts";

const NOBODY = 65534;

Deno.test({
  name: "serve FILE: another user's symlink to root's image is refused in one line",
  ignore: requires(root(), path(FIXTURES)),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-local-trust-" });
    try {
      Deno.mkdirSync(`${work}/secret`, { mode: 0o700 });
      Deno.copyFileSync(`${FIXTURES}/basic.erofs`, `${work}/secret/image.erofs`);
      Deno.chmodSync(`${work}/secret/image.erofs`, 0o600);
      Deno.mkdirSync(`${work}/shared`);
      Deno.chmodSync(`${work}/shared`, 0o1777);
      Deno.symlinkSync(`${work}/secret/image.erofs`, `${work}/shared/link.erofs`);
      // chown -h: Deno.chownSync follows the link (it would give the image away instead).
      const chowned = await new Deno.Command("chown", {
        args: ["-h", `${NOBODY}:${NOBODY}`, `${work}/shared/link.erofs`],
      }).output();
      assert.ok(chowned.success);
      const served = await runCli(
        ["serve", `${work}/shared/link.erofs`, "--listen", `unix:${work}/nbd.sock`],
        { timeoutMs: 20_000 },
      );
      assert.equal(served.code, 1, served.stderr);
      assert.match(served.stderr, /^erofs-oci: .*link\.erofs is a symlink of uid 65534/);
      assert.equal(served.stderr.trim().split("\n").length <= 2, true, served.stderr);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "mount server: a local image replaced after mount checked it, or reached through a symlink since, is not served",
  ignore: requires(path(FIXTURES)),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-local-trust-" });
    try {
      Deno.mkdirSync(`${work}/dir`);
      const image = `${work}/dir/image.erofs`;
      Deno.copyFileSync(`${FIXTURES}/basic.erofs`, image);
      const checked = LayoutFile.open(image, "image file");
      const spec = {
        kind: "local" as const,
        path: image,
        sizeBytes: checked.size,
        fileId: checked.fileId,
      };
      checked.close();
      const opened = await openLayerSource(spec);
      await opened.close?.();

      // Another file of the same size in its place.
      Deno.copyFileSync(`${FIXTURES}/basic.erofs`, `${work}/other.erofs`);
      Deno.renameSync(`${work}/other.erofs`, image);
      await assert.rejects(openLayerSource(spec), /not the file the mount checked/);

      // A directory on the way swapped for a symlink (to where a file of that name is).
      Deno.renameSync(`${work}/dir`, `${work}/real`);
      Deno.symlinkSync(`${work}/real`, `${work}/dir`);
      await assert.rejects(openLayerSource({ ...spec, fileId: undefined }));
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test({
  name: "serve of a FIFO is refused in one line (it hung in the open)",
  ignore: requires(root()),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-local-trust-" });
    try {
      const made = await new Deno.Command("mkfifo", { args: [`${work}/fifo`] }).output();
      assert.ok(made.success);
      const served = await runCli(["serve", `${work}/fifo`, "--listen", `unix:${work}/s.sock`], {
        timeoutMs: 20_000,
      });
      assert.equal(served.timedOut, false, "not hung");
      assert.equal(served.code, 1, served.stderr);
      assert.match(served.stderr, /^erofs-oci: .*fifo: not a regular file or block device\n$/);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test({
  name: "mount FILE whose inode number is past 2^53 (overlayfs xino) is mounted",
  ignore: requires(root(), path("/dev/fuse"), path(FIXTURES)),
  async fn() {
    const sandbox = await mountSandbox();
    const base = sandbox.target.replace(/\/mnt$/, "");
    const run = (cmd: string, args: string[]) => new Deno.Command(cmd, { args }).output();
    const mounted: string[] = [];
    try {
      for (const dir of ["lower", "upper", "merged"]) Deno.mkdirSync(`${base}/${dir}`);
      for (const dir of ["lower", "upper"]) {
        assert.ok(
          (await run("mount", ["-t", "tmpfs", "-o", "size=16m", "tmpfs", `${base}/${dir}`]))
            .success,
        );
        mounted.unshift(`${base}/${dir}`);
      }
      Deno.mkdirSync(`${base}/upper/u`);
      Deno.mkdirSync(`${base}/upper/w`);
      Deno.copyFileSync(`${FIXTURES}/basic.erofs`, `${base}/lower/basic.erofs`);
      const options =
        `lowerdir=${base}/lower,upperdir=${base}/upper/u,workdir=${base}/upper/w,xino=on`;
      assert.ok(
        (await run("mount", ["-t", "overlay", "overlay", "-o", options, `${base}/merged`])).success,
      );
      mounted.unshift(`${base}/merged`);
      const image = `${base}/merged/basic.erofs`;
      const ino = (await Deno.stat(image)).ino!;
      assert.ok(ino > Number.MAX_SAFE_INTEGER, `inode ${ino}: xino gives one past 2^53`);
      assertSuccess(
        await runCli(["mount", image, sandbox.target, "--backend", "fuse"], {
          env: sandbox.env,
          timeoutMs: 60_000,
        }),
      );
      assert.ok([...Deno.readDirSync(sandbox.target)].length > 0);
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    } finally {
      await sandbox.cleanup();
      for (const point of mounted) await run("umount", ["-l", point]);
    }
  },
});
