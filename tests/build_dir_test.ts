/**
 * `erofs-oci build DIR`: every image passes fsck.erofs 1.9.3, mounts with the host kernel's
 * erofs driver and shows exactly the source tree (type, mode, owner, nlink, mtime in ns, size,
 * sha256, link target, rdev, xattrs); the edge cases one by one; deterministic output; all
 * metadata in front of the data.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { command, FIXTURES, path, PEER_BIN, requires, root } from "./_support/requires.ts";
import { assertCliError, runCli } from "./_support/cli.ts";
import {
  assertOneLineError,
  fsckImage,
  run,
  runOk,
  treeListing,
  withMountedImage,
} from "./_support/erofs_tree.ts";
import {
  BIG_SPARSE_BYTES,
  BIG_SPARSE_MARKS,
  bigSparseMarks,
  makeAwkwardTree,
  writeBigSparseFile,
} from "./_support/awkward_tree.ts";
import { withTempDir } from "./_support/temp_dir.ts";
import { checkErofsSuperblock } from "../lib/erofs/superblock.ts";
import { walkErofsMetadata } from "../lib/erofs/metadata_walk.ts";

const ignore = requires(
  root(),
  command("python3"),
  command("mknod"),
  path(`${PEER_BIN}/fsck.erofs`, "fsck.erofs 1.9.3"),
);

async function buildAndCompare(src: string, work: string, extra: string[] = []) {
  const image = `${work}/out.erofs`;
  const built = await runCli(["build", src, "-o", image, ...extra], { timeoutMs: 300_000 });
  assert.equal(built.code, 0, built.stderr);
  await fsckImage(image);
  const expected = await treeListing(src);
  const actual = await withMountedImage(image, (dir) => treeListing(dir));
  assert.deepEqual(actual, expected);
  return image;
}

function withWork(fn: (work: string) => Promise<void>): Promise<void> {
  return withTempDir("erofs-oci-build-test-", fn);
}

Deno.test({
  name: "build: the fixtures' tree-basic mounts identical to the source and passes fsck --extract",
  ignore: ignore || requires(path(`${FIXTURES}/make-trees.sh`, "fixture tree script")),
  async fn() {
    await withWork(async (work) => {
      await runOk(`${FIXTURES}/make-trees.sh`, [`${work}/trees`]);
      const image = await buildAndCompare(`${work}/trees/tree-basic`, work);
      await fsckImage(image, `${work}/extracted`);
      // fsck.erofs's own extraction is the same tree too (diff cannot compare fifos).
      const diff = await run("diff", [
        "-r",
        "--no-dereference",
        `${work}/trees/tree-basic`,
        `${work}/extracted`,
      ]);
      const differences = diff.stdout.split("\n")
        .filter((line) => line && !/ is a fifo while file .* is a fifo$/.test(line));
      assert.deepEqual(differences, []);
    });
  },
});

Deno.test({
  name: "build: edge cases (255-byte names, empty, devices, fifo, socket, hard links, xattrs, " +
    "multi-block dirs, ns mtimes, big ids, long symlink)",
  ignore,
  async fn() {
    await withWork(async (work) => {
      const src = `${work}/src`;
      await makeAwkwardTree(src, { xattrNamespace: "user", bigSparse: false });
      await buildAndCompare(src, work);
    });
  },
});

Deno.test({
  name: "build: an image whose last inode would end at its very end passes the host's fsck too",
  ignore: ignore || requires(command("fsck.erofs")),
  async fn() {
    // 36 empty files: their inodes fill the first block exactly, and nothing follows. Debian
    // 12's fsck.erofs 1.5 reads 12 bytes past every inode and called the image corrupted.
    await withWork(async (work) => {
      const src = `${work}/src`;
      Deno.mkdirSync(src);
      for (let n = 1; n <= 36; n++) Deno.writeFileSync(`${src}/e${n}`, new Uint8Array(0));
      await buildAndCompare(src, work, ["--timestamp", "1700000000"]);
    });
  },
});

Deno.test({
  name: "build: inline tails of files with data blocks, in the checksummed first block and after",
  ignore,
  async fn() {
    await withWork(async (work) => {
      const src = `${work}/src`;
      Deno.mkdirSync(`${src}/more`, { recursive: true });
      // Inode right after the root's, in block 0: its tail is read with the inode, before the
      // superblock checksum; the others' tails are copied with their data blocks.
      Deno.writeFileSync(`${src}/a`, crypto.getRandomValues(new Uint8Array(4096 + 500)));
      for (let i = 0; i < 60; i++) {
        const size = 4096 * (1 + (i % 3)) + 1 + ((i * 97) % 2000);
        Deno.writeFileSync(`${src}/more/f${i}`, crypto.getRandomValues(new Uint8Array(size)));
      }
      await buildAndCompare(src, work);
    });
  },
});

Deno.test({
  name: "build: a sparse file over 4 GiB keeps its size and bytes (extended inode, sparse image)",
  ignore,
  async fn() {
    await withWork(async (work) => {
      const src = `${work}/src`;
      Deno.mkdirSync(src);
      writeBigSparseFile(`${src}/big.sparse`);
      const image = `${work}/out.erofs`;
      const built = await runCli(["build", src, "-o", image], { timeoutMs: 300_000 });
      assert.equal(built.code, 0, built.stderr);
      assert.ok(Deno.statSync(image).size > BIG_SPARSE_BYTES);
      // The image stays sparse on disk: the holes of the source were not written.
      const du = await runOk("du", ["-k", image]);
      assert.ok(Number(du.split("\t")[0]) < 1024, `image uses ${du}`);
      const tail = await withMountedImage(image, async (dir) => {
        assert.equal(Deno.statSync(`${dir}/big.sparse`).size, BIG_SPARSE_BYTES);
        return await bigSparseMarks(`${dir}/big.sparse`);
      });
      assert.deepEqual(tail, BIG_SPARSE_MARKS);
    });
  },
});

Deno.test({
  name: "build: same input + --timestamp + --uuid gives the same bytes; metadata all in front",
  ignore: ignore || requires(path(`${FIXTURES}/make-trees.sh`, "fixture tree script")),
  async fn() {
    await withWork(async (work) => {
      await runOk(`${FIXTURES}/make-trees.sh`, [`${work}/trees`]);
      const args = ["--timestamp", "1700000000", "--uuid", "00000000-0000-4000-8000-00000000abcd"];
      const src = `${work}/trees/tree-basic`;
      for (const name of ["a", "b"]) {
        const out = await runCli(["build", src, "-o", `${work}/${name}.erofs`, ...args]);
        assert.equal(out.code, 0, out.stderr);
      }
      const a = Deno.readFileSync(`${work}/a.erofs`), b = Deno.readFileSync(`${work}/b.erofs`);
      assert.deepEqual(a, b);
      const sb = checkErofsSuperblock(a);
      assert.equal(sb.uuid, "00000000-0000-4000-8000-00000000abcd");
      assert.equal(sb.buildTime, 1700000000n);
      assert.ok(sb.features.includes("sb_csum"));
      // Every metadata page of the tree lies before the first data byte, so a lazy mount
      // whose cache fetches 2 MiB chunks gets the whole tree with one registry GET.
      const walk = await walkErofsMetadata(
        (offset, length) => Promise.resolve(a.subarray(offset, offset + length)),
        a.length,
      );
      assert.equal(walk.incomplete, undefined);
      assert.equal(walk.entries, 331);
      // The pages are one run from the start, and the file data fits behind it: nothing of
      // the data sits between metadata pages.
      const pages = [...walk.pages.keys()].sort((x, y) => x - y);
      assert.deepEqual(pages, pages.map((_, i) => i));
      const dataBytes = Number(await runOk("python3", ["-c", UNIQUE_FULL_BLOCKS_PY, src]));
      assert.ok(pages.length * walk.pageBytes + dataBytes <= a.length);
      const chunks = new Set(pages.map((page) => Math.floor(page * walk.pageBytes / (2 << 20))));
      assert.equal(chunks.size, 1);
    });
  },
});

/** Bytes of whole 4 KiB blocks of the distinct regular files under a directory. */
const UNIQUE_FULL_BLOCKS_PY = `
import os, sys
seen, total = set(), 0
for dp, dns, fns in os.walk(sys.argv[1]):
    for n in fns:
        st = os.lstat(os.path.join(dp, n))
        if os.path.isfile(os.path.join(dp, n)) and not os.path.islink(os.path.join(dp, n)) and st.st_ino not in seen:
            seen.add(st.st_ino)
            total += st.st_size // 4096 * 4096
print(total)
`;

