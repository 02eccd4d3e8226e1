/**
 * Small files' data goes through one buffered write per 1 MiB (data_batch.ts): their bytes come
 * back exactly (fsck.erofs 1.9.3 --extract), consecutive files in one batch stay in their own
 * blocks, and all-zero blocks among them stay holes of the image as copy_file_range left them.
 */
import assert from "node:assert/strict";
import { path as requirePath, PEER_BIN, requires } from "./_support/requires.ts";
import { runOk } from "./_support/erofs_tree.ts";
import { scanDirectory } from "../lib/erofs/writer/from_dir.ts";
import { buildImage } from "../lib/erofs/writer/build_image.ts";

Deno.test({
  name: "build batch: small files' bytes exact; 16 MiB of zero small files stay holes",
  ignore: requires(requirePath(`${PEER_BIN}/fsck.erofs`, "fsck.erofs 1.9.3")),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-build-batch-" });
    try {
      const src = `${work}/src`;
      await Deno.mkdir(src);
      let seed = 3;
      const expected = new Map<string, Uint8Array>();
      for (let i = 0; i < 300; i++) {
        seed = (seed * 1103515245 + 12345) % 2 ** 31;
        // 1 byte .. 250 KiB, some with a zero middle block, odd tails.
        const bytes = new Uint8Array(1 + (seed % (250 << 10)));
        for (let j = 0; j < bytes.length; j += 61) bytes[j] = (i + j) & 0xff || 1;
        if (bytes.length > 3 * 4096) bytes.fill(0, 4096, 8192);
        expected.set(`f${i}`, bytes);
        await Deno.writeFile(`${src}/f${i}`, bytes);
      }
      // 64 files of 256 KiB zeros (written densely): 16 MiB that must not take disk space.
      for (let i = 0; i < 64; i++) await Deno.writeFile(`${src}/z${i}`, new Uint8Array(256 << 10));
      const { root } = scanDirectory(src);
      const image = `${work}/out.erofs`;
      const result = buildImage(root, image, { buildTimeSec: 0 });
      const allocated = (await Deno.stat(image)).blocks! * 512;
      assert.ok(result.sizeBytes > 16 << 20, `${result.sizeBytes} bytes`);
      assert.ok(
        allocated < result.sizeBytes - (15 << 20),
        `${allocated} bytes allocated of ${result.sizeBytes}: zero blocks were written`,
      );
      await runOk(`${PEER_BIN}/fsck.erofs`, [`--extract=${work}/out`, image]);
      for (const [name, bytes] of expected) {
        assert.deepEqual(await Deno.readFile(`${work}/out/${name}`), bytes, name);
      }
      for (let i = 0; i < 64; i++) {
        assert.deepEqual(await Deno.readFile(`${work}/out/z${i}`), new Uint8Array(256 << 10));
      }
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});
