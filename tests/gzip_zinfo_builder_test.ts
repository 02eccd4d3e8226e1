/**
 * Our zinfo builder against erofs-utils 1.9.3 (fixture zinfo files and its check_zinfo.py),
 * and as a property: random data → gzip (one or more members, odd headers) → zinfo → random
 * reads through GzipRandomAccess equal the data.
 */
import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import fc from "fast-check";
import { command, FIXTURES, path, requires } from "./_support/requires.ts";
import { MemorySource } from "./_support/memory_source.ts";
import { buildZinfo, gunzipIndexed, ZinfoBuilder } from "../lib/gzip/zinfo_builder.ts";
import { GzipRandomAccess } from "../lib/gzip/gzip_random_access.ts";
import { ZinfoFileWriter } from "../lib/gzip/zinfo_file.ts";
import { ZINFO_CHECKPOINT_BYTES, ZINFO_HEADER_BYTES } from "../lib/gzip/zinfo.ts";
import { FormatError } from "../lib/errors.ts";
import { gunzip, prng } from "./_support/gzip_data.ts";
import { concat } from "./_support/tar_encode.ts";
import { crc32 } from "../ffi/zlib.ts";

const fixtures = path(`${FIXTURES}/big-multi.zinfo`, "shared fixtures");

async function* chunks(bytes: Uint8Array, sizes: () => number): AsyncGenerator<Uint8Array> {
  for (let at = 0; at < bytes.length;) {
    const n = Math.max(1, sizes());
    yield bytes.subarray(at, at + n);
    at += n;
  }
}

for (const name of ["layer", "big", "big-multi"]) {
  Deno.test({
    name: `zinfo builder matches erofs-utils 1.9.3 and check_zinfo.py: ${name}`,
    ignore: requires(command("gzip"), command("python3"), fixtures),
    async fn() {
      const gz = await Deno.readFile(`${FIXTURES}/${name}.tar.gz`);
      const peer = await Deno.readFile(`${FIXTURES}/${name}.zinfo`);
      const builder = new ZinfoBuilder();
      // Odd chunk sizes so headers and trailers straddle chunks.
      const random = prng(7);
      const output: Uint8Array[] = [];
      for await (
        const piece of gunzipIndexed(chunks(gz, () => Math.floor(random() * 70_000)), builder)
      ) {
        output.push(piece);
      }
      const ours = builder.finish();
      assert.deepEqual(concat(output), await gunzip(`${FIXTURES}/${name}.tar.gz`));
      assert.equal(ours.length, peer.length);
      const count = new DataView(ours.buffer).getUint32(0, true);
      for (let i = 0; i < count; i++) {
        const at = ZINFO_HEADER_BYTES + i * ZINFO_CHECKPOINT_BYTES;
        assert.deepEqual(ours.subarray(at, at + 17), peer.subarray(at, at + 17), `checkpoint ${i}`);
        // erofs-utils writes a stale buffer as the (unused) window at later member starts.
        const memberStart = name === "big-multi" && (i === 1 || i === 3);
        if (!memberStart) {
          assert.deepEqual(
            ours.subarray(at, at + ZINFO_CHECKPOINT_BYTES),
            peer.subarray(at, at + ZINFO_CHECKPOINT_BYTES),
          );
        }
      }
      const dir = await Deno.makeTempDir({ prefix: "zinfo-builder-" });
      try {
        await Deno.writeFile(`${dir}/ours.zinfo`, ours);
        const check = await new Deno.Command("python3", {
          args: [`${FIXTURES}/check_zinfo.py`, `${dir}/ours.zinfo`, `${FIXTURES}/${name}.tar.gz`],
          stdout: "piped",
        }).output();
        const text = new TextDecoder().decode(check.stdout);
        assert.ok(check.success && text.includes("RESULT: OK"), text);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}

/** A gzip member with optional FEXTRA/FNAME/FCOMMENT/FHCRC header fields (RFC 1952 §2.3). */
function member(data: Uint8Array, level: number, flags: number): Uint8Array {
  const plain = gzipSync(data, { level });
  const extra: number[] = [];
  if (flags & 0x04) extra.push(5, 0, 1, 2, 3, 4, 5);
  if (flags & 0x08) extra.push(...new TextEncoder().encode("name.tar"), 0);
  if (flags & 0x10) extra.push(...new TextEncoder().encode("a comment"), 0);
  const header = plain.slice(0, 10);
  header[3] = flags;
  if (flags & 0x02) {
    // CRC16: the low half of the CRC-32 of the header before it (RFC 1952 §2.3.1).
    const crc = crc32(0, concat([header, new Uint8Array(extra)]).slice()) & 0xffff;
    extra.push(crc & 0xff, crc >> 8);
  }
  return concat([header, new Uint8Array(extra), plain.subarray(10)]);
}

/** Data mixing runs of text-like bytes (compressible) and noise. */
function mixedData(size: number, seed: number): Uint8Array {
  const random = prng(seed);
  const out = new Uint8Array(size);
  let at = 0;
  while (at < size) {
    const run = Math.min(size - at, 1 + Math.floor(random() * 200_000));
    if (random() < 0.5) { for (let i = 0; i < run; i++) out[at + i] = random() * 256; }
    else for (let i = 0; i < run; i++) out[at + i] = 97 + ((i * 7 + (i >> 5)) % 13);
    at += run;
  }
  return out;
}

Deno.test("zinfo builder property: random gzip streams → zinfo → random reads equal", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 0, max: 3_000_000 }),
      fc.integer({ min: 1, max: 2 ** 31 }),
      fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 4 }),
      fc.integer({ min: 1, max: 9 }),
      fc.constantFrom(0, 0x04, 0x08, 0x1e),
      fc.constantFrom(32 * 1024, 200 * 1024, 4 * 1024 * 1024),
      fc.constantFrom("zlib" as const, "ts" as const),
      async (size, seed, cuts, level, flags, spanBytes, inflater) => {
        const data = mixedData(size, seed);
        const bounds = [0, ...cuts.map((c) => Math.floor(c * size)).sort((a, b) => a - b), size];
        const members: Uint8Array[] = [];
        for (let i = 1; i < bounds.length; i++) {
          members.push(member(data.subarray(bounds[i - 1], bounds[i]), level, flags));
        }
        const gz = concat(members);
        const random = prng(seed);
        const built = await buildZinfo(chunks(gz, () => Math.floor(random() * 100_000)), {
          spanBytes,
        });
        assert.equal(built.uncompressedBytes, size);
        assert.equal(built.members, members.length);
        const reader = await GzipRandomAccess.open(
          new MemorySource(gz),
          new MemorySource(built.zinfo),
          {
            cacheBytes: 1 << 20,
            pieceBytes: 64 * 1024,
            inflater,
          },
        );
        try {
          for (let i = 0; i < 40 && size > 0; i++) {
            const offset = Math.floor(random() * size);
            const length = Math.min(size - offset, Math.floor(random() * 300_000));
            const got = await reader.read(offset, length);
            assert.ok(
              got.every((b, j) => b === data[offset + j]),
              `read ${offset}+${length} of ${size}`,
            );
          }
          await assert.rejects(() => reader.read(size, 1), FormatError);
        } finally {
          reader.close();
        }
      },
    ),
    { numRuns: 40 },
  );
});

