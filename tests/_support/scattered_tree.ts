/**
 * A source tree whose mkfs.erofs image has its metadata spread between file data (mkfs.erofs
 * puts each directory's files after it), and the blob GETs a registry served: what tests of the
 * metadata prefetch and the background windows need.
 */
import { runOk } from "./erofs_tree.ts";
import type { TestRegistry } from "./registry.ts";
import { assertSuccess, runCli } from "./cli.ts";
import { command, path, PEER_BIN, requires, root } from "./requires.ts";

/** What a test of a lazy FUSE mount of the tree's mkfs.erofs image in a registry needs. */
export const ignoreWithoutScatteredImageTools = requires(
  root(),
  path("/dev/fuse"),
  command("docker-registry"),
  command("python3"),
  path(`${PEER_BIN}/mkfs.erofs`, "mkfs.erofs 1.9.3"),
);

/** ~3,000 files in 150 directories, 2-40 KiB each (about 60 MB): many data chunks. */
export async function makeScatteredTree(dir: string): Promise<void> {
  await runOk("python3", [
    "-c",
    `
import os, random, sys
random.seed(7)
root = sys.argv[1]
for d in range(150):
    sub = os.path.join(root, "d%03d" % d, "s%d" % (d % 7))
    os.makedirs(sub, exist_ok=True)
    for f in range(20):
        with open(os.path.join(sub, "f%02d.bin" % f), "wb") as out:
            out.write(random.randbytes(random.randint(2048, 40960)))
# 12 more levels, so the tree cannot come in one read per level unnoticed.
deep = os.path.join(root, "deep")
for level in range(12):
    for d in range(4):
        sub = os.path.join(deep, "d%d" % d)
        os.makedirs(sub)
        for f in range(5):
            with open(os.path.join(sub, "f%d" % f), "wb") as out:
                out.write(random.randbytes(random.randint(100, 9000)))
    deep = os.path.join(deep, "next")
`,
    dir,
  ]);
}

/** The blob GETs in the registry's access log so far. */
export async function blobGets(registry: TestRegistry): Promise<number> {
  return (await registry.accessLog()).filter((line) => /"GET \/v2\/[^"]*\/blobs\//.test(line))
    .length;
}

/** mkfs.erofs 1.9.3's image of `src` at `imagePath`, pushed as `ref` (returned). */
export async function pushMkfsErofsImage(
  src: string,
  imagePath: string,
  ref: string,
): Promise<string> {
  await runOk(`${PEER_BIN}/mkfs.erofs`, [imagePath, src]);
  assertSuccess(await runCli(["push", ref, imagePath], { timeoutMs: 120_000 }));
  return ref;
}
