/**
 * The metadata walk's read-ahead on images made by `erofs-oci build` (all metadata packed at the
 * front): the directory tree comes in one or two reads instead of one per tree level, holding
 * the same pages; on an image of the same tree made by mkfs.erofs 1.9.3 (metadata spread
 * between file data) only the walk's first read is longer (1 MiB): no further windows.
 */
import assert from "node:assert/strict";
import { path as requirePath, PEER_BIN, requires } from "./_support/requires.ts";
import { runOk } from "./_support/erofs_tree.ts";
import { type MetadataWalkResult, walkErofsMetadata } from "../lib/erofs/metadata_walk.ts";
import { scanDirectory } from "../lib/erofs/writer/from_dir.ts";
import { buildImage } from "../lib/erofs/writer/build_image.ts";
import { type BuildNode, newNode } from "../lib/erofs/writer/tree.ts";

const LEVELS = 12;

/** A tree LEVELS deep: at each level 6 directories of 8 files (1..9 KiB) and the next level. */
async function makeTree(root: string): Promise<void> {
  let dir = root;
  await Deno.mkdir(dir);
  let seed = 1;
  for (let level = 0; level < LEVELS; level++) {
    for (let d = 0; d < 6; d++) {
      const sub = `${dir}/dir${d}`;
      await Deno.mkdir(sub);
      for (let f = 0; f < 8; f++) {
        seed = (seed * 1103515245 + 12345) % 2 ** 31;
        const bytes = new Uint8Array(1024 + (seed % 8192)).fill(f + level);
        await Deno.writeFile(`${sub}/file${f}.bin`, bytes);
      }
    }
    dir = `${dir}/next`;
    await Deno.mkdir(dir);
  }
}

async function walk(image: string, readAheadBytes?: number) {
  const bytes = await Deno.readFile(image);
  let reads = 0;
  const result = await walkErofsMetadata(
    (offset, length) => {
      reads++;
      return Promise.resolve(bytes.slice(offset, offset + length));
    },
    bytes.length,
    { fileInodes: false, readAheadBytes },
  );
  return { reads, result };
}

function samePages(a: MetadataWalkResult, b: MetadataWalkResult): void {
  assert.deepEqual(
    [...a.pages.keys()].sort((x, y) => x - y),
    [...b.pages.keys()].sort((x, y) => x - y),
  );
  assert.equal(a.entries, b.entries);
  assert.equal(a.directories, b.directories);
}

Deno.test({
  name:
    "walk read-ahead: a built image's tree in 1 read (5+ without), mkfs.erofs only its first read longer",
  ignore: requires(requirePath(`${PEER_BIN}/mkfs.erofs`, "mkfs.erofs 1.9.3")),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-build-prefetch-" });
    try {
      await makeTree(`${work}/src`);
      const { root } = scanDirectory(`${work}/src`);
      buildImage(root, `${work}/ours.erofs`, { buildTimeSec: 0 });
      await runOk(`${PEER_BIN}/mkfs.erofs`, [
        "--quiet",
        "-T0",
        `${work}/peer.erofs`,
        `${work}/src`,
      ]);

      const ours = await walk(`${work}/ours.erofs`);
      const oursBefore = await walk(`${work}/ours.erofs`, 0);
      assert.equal(ours.result.incomplete, undefined);
      assert.equal(ours.result.directories, 1 + LEVELS * 7);
      assert.ok(oursBefore.reads >= 5, `without read-ahead: ${oursBefore.reads} reads`);
      assert.equal(ours.reads, 1, `with read-ahead: ${ours.reads} reads`);
      samePages(ours.result, oursBefore.result);

      const peer = await walk(`${work}/peer.erofs`);
      const peerBefore = await walk(`${work}/peer.erofs`, 0);
      assert.equal(peer.result.incomplete, undefined);
      // Only the first 1 MiB read is extra: the spread metadata stops further windows.
      assert.ok(peer.reads <= peerBefore.reads, `mkfs.erofs image: ${peer.reads} reads`);
      assert.ok(
        peer.result.bytesRead <= peerBefore.result.bytesRead + (1 << 20),
        `mkfs.erofs image: ${peer.result.bytesRead} vs ${peerBefore.result.bytesRead} bytes`,
      );
      samePages(peer.result, peerBefore.result);
      console.log(
        `reads with/without read-ahead: build ${ours.reads}/${oursBefore.reads}, ` +
          `mkfs.erofs ${peer.reads}/${peerBefore.reads}`,
      );
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test("walk read-ahead: a 6 MB directory prefix (60,000 directories) in 3 reads", async () => {
  const work = await Deno.makeTempDir({ prefix: "erofs-oci-build-prefetch-" });
  try {
    // Levels of 10 directories each with 10 subdirectories, 300 per level: a wide prefix.
    const root = newNode("dir");
    let level: BuildNode[] = [root];
    let made = 0;
    while (made < 60_000) {
      const next: BuildNode[] = [];
      for (const dir of level) {
        for (let i = 0; i < 10 && made < 60_000; i++, made++) {
          const child = newNode("dir");
          dir.children!.set(`directory-with-a-longer-name-${i}`, child);
          next.push(child);
        }
      }
      level = next;
    }
    const image = `${work}/wide.erofs`;
    const result = buildImage(root, image, { buildTimeSec: 0 });
    const ours = await walk(image);
    const before = await walk(image, 0);
    assert.equal(ours.result.incomplete, undefined);
    assert.equal(ours.result.directories, 60_001);
    samePages(ours.result, before.result);
    assert.ok(result.metadataBytes > 5 << 20, `${result.metadataBytes} bytes of metadata`);
    // 1 MiB, then 2 and 4 MiB windows.
    assert.ok(ours.reads <= 3, `with read-ahead: ${ours.reads} reads`);
    assert.ok(before.reads >= 5, `without: ${before.reads} reads`);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});
