/**
 * A tar-index device ([meta][tar.gz via zinfo], erofs-utils 1.9.3 fixtures) served as a FUSE
 * file and mounted file-backed, as the mount server does for tar layers: with `pageCache` the
 * kernel reads the file through its page cache and readahead, in a few large READs; with direct
 * I/O (EROFS layers' setting) every page EROFS reads is its own READ. Same tree either way.
 */
import assert from "node:assert/strict";
import { HybridTarSource } from "../lib/gzip/hybrid_tar.ts";
import { LocalFile } from "../lib/source/local_file.ts";
import { deadline, expected, FuseStack, manifest } from "./_support/fuse_stack.ts";
import { MemorySource } from "./_support/memory_source.ts";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";

const ignore = requires(
  root(),
  path("/dev/fuse"),
  command("python3"),
  command("tar"),
  command("wc"),
  path(`${FIXTURES}/layer.zinfo`, "shared fixtures"),
);

/** Mounts the fixture's device over FUSE, reads every file; the READs the server answered. */
async function readAll(
  name: string,
  manifestName: string,
  pageCache: boolean,
): Promise<{ reads: number; bytes: number }> {
  const blobBytes = new MemorySource(await Deno.readFile(`${FIXTURES}/${name}.tar.gz`));
  const zinfo = await LocalFile.open(`${FIXTURES}/${name}.zinfo`);
  const meta = await Deno.readFile(`${FIXTURES}/${name}.meta.erofs`);
  const source = await HybridTarSource.openGzip(meta, blobBytes, zinfo);
  const stack = await FuseStack.create();
  try {
    const blob = await stack.blob(source, "fuse", { pageCache });
    await stack.erofs(blob.filePath, "mnt", { devicesMapped: true });
    const mnt = `${stack.root}/mnt`;
    // Every file's bytes, in the order tar walks the tree (not to /dev/null: GNU tar would
    // skip reading the files).
    const out = await deadline(
      new Deno.Command("sh", {
        args: ["-c", `tar -C '${mnt}' -cf - . | wc -c`],
        stdout: "null",
        stderr: "piped",
      }).output(),
      "tar",
      60_000,
    );
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    // Counted before the manifest pass: a drop_caches by other work on the host could make
    // that pass read again.
    const stats = blob.stats();
    assert.equal(await manifest(mnt), await expected(manifestName));
    return stats;
  } finally {
    await stack.cleanup();
    await source.close();
  }
}

// layer: 317 regular files, mostly small, at 512-byte tar offsets; big: 4 large files.
for (
  const [name, manifestName, factor] of [
    ["layer", "layer.meta.txt", 4],
    ["big", "big.meta.txt", 2],
  ] as const
) {
  Deno.test({
    name: `tar-index device over FUSE: page cache reads in fewer READs than direct I/O (${name})`,
    ignore,
    async fn() {
      const direct = await readAll(name, manifestName, false);
      const cached = await readAll(name, manifestName, true);
      // Direct I/O: one READ per page (or file tail) EROFS reads. Through the page cache the
      // kernel's readahead asks for large READs; loose bounds (seen: layer 385 -> 8-20, big 76
      // -> 13-27; the benchmark tree 23,660 -> 336).
      assert.ok(
        cached.reads * factor <= direct.reads,
        `READs: page cache ${cached.reads}, direct I/O ${direct.reads}`,
      );
      assert.ok(
        cached.bytes / cached.reads >= factor * (direct.bytes / direct.reads),
        "larger READs",
      );
    },
  });
}