Deno.test("zinfo builder refuses corrupt, truncated and trailing-garbage gzip", async () => {
  const data = mixedData(300_000, 3);
  const gz = member(data, 6, 0);
  const once = (bytes: Uint8Array) =>
    buildZinfo((async function* () {
      yield bytes;
    })());
  await once(gz);
  const badCrc = gz.slice();
  badCrc[badCrc.length - 6] ^= 1;
  await assert.rejects(() => once(badCrc), /fails its check/);
  await assert.rejects(() => once(gz.subarray(0, gz.length - 3)), /truncated/);
  await assert.rejects(() => once(gz.subarray(0, 5)), /truncated/);
  await assert.rejects(() => once(concat([gz, new Uint8Array([0x50, 0x4b])])), FormatError);
  const badBlock = gz.slice();
  badBlock[10] |= 0x06; // BTYPE 11: reserved (RFC 1951 §3.2.3)
  await assert.rejects(() => once(badBlock), /invalid block type/);
  // Zero padding after the last member is accepted, as gzip(1) does.
  assert.equal((await once(concat([gz, new Uint8Array(512)]))).uncompressedBytes, data.length);
});

Deno.test({
  name: "zinfo builder streams checkpoints to a file (no windows held) with the same bytes",
  ignore: requires(fixtures),
  async fn() {
    const gz = await Deno.readFile(`${FIXTURES}/big-multi.tar.gz`);
    const whole = await buildZinfo((async function* () {
      yield gz;
    })());
    const dir = await Deno.makeTempDir({ prefix: "zinfo-file-" });
    try {
      const writer = ZinfoFileWriter.create(`${dir}/out.zinfo`);
      const builder = new ZinfoBuilder({ onCheckpoint: (cp) => writer.add(cp) });
      try {
        for (const _ of builder.feed(gz)) { /* discard */ }
        writer.finish(builder.finish());
        writer.commit();
      } finally {
        writer.abort(); // nothing left once committed
      }
      assert.equal(builder.checkpoints.length, 0);
      assert.equal(writer.count, 4);
      assert.deepEqual(await Deno.readFile(`${dir}/out.zinfo`), whole.zinfo);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("gzip headers: reserved flags and endless names are refused", async () => {
  const data = mixedData(10_000, 5);
  const once = (bytes: Uint8Array) =>
    buildZinfo((async function* () {
      yield bytes;
    })());
  const reserved = member(data, 6, 0);
  reserved[3] = 0x20;
  await assert.rejects(() => once(reserved), /reserved header flags/);
  const endless = concat([member(data, 6, 0).subarray(0, 10), new Uint8Array(100_000).fill(65)]);
  endless[3] = 0x08; // FNAME never terminated
  await assert.rejects(() => once(endless), /longer than 68 KiB/);
  const notGzip = member(data, 6, 0);
  notGzip[2] = 7;
  await assert.rejects(() => once(notGzip), /not a gzip member at compressed offset 0$/);
  // Bytes after the stream that are neither gzip nor zero padding: said to be that.
  const trailing = concat([member(data, 6, 0), new TextEncoder().encode("GARBAGE".repeat(10))]);
  await assert.rejects(
    () => once(trailing),
    (error: Error & { hint?: string }) => {
      assert.match(error.message, /bytes that are not gzip follow the gzip stream/);
      assert.match(error.hint ?? "", /only zero bytes may pad/);
      return true;
    },
  );
});
