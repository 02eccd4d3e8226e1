/**
 * Pieces of the random-tree properties over tar.gz layers (tests/gzip_aligned_property_test.ts,
 * tests/gzip_index_property_test.ts): random files in a few fixed directories, the tree as a
 * GNU tar, the tar cut into gzip members at random places, and where indexGzipLayer writes.
 */
import assert from "node:assert/strict";
import { gzipSync, type ZlibOptions } from "node:zlib";
import fc from "fast-check";
import { concat } from "./tar_encode.ts";

/** The directories every random tree has (a file whose path is one of them is left out). */
export const TREE_DIRS: ReadonlySet<string> = new Set(["a", "a/b", "c"]);

/** A random file's place: one of TREE_DIRS or the root, and a name. */
export const treePlaceArb = {
  dir: fc.constantFrom("", ...TREE_DIRS),
  name: fc.stringMatching(/^[a-z][a-z0-9_.-]{0,40}$/),
};

/** 1 to `maxLength` files from `fileArb`, no two at the same path. */
export function treeFilesArb<T extends { dir: string; name: string }>(
  fileArb: fc.Arbitrary<T>,
  maxLength: number,
): fc.Arbitrary<T[]> {
  return fc.uniqueArray(fileArb, {
    minLength: 1,
    maxLength,
    selector: (f) => `${f.dir}/${f.name}`,
  });
}

/** Up to `maxCuts` places (fractions of the tar) where a new gzip member starts. */
export function memberCutsArb(maxCuts: number): fc.Arbitrary<number[]> {
  return fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: maxCuts });
}

/** The file's path below the tree root. */
export function treePath(file: { dir: string; name: string }): string {
  return file.dir ? `${file.dir}/${file.name}` : file.name;
}

/** Creates `tree` with all of TREE_DIRS. */
export async function makeTreeDirs(tree: string): Promise<void> {
  for (const dir of TREE_DIRS) await Deno.mkdir(`${tree}/${dir}`, { recursive: true });
}

/** GNU tar of `tree` (sorted by name, POSIX format) on stdout. */
export async function tarOfTree(tree: string, extraArgs: string[] = []): Promise<Uint8Array> {
  const args = ["-C", tree, "--sort=name", "--format=posix", ...extraArgs, "-cf", "-", "."];
  const out = await new Deno.Command("tar", { args, stdout: "piped", stderr: "piped" }).output();
  assert.ok(out.success, `tar ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  return out.stdout;
}

/** `tar` gzipped as one member per piece between the `cuts`, the members concatenated. */
export function gzipMembers(tar: Uint8Array, cuts: number[], options?: ZlibOptions): Uint8Array {
  const bounds = [
    0,
    ...cuts.map((c) => Math.floor(c * tar.length)).sort((a, b) => a - b),
    tar.length,
  ];
  return concat(bounds.slice(1).map((end, i) => gzipSync(tar.subarray(bounds[i], end), options)));
}

/** Where indexGzipLayer writes its meta image, zinfo and piece digests under `work`. */
export function indexPaths(work: string): { meta: string; zinfo: string; pieces: string } {
  return { meta: `${work}/m.erofs`, zinfo: `${work}/z.zinfo`, pieces: `${work}/p` };
}