Deno.test({
  name: "build: --order puts the listed files' data first; bad arguments are one-line errors",
  ignore,
  async fn() {
    await withWork(async (work) => {
      const src = `${work}/src`;
      Deno.mkdirSync(`${src}/a`, { recursive: true });
      Deno.writeFileSync(`${src}/a/first`, new Uint8Array(8192).fill(0x41));
      Deno.writeFileSync(`${src}/z-last`, new Uint8Array(8192).fill(0x5a));
      // Whole blocks (no tail stored with the inode, in the metadata). A name with a leading
      // blank, its line ending in CRLF: taken as written (it was trimmed).
      Deno.writeFileSync(`${src}/ lead`, new Uint8Array(8192).fill(0x4c));
      Deno.writeTextFileSync(`${work}/order`, "z-last\n lead\r\n# comment\n/missing\n");
      const image = await buildAndCompare(src, work, ["--order", `${work}/order`]);
      const again = await runCli([
        "build",
        src,
        "-o",
        `${work}/again.erofs`,
        "--order",
        `${work}/order`,
      ]);
      assert.match(
        again.stderr,
        /warning: 1 --order path\(s\) name no regular file in SOURCE, e\.g\. "\/missing"/,
      );
      const bytes = Deno.readFileSync(image);
      const find = (byte: number) =>
        Buffer.from(bytes).indexOf(Buffer.from(new Uint8Array(64).fill(byte)));
      const z = find(0x5a), lead = find(0x4c), a = find(0x41);
      assert.ok(
        z > 0 && lead > z && a > lead,
        `z-last at ${z}, " lead" at ${lead}, a/first at ${a}`,
      );

      const bad = await runCli(["build", `${work}/nope`, "-o", `${work}/x.erofs`]);
      assert.equal(bad.code, 1);
      assert.match(bad.stderr, /^erofs-oci: build: cannot read .*nope/);
      assertOneLineError(bad.stderr);
      // Names that are not UTF-8 are refused naming the file, not as an internal error.
      const odd = `${work}/odd`;
      Deno.mkdirSync(odd);
      await runOk("python3", ["-c", `import os; os.symlink(b'target-\\xe9', b'${odd}/sym')`]);
      const oddTarget = await runCli(["build", odd, "-o", `${work}/odd.erofs`]);
      assert.equal(oddTarget.code, 1);
      assert.match(
        oddTarget.stderr,
        /^erofs-oci: the symlink .*odd\/sym points to a name that is not valid UTF-8/,
      );
      assertOneLineError(oddTarget.stderr);
      Deno.removeSync(`${odd}/sym`);
      await runOk("python3", ["-c", `open(b'${odd}/name-\\xe9', 'w').close()`]);
      const oddName = await runCli(["build", odd, "-o", `${work}/odd.erofs`]);
      assert.equal(oddName.code, 1);
      assert.match(
        oddName.stderr,
        /^erofs-oci: a file name in .*odd is not valid UTF-8 \(it reads as "name-\ufffd"\)/,
      );
      assertOneLineError(oddName.stderr);
      const usage = await runCli(["build", src]);
      assert.equal(usage.code, 2);
      assert.match(usage.stderr, /-o FILE/);
      const noDir = await runCli(["build", src, "-o", `${work}/no/such/dir/x.erofs`]);
      // Said before the build: its directory does not exist.
      assert.equal(noDir.code, 2);
      assert.match(noDir.stderr, /-o .*x\.erofs: directory .*no\/such\/dir does not exist/);
      // A failed build (no space left) leaves nothing behind and keeps an existing image.
      const small = `${work}/small`;
      Deno.mkdirSync(small);
      await runOk("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", small]);
      try {
        Deno.writeTextFileSync(`${small}/keep.erofs`, "old");
        Deno.writeFileSync(`${src}/two-mib`, new Uint8Array(2 << 20).fill(1));
        const full = await runCli(["build", src, "-o", `${small}/keep.erofs`]);
        assert.equal(full.code, 1);
        assertOneLineError(full.stderr);
        assert.match(full.stderr, /No space left/);
        assert.deepEqual([...Deno.readDirSync(small)].map((e) => e.name), ["keep.erofs"]);
        assert.equal(Deno.readTextFileSync(`${small}/keep.erofs`), "old");
      } finally {
        await runOk("umount", [small]);
      }
    });
  },
});

