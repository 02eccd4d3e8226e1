/**
 * decompressTar/openTar against real compressors (gzip, zstd CLIs): plain, gzip, multi-member
 * gzip, multi-frame zstd; and the guards: size and ratio caps (bombs), a zstd window beyond
 * the limit, corrupt and truncated input, unsupported compressions.
 */
import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { FormatError } from "../lib/errors.ts";
import { type DecompressOptions, decompressTar, openTar } from "../lib/tar/decompress.ts";
import { readTar } from "../lib/tar/reader.ts";
import { command, REPO_ROOT, requires } from "./_support/requires.ts";
import { concat, encodeTar, streamOf } from "./_support/tar_encode.ts";

const enc = new TextEncoder();

async function compress(program: string, args: string[], input: Uint8Array): Promise<Uint8Array> {
  const child = new Deno.Command(program, { args, stdin: "piped", stdout: "piped" }).spawn();
  const writing = (async () => {
    const w = child.stdin.getWriter();
    await w.write(input);
    await w.close();
  })();
  const [out] = await Promise.all([child.output(), writing]);
  ok(out.success, `${program} failed`);
  return out.stdout;
}

async function members(
  bytes: Uint8Array,
  options?: DecompressOptions,
): Promise<{ compression: string; entries: [string, string][] }> {
  const { stream, compression } = await decompressTar(streamOf(bytes, 777), options);
  const entries: [string, string][] = [];
  for await (const e of readTar(stream)) {
    entries.push([e.path, new TextDecoder().decode(await new Response(e.body).arrayBuffer())]);
  }
  return { compression, entries };
}

const TAR_A = encodeTar([{ name: "a", data: enc.encode("first") }], false);
const TAR_B = encodeTar([{ name: "b", data: enc.encode("second") }]);
const BOTH = concat([TAR_A, TAR_B]);
const EXPECTED: [string, string][] = [["a", "first"], ["b", "second"]];

Deno.test({
  name: "plain, gzip, multi-member gzip, zstd, multi-frame zstd (with checksums)",
  ignore: requires(command("gzip"), command("zstd")),
  async fn() {
    deepEqual(await members(BOTH), { compression: "none", entries: EXPECTED });
    const gz = await compress("gzip", ["-c"], BOTH);
    deepEqual(await members(gz), { compression: "gzip", entries: EXPECTED });
    // Two gzip members (what pigz or `cat a.gz b.gz` make): DecompressionStream fails here.
    const gz2 = concat([
      await compress("gzip", ["-c"], TAR_A),
      await compress("gzip", ["-c"], TAR_B),
    ]);
    deepEqual(await members(gz2), { compression: "gzip", entries: EXPECTED });
    const zst = await compress("zstd", ["-q", "-c", "--check"], BOTH);
    deepEqual(await members(zst), { compression: "zstd", entries: EXPECTED });
    const zst2 = concat([
      await compress("zstd", ["-q", "-c"], TAR_A),
      await compress("zstd", ["-q", "-c", "--no-check", "--long=27"], TAR_B),
    ]);
    deepEqual(await members(zst2), { compression: "zstd", entries: EXPECTED });
    // Skippable frames (RFC 8878 §3.1.2: magic 0x184D2A5?, 4-byte size) between and after.
    const skippable = new Uint8Array([0x5a, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
    const zst3 = concat([
      await compress("zstd", ["-q", "-c"], TAR_A),
      skippable,
      await compress("zstd", ["-q", "-c"], TAR_B),
      skippable,
    ]);
    deepEqual(await members(zst3), { compression: "zstd", entries: EXPECTED });
    await rejects(members(zst3.subarray(0, zst3.length - 1)), /truncated/);
  },
});

Deno.test({
  name: "openTar reads a compressed file by path",
  ignore: requires(command("zstd")),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "tar-decompress-" });
    try {
      await Deno.writeFile(`${dir}/l.tar.zst`, await compress("zstd", ["-q", "-c"], BOTH));
      const { stream, compression } = await openTar(`${dir}/l.tar.zst`);
      equal(compression, "zstd");
      const names = [];
      for await (const e of readTar(stream)) names.push(e.path);
      deepEqual(names, ["a", "b"]);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: 'openTar("-") reads standard input',
  ignore: requires(command("gzip")),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "tar-stdin-" });
    try {
      const script = `${dir}/list.ts`;
      await Deno.writeTextFile(
        script,
        `import { openTar } from "${REPO_ROOT}/lib/tar/decompress.ts";
import { readTar } from "${REPO_ROOT}/lib/tar/reader.ts";
const { stream, compression } = await openTar("-");
const names = [compression];
for await (const e of readTar(stream)) names.push(e.path);
console.log(JSON.stringify(names));`,
      );
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "--config", `${REPO_ROOT}/deno.json`, script],
        stdin: "piped",
        stdout: "piped",
      }).spawn();
      const writer = child.stdin.getWriter();
      const gz = await compress("gzip", ["-c"], BOTH);
      const [out] = await Promise.all([
        child.output(),
        writer.write(gz).then(() => writer.close()),
      ]);
      deepEqual(JSON.parse(new TextDecoder().decode(out.stdout)), ["gzip", "a", "b"]);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** A tar holding one file of `sizeBytes` zeros, produced as a stream (never whole in memory). */
