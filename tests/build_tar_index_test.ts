/**
 * `erofs-oci build --tar-index`: a metadata-only image whose files point into the tar, laid
 * out as `mkfs.erofs --tar=i` does (512-byte blocks, device table with the tar as device 1,
 * one chunk per file at the tar offset of its data). Checked against the fixtures the peer
 * made: same superblock/device fields and chunk indexes, fsck.erofs with the tar as device,
 * and kernel mounts of [meta][tar] as one file and of the meta with the tar as `device=`.
 */
import assert from "node:assert/strict";
import { command, FIXTURES, path, PEER_BIN, requires, root } from "./_support/requires.ts";
import { runCli } from "./_support/cli.ts";
import { run, runOk, sparseTar, withMountedImage } from "./_support/erofs_tree.ts";
import { checkErofsSuperblock } from "../lib/erofs/superblock.ts";

const ignore = requires(
  root(),
  command("python3"),
  command("losetup"),
  path(`${PEER_BIN}/fsck.erofs`, "fsck.erofs 1.9.3"),
  path(`${FIXTURES}/layer.meta.erofs`, "fixtures"),
);

function expected(name: string): string[] {
  // Tar roots are 0755 here, 0777 in mkfs.erofs (see build_tar_test.ts).
  return Deno.readTextFileSync(`${FIXTURES}/expected/${name}`).trimEnd().split("\n")
    .map((line) => line.startsWith(".\td\t0777\t") ? line.replace("\t0777\t", "\t0755\t") : line);
}

async function manifest(dir: string): Promise<string[]> {
  return (await runOk("python3", [`${FIXTURES}/manifest.py`, dir])).trimEnd().split("\n");
}

/** inspect_erofs.py's chunk lines per path, without the inode location (ours differs). */
async function chunkIndexes(image: string, paths: string[]): Promise<string[]> {
  const out = await runOk("python3", [`${FIXTURES}/inspect_erofs.py`, image, ...paths]);
  return out.split("\n").filter((line) => line.includes("chunk 0:"))
    .map((line) => line.replace(/index@\d+: /, ""));
}

Deno.test({
  name: "build --tar-index: same device table and chunk indexes as mkfs.erofs --tar=i; mounts",
  ignore,
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-build-tarindex-" });
    let loop = "";
    try {
      const meta = `${work}/meta.erofs`;
      const built = await runCli([
        "build",
        "--tar-index",
        `${FIXTURES}/layer.tar.gz`,
        "-o",
        meta,
        "--timestamp",
        "1700000000",
      ]);
      assert.equal(built.code, 0, built.stderr);
      const ours = checkErofsSuperblock(Deno.readFileSync(meta));
      const peer = checkErofsSuperblock(Deno.readFileSync(`${FIXTURES}/layer.meta.erofs`));
      assert.equal(ours.blockSizeBytes, 512);
      assert.equal(ours.extraDevices, 1);
      assert.equal(ours.featureIncompat, peer.featureIncompat);
      assert.equal(ours.blocks * 512, Deno.statSync(meta).size);
      const slot = (bytes: Uint8Array) => {
        const v = new DataView(bytes.buffer, bytes.byteOffset);
        return { blocks: v.getUint32(1152 + 64, true), mapped: v.getUint32(1152 + 68, true) };
      };
      const oursSlot = slot(Deno.readFileSync(meta));
      assert.equal(oursSlot.blocks, slot(Deno.readFileSync(`${FIXTURES}/layer.meta.erofs`)).blocks);
      assert.equal(oursSlot.mapped, ours.blocks);
      const paths = [
        "/big-1m3.bin",
        "/f4095.bin",
        "/f4097.bin",
        "/hardlink-f4097.bin",
        "/one.bin",
        "/lorem.txt",
        "/xattr.txt",
        "/dir/sub/deep/more/leaf.bin",
      ];
      assert.deepEqual(
        await chunkIndexes(meta, paths),
        await chunkIndexes(`${FIXTURES}/layer.meta.erofs`, paths),
      );

      const fsck = await run(`${PEER_BIN}/fsck.erofs`, [
        `--device=${FIXTURES}/layer.tar`,
        `--extract=${work}/x`,
        meta,
      ]);
      assert.equal(fsck.code, 0, fsck.stdout + fsck.stderr);
      assert.equal(
        (await runOk("sha256sum", [`${work}/x/big-1m3.bin`])).split(" ")[0],
        (await runOk("python3", [
          "-c",
          "import sys;print([l.split('\\t')[7] for l in open(sys.argv[1]) if l.startswith('big-1m3.bin')][0])",
          `${FIXTURES}/expected/layer.meta.txt`,
        ])).trim(),
      );

      // (a) one file [meta][tar]
      Deno.writeFileSync(`${work}/combined`, Deno.readFileSync(meta));
      Deno.writeFileSync(`${work}/combined`, Deno.readFileSync(`${FIXTURES}/layer.tar`), {
        append: true,
      });
      assert.deepEqual(
        await withMountedImage(`${work}/combined`, manifest, "ro"),
        expected("layer.meta.txt"),
      );
      // (b) the tar as extra device
      loop = (await runOk("losetup", ["-r", "-f", "--show", `${FIXTURES}/layer.tar`])).trim();
      assert.deepEqual(
        await withMountedImage(meta, manifest, `ro,device=${loop}`),
        expected("layer.meta.txt"),
      );
    } finally {
      if (loop) await run("losetup", ["-d", loop]);
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test({
  name: "build --tar-index: the big fixture (multi-MiB chunks) reads back exactly; sparse refused",
  ignore,
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-build-tarindex-" });
    try {
      const meta = `${work}/big.meta.erofs`;
      const built = await runCli([
        "build",
        "--tar-index",
        `${FIXTURES}/big.tar.gz`,
        "-o",
        meta,
        "--timestamp",
        "1700000000",
      ]);
      assert.equal(built.code, 0, built.stderr);
      const paths = ["/a-text.txt", "/b-random.bin", "/small/c.txt", "/small/d.bin"];
      assert.deepEqual(
        await chunkIndexes(meta, paths),
        await chunkIndexes(`${FIXTURES}/big.meta.erofs`, paths),
      );
      await runOk("sh", [
        "-c",
        `cat "$0" > "$2" && gzip -dc "$1" >> "$2"`,
        meta,
        `${FIXTURES}/big.tar.gz`,
        `${work}/combined`,
      ]);
      assert.deepEqual(
        await withMountedImage(`${work}/combined`, manifest, "ro"),
        expected("big.meta.txt"),
      );

      await sparseTar(work, 8 << 20, 0, new Uint8Array([1]));
      const refused = await runCli([
        "build",
        "--tar-index",
        `${work}/sparse.tar`,
        "-o",
        `${work}/s.erofs`,
      ]);
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, /sparse: a tar index cannot point into it/);
      assert.ok(!(await Deno.stat(`${work}/s.erofs`).catch(() => undefined)));
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});
