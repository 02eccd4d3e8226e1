/**
 * `build DIR` over a tree a user owns while root builds it: whatever the user renames while the
 * scan runs, each entry of the image is all of one file (owner, mode, xattrs, link target,
 * bytes). A user who exchanged one of root's files in between the scan's stat and its xattr
 * read and back again (A-B-A) had root's security.capability put on the user's own file.
 */
import assert from "node:assert/strict";
import { command, path, PEER_BIN, requires, root } from "./_support/requires.ts";
import { fsckImage, runOk, treeListing, withMountedImage } from "./_support/erofs_tree.ts";
import { withTempDir } from "./_support/temp_dir.ts";
import { scanDirectory } from "../lib/erofs/writer/from_dir.ts";
import { buildImage } from "../lib/erofs/writer/build_image.ts";
import { FormatError } from "../lib/errors.ts";

const ignore = requires(
  root(),
  command("python3"),
  path(`${PEER_BIN}/fsck.erofs`, "fsck.erofs 1.9.3"),
);

/** A user's name and root's swapped, as a racer with RENAME_EXCHANGE would (both exist again). */
function exchange(a: string, b: string): void {
  Deno.renameSync(a, `${a}.swapping`);
  Deno.renameSync(b, a);
  Deno.renameSync(`${a}.swapping`, b);
}

/** cap_sys_admin, permitted and effective (struct vfs_cap_data, revision 2). */
const CAP_SYS_ADMIN = "b'\\x01\\x00\\x00\\x02' + (1 << 21).to_bytes(4, 'little') + bytes(12)";

/**
 * Pairs of a user's file (`mine-*`, uid 1000) and root's (`root-*`) of each kind xattrs can be
 * set on by root, each with its own trusted.tag; root's file has a capability, root's link
 * another target.
 */
const MAKE_PAIRS = `
import os, sys
src = sys.argv[1]
def tag(p, v):
    os.setxattr(p, "trusted.tag", v.encode(), follow_symlinks=False)
for who, owner in (("mine", 1000), ("root", 0)):
    f = os.path.join(src, who + "-file")
    with open(f, "w") as out:
        out.write(who + "'s bytes\\n")
    os.chmod(f, 0o644 if who == "mine" else 0o4755)
    d = os.path.join(src, who + "-dir")
    os.mkdir(d, 0o755 if who == "mine" else 0o700)
    open(os.path.join(d, "inside-" + who), "w").close()
    l = os.path.join(src, who + "-link")
    os.symlink("mine-file" if who == "mine" else "/etc/shadow", l)
    p = os.path.join(src, who + "-fifo")
    os.mkfifo(p, 0o644 if who == "mine" else 0o600)
    for x in (f, d, l, p):
        tag(x, who)
        os.lchown(x, owner, owner)
    if who == "mine":
        os.setxattr(f, "user.tag", b"mine")
    else:
        os.setxattr(f, "security.capability", ${CAP_SYS_ADMIN})
os.utime(src, ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9))
`;

Deno.test({
  name: "build: an entry exchanged with root's and back while it is scanned keeps its own xattrs",
  ignore,
  async fn() {
    await withTempDir("erofs-oci-scan-aba-", async (work) => {
      const src = `${work}/src`;
      Deno.mkdirSync(src);
      await runOk("python3", ["-c", MAKE_PAIRS, src]);
      const expected = await treeListing(src);
      // Each of the user's entries: stat'ed as theirs, root's exchanged in for the reads of
      // its xattrs (and target), theirs back before anything could look at the name again.
      const swapped: string[] = [];
      const rootsOf = (entry: string) => entry.replace(/\/mine-(\w+)$/, "/root-$1");
      const scanned = scanDirectory(src, {
        race: {
          afterStat(entry) {
            if (rootsOf(entry) === entry) return;
            exchange(entry, rootsOf(entry));
            swapped.push(entry);
          },
          afterRead(entry) {
            if (swapped.at(-1) === entry) exchange(entry, rootsOf(entry));
          },
        },
      });
      assert.equal(swapped.length, 4, `exchanged: ${swapped.join(" ")}`);
      // The renames touched src's mtime; the scan saw it before.
      Deno.utimeSync(src, 1_700_000_000, 1_700_000_000);
      assert.deepEqual(await treeListing(src), expected);
      const image = `${work}/out.erofs`;
      buildImage(scanned.root, image);
      await fsckImage(image);
      assert.deepEqual(await withMountedImage(image, (dir) => treeListing(dir)), expected);
    });
  },
});

Deno.test("build: a directory exchanged for another after its entry was scanned is refused", () => {
  const work = Deno.makeTempDirSync({ prefix: "erofs-oci-scan-dir-swap-" });
  try {
    const src = `${work}/src`;
    for (const dir of ["d", "e"]) {
      Deno.mkdirSync(`${src}/${dir}`, { recursive: true });
      Deno.writeTextFileSync(`${src}/${dir}/inside`, "x");
    }
    Deno.mkdirSync(`${work}/private`, { mode: 0o700 });
    Deno.writeTextFileSync(`${work}/private/names-root-keeps`, "x");
    // Both were scanned as the user's directories; while the first is read, root's private
    // one is put at the other's name: its entries would be listed under the user's
    // directory's owner, mode and xattrs.
    let exchanged = "";
    const readFirst = /\/src\/([de])\/inside$/;
    assert.throws(
      () =>
        scanDirectory(src, {
          race: {
            afterStat(entry) {
              const first = readFirst.exec(entry)?.[1];
              if (exchanged || !first) return;
              exchanged = `${src}/${first === "d" ? "e" : "d"}`;
              exchange(exchanged, `${work}/private`);
            },
            afterRead() {},
          },
        }),
      (e: unknown) =>
        e instanceof FormatError &&
        e.message === `${exchanged} changed while it was scanned ` +
            "(another directory is at its name now)",
    );
  } finally {
    Deno.removeSync(work, { recursive: true });
  }
});

Deno.test({
  name: "build: a file whose owner changed between the scan and the write is refused",
  ignore: requires(root()),
  fn() {
    const work = Deno.makeTempDirSync({ prefix: "erofs-oci-owner-swap-" });
    try {
      Deno.mkdirSync(`${work}/src`);
      Deno.writeTextFileSync(`${work}/src/tool`, "root's program\n", { mode: 0o4755 });
      const scanned = scanDirectory(`${work}/src`);
      // What the user's new file at the inode number of root's deleted one looks like (the
      // number alone matches): the user's bytes would go out with root's owner and mode.
      Deno.chownSync(`${work}/src/tool`, 1000, 1000);
      assert.throws(
        () => buildImage(scanned.root, `${work}/a.erofs`),
        (e: unknown) =>
          e instanceof FormatError &&
          /tool changed while the image was built \(its owner or mode is not what the scan saw\)/
            .test(e.message),
      );
      Deno.chownSync(`${work}/src/tool`, 0, 0);
      Deno.chmodSync(`${work}/src/tool`, 0o4755);
      buildImage(scanned.root, `${work}/b.erofs`);
    } finally {
      Deno.removeSync(work, { recursive: true });
    }
  },
});
