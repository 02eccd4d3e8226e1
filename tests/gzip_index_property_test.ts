/**
 * Property: random trees → GNU tar → gzip in random members (random levels) → indexGzipLayer
 * (zinfo + meta + piece digests in one pass) → verified random range reads equal the tar, and
 * the meta refers to no more tar than there is.
 */
import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import fc from "fast-check";
import { indexGzipLayer } from "../lib/gzip/index_layer.ts";
import { GzipRandomAccess } from "../lib/gzip/gzip_random_access.ts";
import { tarIndexLayout } from "../lib/gzip/hybrid_tar.ts";
import { MemorySource, patternBytes } from "./_support/memory_source.ts";
import { prng } from "./_support/gzip_data.ts";
import { command, requires } from "./_support/requires.ts";

const fileArb = fc.record({
  dir: fc.constantFrom("", "a", "a/b", "c"),
  name: fc.stringMatching(/^[a-z][a-z0-9_.-]{0,40}$/),
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
        fc.uniqueArray(fileArb, {
          minLength: 1,
          maxLength: 25,
          selector: (f) => `${f.dir}/${f.name}`,
        }),
        fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 3 }),
        fc.integer({ min: 1, max: 9 }),
        fc.integer({ min: 1, max: 1000 }),
        async (files, cuts, level, seed) => {
          const work = await Deno.makeTempDir({ prefix: "erofs-oci-index-prop-" });
          try {
            // Directories first; a file named like one of them is left out.
            const dirs = new Set(["a", "a/b", "c"]);
            for (const dir of dirs) await Deno.mkdir(`${work}/tree/${dir}`, { recursive: true });
            for (const file of files) {
              const data = file.text
                ? new TextEncoder().encode("tar index ".repeat(file.size / 10 + 1)).subarray(
                  0,
                  file.size,
                )
                : patternBytes(file.size, seed);
              const path = `${work}/tree/${file.dir}/${file.name}`;
              if (dirs.has(file.dir ? `${file.dir}/${file.name}` : file.name)) continue;
              await Deno.writeFile(path, data);
            }
            const tarOut = await new Deno.Command("tar", {
              args: ["-C", `${work}/tree`, "--sort=name", "--format=posix", "-cf", "-", "."],
              stdout: "piped",
              stderr: "piped",
            }).output();
            assert.ok(tarOut.success, new TextDecoder().decode(tarOut.stderr));
            const tar = tarOut.stdout;
            const bounds = [
              0,
              ...cuts.map((c) => Math.floor(c * tar.length)).sort((a, b) => a - b),
              tar.length,
            ];
            const members: Uint8Array[] = [];
            for (let i = 1; i < bounds.length; i++) {
              members.push(gzipSync(tar.subarray(bounds[i - 1], bounds[i]), { level }));
            }
            const gz = new Uint8Array(members.reduce((n, m) => n + m.length, 0));
            members.reduce((at, m) => (gz.set(m, at), at + m.length), 0);

            const paths = {
              meta: `${work}/m.erofs`,
              zinfo: `${work}/z.zinfo`,
              pieces: `${work}/p`,
            };
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
