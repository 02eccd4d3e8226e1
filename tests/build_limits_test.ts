/**
 * Limits of what an image holds, refused by name rather than stored wrong. A file larger than an EROFS image can address (2^32 blocks: 16 TiB at 4 KiB) is refused by
 * name. The block count wrapped around: a 1 PiB sparse file built into a 4 KiB image whose
 * file read the image's own metadata, and fsck.erofs passed it. ext4 caps files at 16 TiB,
 * so the source lies on a small tmpfs (XFS and btrfs take such files too).
 */
import assert from "node:assert/strict";
import { command, requires, root } from "./_support/requires.ts";
import { assertCliError, assertSuccess, runCli } from "./_support/cli.ts";
import { runOk, withMountedImage } from "./_support/erofs_tree.ts";
import { encodeTar } from "./_support/tar_encode.ts";
import {
  assertSameImageWithoutOpenat2,
  withoutOpenat2Ignored,
} from "./_support/without_openat2.ts";
import { scanDirectory } from "../lib/erofs/writer/from_dir.ts";
import { buildImage } from "../lib/erofs/writer/build_image.ts";
import { FormatError } from "../lib/errors.ts";

Deno.test({
  name: "build: a file over 2^32 blocks is refused by name, nothing written",
  ignore: requires(root()),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-huge-" });
    const tmpfs = `${work}/fs`;
    Deno.mkdirSync(tmpfs);
    const mounted = await new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", "size=16m", "tmpfs", tmpfs],
    }).output();
    assert(mounted.success, new TextDecoder().decode(mounted.stderr));
    try {
      Deno.mkdirSync(`${tmpfs}/src`);
      using huge = Deno.openSync(`${tmpfs}/src/huge`, { write: true, create: true });
      huge.truncateSync(2 ** 50); // 1 PiB, sparse
      Deno.writeTextFileSync(`${tmpfs}/src/small`, "small\n");
      const out = `${tmpfs}/image.erofs`;
      assertCliError(
        await runCli(["build", `${tmpfs}/src`, "-o", out], { timeoutMs: 60_000 }),
        1,
        /file "\/huge" is 1125899906842624 bytes: more than an image of 4096-byte blocks holds/,
      );
      assert.deepEqual([...Deno.readDirSync(tmpfs)].map((e) => e.name), ["src"]);
      // 2^32 - 1 blocks passes that check but fits beside no metadata: named too (it was only
      // "image over 16 TiB").
      huge.truncateSync((2 ** 32 - 1) * 4096);
      assertCliError(
        await runCli(["build", `${tmpfs}/src`, "-o", out], { timeoutMs: 60_000 }),
        1,
        /the image would be over 4294967295 blocks of 4096 bytes with file "\/huge"/,
      );
      assert.deepEqual([...Deno.readDirSync(tmpfs)].map((e) => e.name), ["src"]);
    } finally {
      await new Deno.Command("umount", { args: [tmpfs] }).output();
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test("build: a tar root's owner beyond 32 bits is refused as any member's is", async () => {
  const work = await Deno.makeTempDir({ prefix: "erofs-oci-root-owner-" });
  try {
    Deno.writeFileSync(
      `${work}/layer.tar`,
      encodeTar([
        { name: "./", type: "5", pax: [["uid", "8589934593"], ["gid", "4294967297"]] },
        { name: "file", data: new TextEncoder().encode("x") },
      ]),
    );
    assertCliError(
      await runCli(["build", `${work}/layer.tar`, "-o", `${work}/out.erofs`]),
      1,
      /owner 8589934593:4294967297 beyond 32 bits/,
    );
    assert.deepEqual([...Deno.readDirSync(work)].map((e) => e.name), ["layer.tar"]);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("build: a file swapped for a symlink between the scan and the write is refused", () => {
  const work = Deno.makeTempDirSync({ prefix: "erofs-oci-swap-" });
  try {
    Deno.mkdirSync(`${work}/src/dir`, { recursive: true });
    Deno.writeTextFileSync(`${work}/secret`, "root's secret\n", { mode: 0o600 });
    Deno.writeTextFileSync(`${work}/src/victim`, "plain\n");
    Deno.writeTextFileSync(`${work}/src/dir/inner`, "inner\n");
    // The scan sees a file; by the time its bytes are copied, a symlink to a secret is there.
    const swapped = scanDirectory(`${work}/src`);
    Deno.removeSync(`${work}/src/victim`);
    Deno.symlinkSync(`${work}/secret`, `${work}/src/victim`);
    assert.throws(
      () => buildImage(swapped.root, `${work}/a.erofs`),
      (e: unknown) =>
        e instanceof FormatError &&
        /victim changed while the image was built \(a symlink is on its path now\)/.test(e.message),
    );
    // A directory on the way swapped for a symlink to another tree: refused too.
    Deno.removeSync(`${work}/src/victim`);
    Deno.writeTextFileSync(`${work}/src/victim`, "plain\n");
    const again = scanDirectory(`${work}/src`);
    Deno.renameSync(`${work}/src/dir`, `${work}/elsewhere`);
    Deno.writeTextFileSync(`${work}/elsewhere/inner`, "other bytes\n");
    Deno.symlinkSync(`${work}/elsewhere`, `${work}/src/dir`);
    assert.throws(
      () => buildImage(again.root, `${work}/b.erofs`),
      (e: unknown) =>
        e instanceof FormatError && /inner changed while the image was built/.test(e.message),
    );
    // A source below a symlink of the user's own is fine.
    Deno.removeSync(`${work}/src/dir`);
    Deno.renameSync(`${work}/elsewhere`, `${work}/src/dir`);
    Deno.symlinkSync(work, `${work}/up`);
    buildImage(scanDirectory(`${work}/up/src`).root, `${work}/c.erofs`);
  } finally {
    Deno.removeSync(work, { recursive: true });
  }
});

Deno.test("build: two files swapped by rename between the scan and the write are refused", () => {
  const work = Deno.makeTempDirSync({ prefix: "erofs-oci-swap-rename-" });
  try {
    Deno.mkdirSync(`${work}/src`);
    // The scan sees a setuid file of root's and a user's file; then the user swaps them by
    // rename (no symlink anywhere): the user's bytes would go out as the setuid file.
    Deno.writeTextFileSync(`${work}/src/tool`, "root's program\n", { mode: 0o4755 });
    Deno.writeTextFileSync(`${work}/src/mine`, "the user's bytes\n");
    const scanned = scanDirectory(`${work}/src`);
    Deno.renameSync(`${work}/src/tool`, `${work}/src/tmp`);
    Deno.renameSync(`${work}/src/mine`, `${work}/src/tool`);
    Deno.renameSync(`${work}/src/tmp`, `${work}/src/mine`);
    assert.throws(
      () => buildImage(scanned.root, `${work}/a.erofs`),
      (e: unknown) =>
        e instanceof FormatError &&
        /(tool|mine) changed while the image was built \(another file is at its name now\)/
          .test(e.message),
    );
    // Swapped back: the files the scan saw, built.
    Deno.renameSync(`${work}/src/tool`, `${work}/src/tmp`);
    Deno.renameSync(`${work}/src/mine`, `${work}/src/tool`);
    Deno.renameSync(`${work}/src/tmp`, `${work}/src/mine`);
    buildImage(scanned.root, `${work}/b.erofs`);
  } finally {
    Deno.removeSync(work, { recursive: true });
  }
});

Deno.test("build -o: the output directory swapped for a symlink while the image is written", () => {
  const work = Deno.makeTempDirSync({ prefix: "erofs-oci-swap-out-" });
  try {
    Deno.mkdirSync(`${work}/src`);
    Deno.writeTextFileSync(`${work}/src/f`, "x".repeat(100_000));
    Deno.mkdirSync(`${work}/out`);
    Deno.mkdirSync(`${work}/victim`);
    Deno.writeTextFileSync(`${work}/victim/app.erofs`, "someone else's file\n");
    let swapped = false;
    buildImage(scanDirectory(`${work}/src`).root, `${work}/out/app.erofs`, {
      // While the image is written, the directory is moved away and a symlink to another
      // directory put in its place (what a user who owns the parent can do).
      onProgress: () => {
        if (swapped) return;
        swapped = true;
        Deno.renameSync(`${work}/out`, `${work}/moved`);
        Deno.symlinkSync(`${work}/victim`, `${work}/out`);
      },
    });
    assert.ok(swapped);
    assert.ok(
      Deno.readTextFileSync(`${work}/victim/app.erofs`) === "someone else's file\n",
      "the file in the other directory was replaced by the image",
    );
    assert.deepEqual([...Deno.readDirSync(`${work}/victim`)].map((e) => e.name), ["app.erofs"]);
    // The image went where the build opened its directory, nothing else is left there.
    assert.deepEqual([...Deno.readDirSync(`${work}/moved`)].map((e) => e.name), ["app.erofs"]);
  } finally {
    Deno.removeSync(work, { recursive: true });
  }
});

Deno.test({
  name: "build: an xattr name that is not UTF-8 is refused, not left out without a word",
  ignore: requires(command("python3")),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-xattr-name-" });
    try {
      Deno.mkdirSync(`${work}/src`);
      Deno.writeTextFileSync(`${work}/src/file`, "x");
      const set = await new Deno.Command("python3", {
        args: [
          "-c",
          "import os,sys; os.setxattr(sys.argv[1], b'user.\\xff\\xfe', b'v')",
          `${work}/src/file`,
        ],
      }).output();
      assert(set.success, `user xattrs here? ${new TextDecoder().decode(set.stderr)}`);
      assertCliError(
        await runCli(["build", `${work}/src`, "-o", `${work}/out.erofs`]),
        1,
        /an xattr name of .*\/src\/file is not valid UTF-8/,
      );
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test("build: a directory swapped for a symlink while the scan runs is refused, not read", () => {
  const work = Deno.makeTempDirSync({ prefix: "erofs-oci-scan-swap-" });
  try {
    Deno.mkdirSync(`${work}/src/d`, { recursive: true });
    Deno.mkdirSync(`${work}/secret`);
    Deno.writeTextFileSync(`${work}/secret/names-root-keeps`, "x");
    Deno.writeTextFileSync(`${work}/src/d/inner`, "x");
    // 1,023 files and d: the scan reports progress at its 1,024th entry, when d has been
    // seen as a directory and not yet read.
    for (let i = 0; i < 1023; i++) Deno.writeTextFileSync(`${work}/src/f${i}`, "");
    assert.throws(
      () =>
        scanDirectory(`${work}/src`, {
          onEntries: (count) => {
            if (count !== 1024) return;
            Deno.renameSync(`${work}/src/d`, `${work}/d-was`);
            Deno.symlinkSync(`${work}/secret`, `${work}/src/d`);
          },
        }),
      (e: unknown) =>
        e instanceof FormatError &&
        /src\/d changed while it was scanned \(a symlink or a file is where it was\)/.test(
          e.message,
        ),
    );
  } finally {
    Deno.removeSync(work, { recursive: true });
  }
});

Deno.test({
  name: "build: the source directory's own xattrs reach the image's root",
  ignore: requires(root(), command("python3")),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-root-xattr-" });
    const mnt = `${work}/mnt`;
    let mounted = false;
    try {
      Deno.mkdirSync(`${work}/src/sub`, { recursive: true });
      Deno.mkdirSync(mnt);
      const py = (code: string, ...args: string[]) =>
        new Deno.Command("python3", { args: ["-c", code, ...args] }).output();
      const set = "import os,sys; os.setxattr(sys.argv[1], b'user.' + sys.argv[2].encode(), b'v')";
      assert((await py(set, `${work}/src`, "root")).success);
      assert((await py(set, `${work}/src/sub`, "sub")).success);
      const out = `${work}/out.erofs`;
      const built = await runCli(["build", `${work}/src`, "-o", out]);
      assert.equal(built.code, 0, built.stderr);
      const m = await new Deno.Command("mount", { args: ["-t", "erofs", "-o", "ro", out, mnt] })
        .output();
      assert(m.success, new TextDecoder().decode(m.stderr));
      mounted = true;
      const list = "import os,sys; print(sorted(os.listxattr(sys.argv[1])))";
      const names = async (path: string) =>
        new TextDecoder().decode((await py(list, path)).stdout).trim();
      assert.equal(await names(mnt), "['user.root']");
      assert.equal(await names(`${mnt}/sub`), "['user.sub']");
    } finally {
      if (mounted) await new Deno.Command("umount", { args: [mnt] }).output();
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test({
  name: "build: without openat2 (old kernel, seccomp) a directory builds the same image",
  ignore: withoutOpenat2Ignored(),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-no-openat2-" });
    try {
      Deno.mkdirSync(`${work}/src/a/b`, { recursive: true });
      Deno.writeTextFileSync(`${work}/src/a/b/deep.txt`, "deep\n".repeat(2000));
      Deno.writeTextFileSync(`${work}/src/top.txt`, "top\n");
      Deno.symlinkSync("a/b/deep.txt", `${work}/src/link`);
      await assertSameImageWithoutOpenat2(`${work}/src`, work);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test("build: xattrs past what one EROFS inode holds are refused naming the file's path", async () => {
  const work = await Deno.makeTempDir({ prefix: "erofs-oci-xattr-total-" });
  try {
    // Each value is allowed (under 64 KiB); five of them take over 262,148 bytes, the most an
    // inode's 16-bit xattr count reaches.
    const value = "v".repeat(60_000);
    const pax = ["a", "b", "c", "d", "e"].map((n): [string, string] => [
      `SCHILY.xattr.user.${n}`,
      value,
    ]);
    Deno.writeFileSync(
      `${work}/layer.tar`,
      encodeTar([
        { name: "dir/", type: "5" },
        { name: "dir/f", data: new Uint8Array(1), pax },
      ]),
    );
    assertCliError(
      await runCli(["build", `${work}/layer.tar`, "-o", `${work}/out.erofs`]),
      1,
      /^erofs-oci: "\/dir\/f" in the image: its xattrs take 300\d{3} bytes, more than EROFS holds for one inode \(262148\)$/,
    );
    assert.deepEqual([...Deno.readDirSync(work)].map((e) => e.name), ["layer.tar"]);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test({
  name:
    "build: more than 255 xattrs shared by files: the rest are stored with each file (refused before)",
  ignore: requires(root(), command("python3")),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-xattr-shared-" });
    try {
      // The same 300 pairs on two files: every pair is worth sharing, and an inode's header
      // counts its shared ids in one byte.
      const pax = Array.from({ length: 300 }, (_, i): [string, string] => [
        `SCHILY.xattr.user.x${i}`,
        `value ${i}`,
      ]);
      Deno.writeFileSync(
        `${work}/layer.tar`,
        encodeTar([
          { name: "f", data: new Uint8Array(1), pax },
          { name: "g", data: new Uint8Array(1), pax },
        ]),
      );
      const out = `${work}/out.erofs`;
      assertSuccess(await runCli(["build", `${work}/layer.tar`, "-o", out]));
      const dump = "import os,sys; print(sorted((n, os.getxattr(sys.argv[1], n)) for n in " +
        "os.listxattr(sys.argv[1])) == sorted(('user.x%d' % i, b'value %d' % i) for i in range(300)))";
      await withMountedImage(out, async (dir) => {
        for (const name of ["f", "g"]) {
          const got = await new Deno.Command("python3", { args: ["-c", dump, `${dir}/${name}`] })
            .output();
          assert.equal(new TextDecoder().decode(got.stdout).trim(), "True", name);
        }
      });
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test({
  name: "build: a tar member's xattr EROFS cannot hold is refused naming the member",
  ignore: requires(root(), command("python3")),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-xattr-size-" });
    // value_size is 16 bits: 65,535 bytes is the most, 64 KiB itself one byte too many.
    const value = (bytes: number) => "a".repeat(bytes);
    const tar = (record: string, bytes: number) =>
      Deno.writeFileSync(
        `${work}/layer.tar`,
        encodeTar([{ name: "f", data: new Uint8Array(1), pax: [[record, value(bytes)]] }]),
      );
    try {
      for (
        const [record, bytes, message] of [
          [
            `SCHILY.xattr.user.${"n".repeat(300)}`,
            1,
            /"f": xattr name user\.n+… longer than 255 bytes/,
          ],
          [
            "SCHILY.xattr.user.big",
            65_536,
            /"f": xattr user\.big value of 65536 bytes; EROFS holds at most 65535$/m,
          ],
        ] as const
      ) {
        tar(record, bytes);
        assertCliError(
          await runCli(["build", `${work}/layer.tar`, "-o", `${work}/out.erofs`]),
          1,
          message,
        );
      }
      tar("SCHILY.xattr.user.big", 65_535);
      assertSuccess(await runCli(["build", `${work}/layer.tar`, "-o", `${work}/out.erofs`]));
      await withMountedImage(`${work}/out.erofs`, async (dir) => {
        const read = await runOk("python3", [
          "-c",
          "import os, sys; print(len(os.getxattr(sys.argv[1], 'user.big')))",
          `${dir}/f`,
        ]);
        assert.equal(read.trim(), "65535");
      });
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});
