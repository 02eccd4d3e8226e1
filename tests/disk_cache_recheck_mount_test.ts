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
