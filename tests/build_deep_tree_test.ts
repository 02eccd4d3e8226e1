/**
 * A source tree nested deeper than PATH_MAX (4,095 bytes): EROFS has no such limit and the
 * kernel reads such an image, so `build` takes it (mkfs.erofs 1.9.3 fails on it with ENOMEM).
 * The paths are opened a PATH_MAX-sized part at a time, each without following a symlink:
 * a symlink swapped in past the first part is refused as one in the first part is.
 */
import assert from "node:assert/strict";
import { requires, root } from "./_support/requires.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { withTempDir } from "./_support/temp_dir.ts";
import { withMountedImage } from "./_support/erofs_tree.ts";
import {
  assertSameImageWithoutOpenat2,
  withoutOpenat2Ignored,
} from "./_support/without_openat2.ts";
import { scanDirectory } from "../lib/erofs/writer/from_dir.ts";
import { buildImage } from "../lib/erofs/writer/build_image.ts";
import { FormatError } from "../lib/errors.ts";

const DEPTH = 150;
/** 32 to 34 bytes a level: 150 levels make a path of about 5,000 bytes. */
const level = (i: number) => `d${i}_${"z".repeat(28)}`;
const FILE_TEXT = "at the bottom\n";

/**
 * Runs `script` in bash in `top`'s directory `levels` deep, reached by `cd` a level at a time
 * (the whole path is too long for one call; dash's `cd` fails past PATH_MAX). Synchronous,
 * for the scan's race hooks.
 */
function shellAt(top: string, levels: number, script: string): string {
  const out = new Deno.Command("bash", {
    args: [
      "-c",
      `cd "$1" && i=1 && while [ $i -le ${levels} ]; do cd "d$i"_${"z".repeat(28)} || exit 1; ` +
      `i=$((i + 1)); done && ${script}`,
      "bash",
      top,
    ],
  }).outputSync();
  const text = new TextDecoder();
  assert(out.success, `${script}: ${text.decode(out.stderr)}`);
  return text.decode(out.stdout);
}

/** `src` (made here) DEPTH levels deep, then `e/f` holding FILE_TEXT. */
function makeDeepTree(src: string): void {
  Deno.mkdirSync(src);
  const dirs = Array.from({ length: DEPTH }, (_, i) => level(i + 1)).join(" ");
  shellAt(
    src,
    0,
    `for d in ${dirs}; do mkdir "$d" && cd "$d" || exit 1; done; ` +
      `mkdir e && echo '${FILE_TEXT.trim()}' > e/f`,
  );
}

Deno.test({
  name: "build: a tree nested deeper than PATH_MAX builds, and the kernel reads its bottom",
  ignore: requires(root()),
  async fn() {
    await withTempDir("erofs-oci-deep-", async (work) => {
      makeDeepTree(`${work}/src`);
      const image = `${work}/deep.erofs`;
      assertSuccess(await runCli(["build", `${work}/src`, "-o", image], { timeoutMs: 60_000 }));
      await withMountedImage(image, (dir) => {
        assert.equal(shellAt(dir, DEPTH, "ls; cat e/f"), `e\n${FILE_TEXT}`);
        return Promise.resolve();
      });
    });
  },
});

Deno.test({
  name: "build: without openat2 a tree deeper than PATH_MAX builds the same image",
  ignore: withoutOpenat2Ignored(),
  async fn() {
    await withTempDir("erofs-oci-deep-no-openat2-", async (work) => {
      makeDeepTree(`${work}/src`);
      await assertSameImageWithoutOpenat2(`${work}/src`, work, 60_000);
    });
  },
});

Deno.test("build: a symlink swapped in past PATH_MAX is refused, in the scan and in the write", () => {
  const work = Deno.makeTempDirSync({ prefix: "erofs-oci-deep-swap-" });
  try {
    const src = `${work}/src`;
    makeDeepTree(src);
    // Level 140 lies past the first 4,095 bytes of the path; its directory is exchanged for a
    // symlink to a copy (a user who owns the tree can): the copy's bytes would go out.
    const swap = () => shellAt(src, 139, `mv ${level(140)} moved && ln -s moved ${level(140)}`);
    const unswap = () => shellAt(src, 139, `rm ${level(140)} && mv moved ${level(140)}`);
    let swapped = false;
    assert.throws(
      () =>
        scanDirectory(src, {
          race: {
            afterStat() {},
            afterRead(path) {
              if (swapped || !path.endsWith(`/${level(145)}`)) return;
              swapped = true;
              swap();
            },
          },
        }),
      (e: unknown) =>
        e instanceof FormatError &&
        new RegExp(`${level(145)} changed while it was scanned \\(a symlink or a file`)
          .test(e.message),
    );
    assert(swapped);
    unswap();
    const scanned = scanDirectory(src);
    swap();
    assert.throws(
      () => buildImage(scanned.root, `${work}/a.erofs`),
      (e: unknown) =>
        e instanceof FormatError &&
        /\/e\/f changed while the image was built \(a symlink is on its path now\)/.test(e.message),
    );
    unswap();
    buildImage(scanned.root, `${work}/b.erofs`);
  } finally {
    Deno.removeSync(work, { recursive: true });
  }
});
