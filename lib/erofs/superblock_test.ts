import assert from "node:assert/strict";
import { FormatError } from "../errors.ts";
import { checkErofsSuperblock, EROFS_SUPER_END } from "./superblock.ts";
import { FIXTURES } from "../../tests/_support/requires.ts";

async function head(name: string): Promise<Uint8Array> {
  return (await Deno.readFile(`${FIXTURES}/${name}`)).subarray(0, EROFS_SUPER_END);
}

Deno.test("superblock: basic.erofs is 4 KiB blocks with no extra devices", async () => {
  const sb = checkErofsSuperblock(await head("basic.erofs"));
  assert.equal(sb.blockSizeBits, 12);
  assert.equal(sb.blockSizeBytes, 4096);
  assert.equal(sb.extraDevices, 0);
  assert.equal(sb.uuid, "00000000-0000-4000-8000-000000000001");
  assert.equal(sb.blocks, 1400832 / 4096);
  assert.equal(sb.buildTime, 1700000000n);
  assert.equal(sb.unknownIncompat, 0);
});

Deno.test("superblock: the tar-index meta image has 512-byte blocks and one extra device", async () => {
  const sb = checkErofsSuperblock(await head("layer.meta.erofs"));
  assert.equal(sb.blockSizeBytes, 512);
  assert.equal(sb.featureIncompat, 0x8);
  assert.ok(sb.features.includes("device_table"));
  assert.equal(sb.extraDevices, 1);
  assert.equal(sb.blocks, 61);
});

Deno.test("superblock: lz4 image names its compression features", async () => {
  const sb = checkErofsSuperblock(await head("basic-lz4.erofs"));
  assert.ok(sb.features.includes("zero_padding"), sb.features.join(","));
});

Deno.test("superblock: wrong magic, short input and silly block sizes are FormatErrors", async () => {
  const tar = await head("layer1.tar");
  assert.throws(
    () => checkErofsSuperblock(tar, "layer1.tar"),
    (error) =>
      error instanceof FormatError &&
      /not an EROFS image: layer1.tar has magic/.test(error.message),
  );
  assert.throws(() => checkErofsSuperblock(new Uint8Array(1100)), FormatError);
  const bad = new Uint8Array(await head("basic.erofs"));
  bad[1024 + 12] = 30;
  assert.throws(() => checkErofsSuperblock(bad), /block size 2\^30/);
});
