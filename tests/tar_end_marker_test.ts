/**
 * A tar that ends right after its last member, or with a lone zero block, is read as Go's
 * archive/tar and GNU tar read it (container runtimes unpack such layers): `build` makes the
 * image, and `build --tar-index` / `index` make metadata whose tar device stays inside the tar
 * (one that reached past it would read beyond the blob). A pax header with no member after it
 * is still a truncated archive.
 */
import assert from "node:assert/strict";
import { path, PEER_BIN, requires, root } from "./_support/requires.ts";
import { assertCliError, runCli } from "./_support/cli.ts";
import { concat, encodeTar, type TestMember } from "./_support/tar_encode.ts";
import { patternBytes } from "./_support/memory_source.ts";
import { run, withMountedImage } from "./_support/erofs_tree.ts";
import { checkErofsSuperblock } from "../lib/erofs/superblock.ts";
import { withTempDir } from "./_support/temp_dir.ts";

const ignore = requires(root(), path(`${PEER_BIN}/fsck.erofs`, "fsck.erofs 1.9.3"));
const BIG = patternBytes(70_000, 5);
const MEMBERS: TestMember[] = [
  { name: "d/", type: "5", mode: 0o755 },
  { name: "d/f", data: BIG, mode: 0o644 },
  { name: "l", type: "2", linkname: "d/f" },
  { name: "e", data: new TextEncoder().encode("end"), mode: 0o600 },
];

/** Blocks of the tar device in a tar-index image (device slot 1's block count). */
function tarDeviceBlocks(meta: Uint8Array): number {
  return new DataView(meta.buffer, meta.byteOffset).getUint32(1152 + 64, true);
}

async function fsckOk(args: string[]): Promise<void> {
  const out = await run(`${PEER_BIN}/fsck.erofs`, args);
  assert.equal(out.code, 0, `fsck.erofs ${args.join(" ")}: ${out.stdout}${out.stderr}`);
}

Deno.test({
  name: "tar without end-of-archive marker (or a lone zero block): built and indexed inside it",
  ignore,
  fn: () =>
    withTempDir("erofs-oci-tar-end-", async (work) => {
      const members = encodeTar(MEMBERS, false);
      for (const markerBlocks of [0, 1, 2]) {
        const tar = `${work}/m${markerBlocks}.tar`;
        Deno.writeFileSync(tar, concat([members, new Uint8Array(512 * markerBlocks)]));

        const image = `${work}/m${markerBlocks}.erofs`;
        const built = await runCli(["build", tar, "-o", image, "--timestamp", "0"]);
        assert.equal(built.code, 0, built.stderr);
        await fsckOk([`--extract=${work}/x${markerBlocks}`, image]);
        assert.deepEqual(Deno.readFileSync(`${work}/x${markerBlocks}/d/f`), BIG);
        assert.equal(Deno.readLinkSync(`${work}/x${markerBlocks}/l`), "d/f");

        const meta = `${work}/m${markerBlocks}.meta.erofs`;
        const indexed = await runCli(["build", "--tar-index", tar, "-o", meta]);
        assert.equal(indexed.code, 0, indexed.stderr);
        // As mkfs.erofs --tar=i counts it: the members and the marker's zero blocks, if any.
        assert.equal(tarDeviceBlocks(Deno.readFileSync(meta)), members.length / 512 + markerBlocks);
        await fsckOk([`--device=${tar}`, `--extract=${work}/y${markerBlocks}`, meta]);
        assert.deepEqual(Deno.readFileSync(`${work}/y${markerBlocks}/d/f`), BIG);
        const combined = `${work}/m${markerBlocks}.combined`;
        Deno.writeFileSync(combined, concat([Deno.readFileSync(meta), Deno.readFileSync(tar)]));
        const read = await withMountedImage(combined, async (dir) => ({
          big: await Deno.readFile(`${dir}/d/f`),
          end: await Deno.readTextFile(`${dir}/e`),
        }));
        assert.deepEqual(read.big, BIG);
        assert.equal(read.end, "end");

        // `index` of the plain tar and of its gzip: the same device size.
        const gz = `${tar}.gz`;
        const zipped = new Blob([Deno.readFileSync(tar)]).stream()
          .pipeThrough(new CompressionStream("gzip"));
        Deno.writeFileSync(gz, new Uint8Array(await new Response(zipped).arrayBuffer()));
        for (const file of [tar, gz]) {
          const out = `${work}/idx-${markerBlocks}-${file.endsWith(".gz") ? "gz" : "tar"}`;
          const made = await runCli(["index", file, "-o", out]);
          assert.equal(made.code, 0, made.stderr);
          const metaFile = [...Deno.readDirSync(out)].find((e) => e.name.endsWith(".meta.erofs"));
          assert(metaFile, `no meta image in ${out}`);
          assert.equal(
            tarDeviceBlocks(Deno.readFileSync(`${out}/${metaFile.name}`)),
            members.length / 512 + markerBlocks,
            file,
          );
        }
        assert(checkErofsSuperblock(Deno.readFileSync(meta)).extraDevices === 1);
      }
    }),
});

Deno.test({
  name: "tar ending after a pax header, before its member: refused as truncated",
  ignore,
  fn: () =>
    withTempDir("erofs-oci-tar-end-", async (work) => {
      const tar = `${work}/cut.tar`;
      const whole = encodeTar([{ name: "f", pax: [["path", "x".repeat(300)]] }], false);
      Deno.writeFileSync(tar, whole.subarray(0, 1024)); // the pax header and its record only
      assertCliError(
        await runCli(["build", tar, "-o", `${work}/out.erofs`]),
        1,
        /tar archive truncated in the member after a pax\/GNU header \(input ends at byte 1024\)/,
      );
      assert.deepEqual([...Deno.readDirSync(work)].map((e) => e.name), ["cut.tar"]);
    }),
});