Deno.test({
  name: "build DIR -o DIR/app.erofs again: the earlier image is left out, not packed into the new",
  ignore,
  async fn() {
    await withWork(async (work) => {
      const src = `${work}/src`;
      Deno.mkdirSync(`${src}/sub`, { recursive: true });
      Deno.writeTextFileSync(`${src}/sub/file.txt`, "kept\n");
      const out = `${src}/app.erofs`;
      for (const round of [1, 2]) {
        const built = await runCli(["build", src, "-o", out]);
        assert.equal(built.code, 0, built.stderr);
        if (round === 2) {
          assert.match(built.stderr, /app\.erofs left out: it is the image being written/);
        }
        await fsckImage(out, `${work}/x${round}`);
        assert.deepEqual([...Deno.readDirSync(`${work}/x${round}`)].map((e) => e.name).sort(), [
          "sub",
        ]);
      }
      // Another file of the same name elsewhere in the tree is no reason to leave one out.
      Deno.copyFileSync(out, `${src}/sub/app.erofs`);
      const again = await runCli(["build", src, "-o", out]);
      assert.equal(again.code, 0, again.stderr);
      await fsckImage(out, `${work}/x3`);
      assert(Deno.statSync(`${work}/x3/sub/app.erofs`).isFile);
    });
  },
});

Deno.test("build DIR: registry options without --push are usage errors (they did nothing)", async () => {
  const work = await Deno.makeTempDir({ prefix: "erofs-oci-build-options-" });
  try {
    await Deno.mkdir(`${work}/src`);
    await Deno.writeTextFile(`${work}/src/a.txt`, "a\n");
    for (
      const [option, ...value] of [["--platform", "linux/arm64"], ["-u", "x"], ["--plain-http"]]
    ) {
      const name = option === "-u" ? "--username" : option;
      assertCliError(
        await runCli(["build", `${work}/src`, "-o", `${work}/x.erofs`, option, ...value]),
        2,
        new RegExp(
          `build: ${name} applies to an image SOURCE \\(REF or oci:PATH\\) or with --push`,
        ),
      );
    }
    await assert.rejects(Deno.stat(`${work}/x.erofs`), Deno.errors.NotFound);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});
