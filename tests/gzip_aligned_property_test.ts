/**
 * Property: random trees → GNU tar → tar.gz (random members) → `indexGzipLayer` (our meta and
 * zinfo) → the 4 KiB layout over the zinfo → the host kernel loop-mounts the device and every
 * file, symlink and hard link reads as in the tree; random device reads inside each file's
 * extent equal the tar.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { indexGzipLayer } from "../lib/gzip/index_layer.ts";
import { GzipRandomAccess } from "../lib/gzip/gzip_random_access.ts";
import { AlignedTarSource } from "../lib/gzip/aligned_tar.ts";
import { MemorySource, patternBytes } from "./_support/memory_source.ts";
import { command, requires, root } from "./_support/requires.ts";
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
    fc.integer({ min: 4090, max: 4100 }),
    fc.integer({ min: 1, max: 900_000 }),
  ),
  link: fc.constantFrom("none", "none", "hard", "symlink"),
});

async function run(cmd: string, args: string[]): Promise<Uint8Array> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  assert.ok(out.success, `${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  return out.stdout;
}

Deno.test({
  name: "aligned property: random tar.gz trees → index → 4 KiB device; the kernel reads the tree",
  ignore: requires(command("tar"), command("mount"), root()),
  async fn() {
    await fc.assert(
      fc.asyncProperty(
        treeFilesArb(fileArb, 30),
        memberCutsArb(2),
        fc.integer({ min: 1, max: 1000 }),
        async (files, cuts, seed) => {
          const work = await Deno.makeTempDir({ prefix: "erofs-oci-aligned-prop-" });
          let mounted = false;
          try {
            await makeTreeDirs(`${work}/tree`);
            let previous: string | undefined;
            const written: string[] = [];
            for (const file of files) {
              const rel = treePath(file);
              if (TREE_DIRS.has(rel)) continue;
              const path = `${work}/tree/${rel}`;
              if (file.link === "hard" && previous) await Deno.link(previous, path);
              else if (file.link === "symlink") await Deno.symlink(`../target-${file.size}`, path);
              else await Deno.writeFile(path, patternBytes(file.size, seed + file.size));
              if (file.link !== "symlink") previous = path;
              written.push(rel);
            }
            const tar = await tarOfTree(`${work}/tree`, ["--numeric-owner"]);
            const gz = gzipMembers(tar, cuts);
            const paths = indexPaths(work);
            await indexGzipLayer(ReadableStream.from([gz]), paths, {
              buildTimeSec: 1700000000,
              spanBytes: 256 * 1024,
            });
            const gzip = await GzipRandomAccess.open(
              new MemorySource(gz),
              new MemorySource(await Deno.readFile(paths.zinfo)),
            );
            const source = AlignedTarSource.open(await Deno.readFile(paths.meta), gzip);
            try {
              const e = source.index.extents;
              for (let k = 0; k < e.count; k++) {
                const skip = Math.floor((seed * (k + 1)) % Math.max(1, e.length[k]));
                const got = await source.read(e.deviceStart[k] + skip, e.length[k] - skip);
                const want = tar.subarray(e.tarStart[k] + skip, e.tarStart[k] + e.length[k]);
                assert.ok(got.every((b, j) => b === want[j]), `extent ${k}`);
              }
              await Deno.writeFile(`${work}/device`, await source.read(0, source.size));
            } finally {
              await source.close();
            }
            await Deno.mkdir(`${work}/mnt`);
            await run("mount", ["-t", "erofs", "-o", "ro,loop", `${work}/device`, `${work}/mnt`]);
            mounted = true;
            for (const rel of written) {
              const a = await Deno.lstat(`${work}/tree/${rel}`);
              const b = await Deno.lstat(`${work}/mnt/${rel}`);
              assert.equal(b.isSymlink, a.isSymlink, rel);
              if (a.isSymlink) {
                assert.equal(
                  await Deno.readLink(`${work}/mnt/${rel}`),
                  await Deno.readLink(`${work}/tree/${rel}`),
                );
                continue;
              }
              assert.equal(b.size, a.size, rel);
              assert.equal(b.nlink, a.nlink, rel);
              assert.deepEqual(
                await Deno.readFile(`${work}/mnt/${rel}`),
                await Deno.readFile(`${work}/tree/${rel}`),
                rel,
              );
            }
          } finally {
            if (mounted) await run("umount", [`${work}/mnt`]);
            await Deno.remove(work, { recursive: true });
          }
        },
      ),
      { numRuns: 25 },
    );
  },
});
