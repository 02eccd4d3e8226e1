/**
 * A byte flipped in the disk cache's data file between two mounts (FUSE backend, a real
 * docker-registry, an image pushed with its chunk table): the remount checks the kept bytes
 * against the table, fetches the damaged part again and reads the right bytes — the superblock
 * included, which the mount itself reads before any table is there.
 */
import assert from "node:assert/strict";
import { path, requires, root } from "./_support/requires.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { mountSandbox } from "./_support/mounts.ts";
import { MKFS, pushWithTables, setup, SMALL_TEXT } from "./_support/verify_image.ts";
import { flipByte } from "./_support/flip_byte.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE } from "./_support/oci_fixtures.ts";

const ignore = requires(root(), path("/dev/fuse"), path(MKFS, "mkfs.erofs 1.9.3"));

Deno.test({
  name: "disk cache: bytes damaged in the cache file are checked on remount and fetched again",
  ignore,
  async fn() {
    await using s = await setup();
    const layer = await pushWithTables(s, "rc/app", 60_000);
    const sandbox = await mountSandbox();
    const env = sandbox.env;
    const cli = (args: string[]) => runCli(args, { env, timeoutMs: 60_000 });
    const mount = async () =>
      assertSuccess(
        await cli([
          "mount",
          `${s.registry.host}/rc/app:v1`,
          sandbox.target,
          "--plain-http",
          "--backend",
          "fuse",
        ]),
      );
    try {
      await mount();
      assert.deepEqual(await Deno.readFile(`${sandbox.target}/big.bin`), s.big);
      assertSuccess(await cli(["umount", sandbox.target]));

      const blobs = `${env.EROFS_OCI_CACHE_DIR}/blobs`;
      const stem = layer.digest.replace(":", "-");
      const data = [...Deno.readDirSync(blobs)]
        .filter((e) => e.name.startsWith(stem) && e.name.endsWith(".data"));
      assert.equal(data.length, 1, JSON.stringify(data));
      flipByte(`${blobs}/${data[0].name}`, s.flipOffset); // inside big.bin
      flipByte(`${blobs}/${data[0].name}`, 1024); // the superblock's magic

      await mount();
      assert.equal(await Deno.readTextFile(`${sandbox.target}/small.txt`), SMALL_TEXT);
      assert.deepEqual(await Deno.readFile(`${sandbox.target}/big.bin`), s.big);
      assert.match(sandbox.serverLogs(), /do not match the layer's chunk table/);
      assertSuccess(await cli(["umount", sandbox.target]));
    } finally {
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "disk cache: a damaged cached head of a layer without a table is dropped and fetched again",
  ignore,
  async fn() {
    await using s = await setup();
    // Pushed by another client: no chunk table, so nothing checks the kept bytes but the head.
    const pushed = await pushImage(s.registry, "rc/raw", "v1", [
      { bytes: s.image, mediaType: EROFS_MEDIA_TYPE },
    ]);
    const sandbox = await mountSandbox();
    const env = sandbox.env;
    const mount = async () => {
      const mounted = await runCli([
        "mount",
        `${s.registry.host}/rc/raw:v1`,
        sandbox.target,
        "--plain-http",
        "--backend",
        "fuse",
      ], { env, timeoutMs: 60_000 });
      assertSuccess(mounted);
      return mounted;
    };
    try {
      await mount();
      assert.equal(await Deno.readTextFile(`${sandbox.target}/small.txt`), SMALL_TEXT);
      assertSuccess(await runCli(["umount", sandbox.target], { env }));
      const blobs = `${env.EROFS_OCI_CACHE_DIR}/blobs`;
      const stem = pushed.layers[0].digest.replace(":", "-");
      const data = [...Deno.readDirSync(blobs)]
        .filter((e) => e.name.startsWith(stem) && e.name.endsWith(".data"));
      assert.equal(data.length, 1, JSON.stringify(data));
      flipByte(`${blobs}/${data[0].name}`, 1024); // the superblock's magic

      const again = await mount();
      assert.match(again.stderr, /not the registry's \(damaged on disk\?\); dropped/);
      assert.equal(await Deno.readTextFile(`${sandbox.target}/small.txt`), SMALL_TEXT);
      assertSuccess(await runCli(["umount", sandbox.target], { env }));
    } finally {
      await sandbox.cleanup();
    }
  },
});
