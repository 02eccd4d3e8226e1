/**
 * Property: random trees → GNU tar → gzip in random members (random levels) → indexGzipLayer
 * (zinfo + meta + piece digests in one pass) → verified random range reads equal the tar, and
 * the meta refers to no more tar than there is.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { indexGzipLayer } from "../lib/gzip/index_layer.ts";
import { GzipRandomAccess } from "../lib/gzip/gzip_random_access.ts";
import { tarIndexLayout } from "../lib/gzip/hybrid_tar.ts";
import { MemorySource, patternBytes } from "./_support/memory_source.ts";
import { prng } from "./_support/gzip_data.ts";
import { command, requires } from "./_support/requires.ts";
import {
  gzipMembers,
  indexPaths,
  makeTreeDirs,
  memberCutsArb,
  tarOfTree,
  TREE_DIRS,
  treeFilesArb,
  treePath,
  treePlaceArb,
} from "./_support/random_tar_tree.ts";

const fileArb = fc.record({
  ...treePlaceArb,
  size: fc.oneof(
    fc.constant(0),
    fc.integer({ min: 1, max: 5000 }),
    fc.integer({ min: 1, max: 900_000 }),
  ),
  text: fc.boolean(),
});

Deno.test({
  name: "index property: random trees as multi-member tar.gz → verified random reads equal the tar",
  ignore: requires(command("tar")),
  async fn() {
    await fc.assert(
      fc.asyncProperty(
        treeFilesArb(fileArb, 25),
        memberCutsArb(3),
        fc.integer({ min: 1, max: 9 }),
        fc.integer({ min: 1, max: 1000 }),
        async (files, cuts, level, seed) => {
          const work = await Deno.makeTempDir({ prefix: "erofs-oci-index-prop-" });
          try {
            // Directories first; a file named like one of them is left out.
            await makeTreeDirs(`${work}/tree`);
            for (const file of files) {
              const data = file.text
                ? new TextEncoder().encode("tar index ".repeat(file.size / 10 + 1)).subarray(
                  0,
                  file.size,
                )
                : patternBytes(file.size, seed);
              const path = `${work}/tree/${file.dir}/${file.name}`;
              if (TREE_DIRS.has(treePath(file))) continue;
              await Deno.writeFile(path, data);
            }
            const tar = await tarOfTree(`${work}/tree`);
            const gz = gzipMembers(tar, cuts, { level });

            const paths = indexPaths(work);
            const result = await indexGzipLayer(ReadableStream.from([gz]), paths, {
              buildTimeSec: 1700000000,
              spanBytes: 256 * 1024,
            });
            assert.equal(result.tarBytes, tar.length);
            assert.ok(tarIndexLayout(await Deno.readFile(paths.meta)).tarBytes <= tar.length);
            const reader = await GzipRandomAccess.open(
              new MemorySource(gz),
              new MemorySource(await Deno.readFile(paths.zinfo)),
              {
                pieceDigests: {
                  bytes: await Deno.readFile(paths.pieces),
                  pieceBytes: result.pieceBytes,
                  totalBytes: result.tarBytes,
                },
              },
            );
            try {
              const random = prng(seed);
              for (let i = 0; i < 30; i++) {
                const at = Math.floor(random() * tar.length);
                const n = Math.min(tar.length - at, Math.floor(random() * 200_000));
                const got = await reader.read(at, n);
                assert.ok(
                  got.every((b, j) => b === tar[at + j]),
                  `read ${at}+${n} of ${tar.length}`,
                );
              }
            } finally {
              reader.close();
            }
          } finally {
            await Deno.remove(work, { recursive: true });
          }
        },
      ),
      { numRuns: 12 },
    );
  },
});
