/**
 * Damage inflate cannot see — a zinfo window that lies, a flipped byte in a stored deflate
 * block — returns wrong bytes without piece digests (shown here, so the test proves the point)
 * and fails the read with them.
 */
import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import { GzipRandomAccess } from "../lib/gzip/gzip_random_access.ts";
import { PieceDigests } from "../lib/gzip/piece_digests.ts";
import { ZinfoBuilder } from "../lib/gzip/zinfo_builder.ts";
import { Zinfo, ZINFO_CHECKPOINT_BYTES, ZINFO_HEADER_BYTES } from "../lib/gzip/zinfo.ts";
import { FormatError } from "../lib/errors.ts";
import { MemorySource, patternBytes } from "./_support/memory_source.ts";
import { gunzip, prng } from "./_support/gzip_data.ts";
import { command, FIXTURES, path, requires } from "./_support/requires.ts";

const ignore = requires(command("gzip"), path(`${FIXTURES}/big-multi.zinfo`, "shared fixtures"));
const PIECE = 256 * 1024;

/** Our zinfo + digests of `gz` (the builder's checkpoints equal erofs-utils' on the fixtures). */
function index(gz: Uint8Array, spanBytes?: number) {
  const builder = new ZinfoBuilder({ pieceBytes: PIECE, spanBytes });
  for (const _ of builder.feed(gz)) { /* discard */ }
  const zinfo = builder.finish();
  return { zinfo, digests: builder.pieceDigests!, total: builder.uncompressedBytes };
}

async function reader(gz: Uint8Array, zinfo: Uint8Array, digests?: Uint8Array, total = 0) {
  const z = await Zinfo.open(new MemorySource(zinfo), gz.length);
  const verify = digests ? PieceDigests.from(digests, PIECE, z.checkpoints, total) : undefined;
  return new GzipRandomAccess(new MemorySource(gz), z, { verify, cacheBytes: 4 << 20 });
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

Deno.test({
  name: "piece digests: verified random reads of the fixtures equal the tar",
  ignore,
  async fn() {
    for (const name of ["big", "big-multi"]) {
      const gz = await Deno.readFile(`${FIXTURES}/${name}.tar.gz`);
      const tar = await gunzip(`${FIXTURES}/${name}.tar.gz`);
      const built = index(gz);
      // The digests fit erofs-utils' own zinfo too: same checkpoints.
      const r = await reader(
        gz,
        await Deno.readFile(`${FIXTURES}/${name}.zinfo`),
        built.digests,
        tar.length,
      );
      try {
        const random = prng(3);
        for (let i = 0; i < 200; i++) {
          const at = Math.floor(random() * tar.length);
          const n = Math.min(tar.length - at, Math.floor(random() * 300_000));
          assert.ok(same(await r.read(at, n), tar.subarray(at, at + n)), `${name} ${at}+${n}`);
        }
        await assert.rejects(() => r.read(tar.length - 1, 2), /past the end/);
      } finally {
        r.close();
      }
    }
  },
});

Deno.test({
  name: "piece digests: a lying zinfo window gives wrong bytes unchecked, an error checked",
  ignore,
  async fn() {
    const gz = await Deno.readFile(`${FIXTURES}/big.tar.gz`);
    const tar = await gunzip(`${FIXTURES}/big.tar.gz`);
    const built = index(gz);
    const lying = (await Deno.readFile(`${FIXTURES}/big.zinfo`)).slice();
    // Checkpoint 1 is mid-member (out 4402292): its window feeds back-references.
    const windowAt = ZINFO_HEADER_BYTES + ZINFO_CHECKPOINT_BYTES + 17;
    lying.fill(0x41, windowAt, windowAt + 32768);
    const at = 4402292, n = 200_000;

    const unchecked = await reader(gz, lying);
    try {
      // Inflate cannot tell: it returns bytes, wrong ones.
      const got = await unchecked.read(at, n);
      assert.ok(!same(got, tar.subarray(at, at + n)), "lie not visible");
    } finally {
      unchecked.close();
    }
    const checked = await reader(gz, lying, built.digests, tar.length);
    try {
      await assert.rejects(() => checked.read(at, n), (e: Error) => {
        assert.ok(e instanceof FormatError);
        return /does not match its index digest|corrupt/.test(e.message);
      });
      assert.ok(same(await checked.read(0, 4096), tar.subarray(0, 4096)), "other spans still read");
    } finally {
      checked.close();
    }
  },
});

Deno.test("piece digests: a flipped byte in a stored block is caught", async () => {
  const data = patternBytes(3_000_000, 4);
  const gz = gzipSync(data, { level: 0 }); // stored blocks: any byte flip still inflates
  const built = index(gz, 1 << 20);
  const bad = gz.slice();
  bad[2_000_000] ^= 0x20;
  const unchecked = await reader(bad, built.zinfo);
  try {
    assert.ok(!same(await unchecked.read(0, data.length), data), "flip not visible");
  } finally {
    unchecked.close();
  }
  const checked = await reader(bad, built.zinfo, built.digests, built.total);
  try {
    await assert.rejects(() => checked.read(0, data.length), /does not match its index digest/);
    assert.ok(same(await checked.read(0, 100_000), data.subarray(0, 100_000)));
  } finally {
    checked.close();
  }
});

Deno.test("piece digests: a digest file of the wrong size is refused", async () => {
  const gz = gzipSync(patternBytes(1_000_000, 2));
  const built = index(gz);
  const z = await Zinfo.open(new MemorySource(built.zinfo), gz.length);
  assert.throws(
    () => PieceDigests.from(built.digests.subarray(32), PIECE, z.checkpoints, built.total),
    /expected 4 digests/,
  );
  assert.throws(
    () => PieceDigests.from(built.digests, PIECE, z.checkpoints, built.total + PIECE),
    /expected 5 digests/,
  );
  assert.throws(
    () => PieceDigests.from(built.digests, 7, z.checkpoints, built.total),
    /piece size/,
  );
});