function zeroTarStream(sizeBytes: number): ReadableStream<Uint8Array> {
  const header = encodeTar([{ name: "zeros", sizeField: sizeBytes }], false);
  let sent = -1;
  return new ReadableStream<Uint8Array>({
    pull(c) {
      if (sent === -1) c.enqueue(header);
      else if (sent < sizeBytes) c.enqueue(new Uint8Array(Math.min(1 << 20, sizeBytes - sent)));
      else {
        c.enqueue(new Uint8Array(1024));
        c.close();
      }
      sent = sent === -1 ? 0 : sent + (1 << 20);
    },
  });
}

async function compressStream(program: string, args: string[], input: ReadableStream<Uint8Array>) {
  const child = new Deno.Command(program, { args, stdin: "piped", stdout: "piped" }).spawn();
  const piping = input.pipeTo(child.stdin);
  const [out] = await Promise.all([child.output(), piping]);
  ok(out.success);
  return out.stdout;
}

async function drain(bytes: Uint8Array, options: DecompressOptions): Promise<void> {
  const { stream } = await decompressTar(streamOf(bytes, 65536), options);
  for await (const e of readTar(stream)) for await (const _ of e.body) { /* discard */ }
}

Deno.test({
  name: "bombs: 512 MiB of zeros from ~0.5 MB gzip / ~16 KB zstd stops at the size or ratio cap",
  ignore: requires(command("gzip"), command("zstd")),
  async fn() {
    const total = 512 << 20;
    const gz = await compressStream("gzip", ["-1", "-c"], zeroTarStream(total));
    const zst = await compressStream("zstd", ["-q", "-c", "-T1"], zeroTarStream(total));
    ok(gz.length < 8 << 20 && zst.length < 1 << 20, `${gz.length} ${zst.length}`);
    const before = Deno.memoryUsage().rss;
    for (const bomb of [gz, zst]) {
      await rejects(drain(bomb, { maxOutputBytes: 64 << 20 }), /exceeds 67108864 bytes/);
      await rejects(drain(bomb, { maxRatio: 100, ratioGraceBytes: 1 << 20 }), (e: unknown) => {
        ok(e instanceof FormatError && /expands more than 100:1/.test(e.message), String(e));
        return true;
      });
    }
    // Without caps the whole 512 MiB streams through in bounded memory.
    await drain(zst, {});
    const grewMiB = (Deno.memoryUsage().rss - before) / (1 << 20);
    ok(grewMiB < 300, `RSS grew ${grewMiB.toFixed(0)} MiB`);
  },
});

Deno.test("zstd: a frame declaring a 1 GiB window is refused before decoding", async () => {
  // magic, descriptor (no single segment), window descriptor 2^30, empty last raw block.
  const frame = new Uint8Array([0x28, 0xb5, 0x2f, 0xfd, 0x00, 20 << 3, 0x01, 0x00, 0x00]);
  await rejects(members(frame), /a frame needs a window over the 134217728-byte limit/);
  // Single-segment frames use the declared content size as the window.
  const single = new Uint8Array([0x28, 0xb5, 0x2f, 0xfd, 0xa0, 0, 0, 0, 0x40, 0x01, 0, 0]);
  await rejects(members(single), /window/);
  equal(
    (await members(frame, { maxZstdWindowBytes: 1 << 30 }).catch((e) => e)).message,
    "empty input: not a tar archive",
  );
});

Deno.test({
  name: "zstd: a flipped bit in stored (raw) data fails the content checksum, never wrong bytes",
  ignore: requires(command("zstd")),
  async fn() {
    // Random data makes zstd store raw blocks, which no decoder can find fault with: only the
    // frame checksum tells (the pure-JS fzstd used before returned the altered bytes).
    const tar = encodeTar([{ name: "r", data: crypto.getRandomValues(new Uint8Array(60_000)) }]);
    const zst = await compress("zstd", ["-q", "-c", "--check"], tar);
    const bad = zst.slice();
    bad[Math.floor(zst.length / 2)] ^= 0x01;
    await rejects(members(bad), /content checksum mismatch/);
    equal((await members(zst)).entries.length, 1);
  },
});

Deno.test({
  name: "corrupt and truncated gzip/zstd, and xz/bzip2 are FormatErrors",
  ignore: requires(command("gzip"), command("zstd")),
  async fn() {
    const gz = await compress("gzip", ["-c"], BOTH);
    const zst = await compress("zstd", ["-q", "-c"], BOTH);
    await rejects(members(gz.subarray(0, gz.length - 10)), FormatError);
    await rejects(members(zst.subarray(0, zst.length - 3)), /truncated/);
    const badGz = gz.slice();
    badGz[20] ^= 0xff;
    await rejects(members(badGz), FormatError);
    const badZst = zst.slice();
    badZst[zst.length - 20] ^= 0xff;
    await rejects(members(badZst), FormatError);
    await rejects(members(concat([zst, enc.encode("garbage")])), /bad frame magic/);
    await rejects(members(new Uint8Array([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0, 1])), /not supported/);
    await rejects(members(enc.encode("BZh91AY&SY")), /not supported/);
  },
});
