/**
 * Prints how many reads a lazy mount needs to get the whole directory tree of an EROFS image
 * (used by scripts/bench-build.sh): the metadata walk's own reads over the local file, the
 * pages it needs, how far into the image they reach, and how many 2 MiB chunks (what the
 * mount's cache fetches per registry GET) hold them.
 * Usage: deno run -A scripts/bench_build_layout.ts IMAGE...
 */
import { walkErofsMetadata } from "../lib/erofs/metadata_walk.ts";

const CHUNK_BYTES = 2 << 20;

for (const path of Deno.args) {
  // The whole image in memory keeps the walk's parallel reads simple (bench images ~150 MB).
  const image = await Deno.readFile(path);
  const size = image.length;
  let reads = 0;
  const read = (offset: number, length: number) => {
    reads++;
    return Promise.resolve(image.subarray(offset, Math.min(size, offset + length)));
  };
  for (const fileInodes of [false, true]) {
    reads = 0;
    const walk = await walkErofsMetadata(read, size, { fileInodes });
    const pages = [...walk.pages.keys()];
    const chunks = new Set(pages.map((p) => Math.floor((p * walk.pageBytes) / CHUNK_BYTES)));
    const lastByte = (Math.max(...pages) + 1) * walk.pageBytes;
    console.log(
      [
        path.split("/").pop(),
        fileInodes ? "dirs+file inodes" : "dirs only (find)",
        `${walk.entries} entries`,
        `${pages.length} pages (${(walk.pagesBytes / 1024).toFixed(0)} KiB)`,
        `up to byte ${lastByte} of ${size} (${((lastByte / size) * 100).toFixed(1)}%)`,
        `${chunks.size} x 2 MiB chunks`,
        `${reads} walk reads`,
        walk.incomplete ? `INCOMPLETE: ${walk.incomplete}` : "",
      ].join("\t"),
    );
  }
}
