/**
 * `erofs-oci index FILE.tar.gz -o DIR` as a user runs it: zinfo identical to erofs-utils
 * 1.9.3's, digests of the fixture layer, a meta image that fsck.erofs 1.9.3 accepts with the
 * tar as device and that mounts (kernel EROFS over FUSE, lazily from the tar.gz) with the
 * expected tree; bad input fails with one line and leaves no files.
 */
import assert from "node:assert/strict";
import { runCli } from "./_support/cli.ts";
import { manifest } from "./_support/fuse_stack.ts";
import { expectedTarListing, withIndexFilesMounted } from "./_support/index_mounts.ts";
import { command, FIXTURES, path, PEER_BIN, requires, root } from "./_support/requires.ts";
import { checkIndexRecord, parseIndexRecord } from "../lib/gzip/index_record.ts";

const fixtures = path(`${FIXTURES}/big-multi.zinfo`, "shared fixtures");

async function withDir(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-index-test-" });
  try {
    await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function run(program: string, args: string[]): Promise<{ code: number; out: string }> {
  const out = await new Deno.Command(program, { args, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  return { code: out.code, out: text };
}

Deno.test({
  name:
    "index: zinfo equals erofs-utils', digests bind the layer, fsck.erofs 1.9.3 accepts the meta",
  ignore: requires(fixtures, path(`${PEER_BIN}/fsck.erofs`, "fsck.erofs 1.9.3")),
  async fn() {
    await withDir(async (dir) => {
      for (const name of ["layer", "big"]) {
        const result = await runCli([
          "index",
          `${FIXTURES}/${name}.tar.gz`,
          "-o",
          `${dir}/out`,
          "--timestamp",
          "1700000000",
        ], { timeoutMs: 60_000 });
        assert.equal(result.code, 0, result.stderr);
        assert.deepEqual(
          await Deno.readFile(`${dir}/out/${name}.zinfo`),
          await Deno.readFile(`${FIXTURES}/${name}.zinfo`),
        );
      }
      const record = parseIndexRecord(await Deno.readFile(`${dir}/out/layer.index.json`));
      checkIndexRecord(
        record,
        { digest: record.layer.digest, size: (await Deno.stat(`${FIXTURES}/layer.tar.gz`)).size },
        await Deno.readFile(`${dir}/out/layer.meta.erofs`),
        await Deno.readFile(`${dir}/out/layer.zinfo`),
        await Deno.readFile(`${dir}/out/layer.pieces`),
      );
      // 1710080 bytes of tar in 1 MiB pieces after the one checkpoint: 2 digests.
      assert.equal((await Deno.stat(`${dir}/out/layer.pieces`)).size, 64);
      assert.equal(record.pieces?.pieceBytes, 1 << 20);
      // OCI blob digest and diff_id of the fixture layer (fixtures README).
      assert.equal(
        record.layer.digest,
        "sha256:164bf5cabe46244c2b580833710a382d6420875c0a7719e4668d86860c9d727e",
      );
      assert.equal(record.layer.size, 1129602);
      assert.equal(
        record.diffId,
        "sha256:0525f2da1a32dbda20d1dfb306f1f25e2f04bde5db74d56c5c6d5438c58e2753",
      );
      assert.equal(record.tarBytes, 1710080);
      assert.equal(record.zinfo?.checkpoints, 1);
      const fsck = await run(`${PEER_BIN}/fsck.erofs`, [
        `--device=${FIXTURES}/layer.tar`,
        `--extract=${dir}/x`,
        `${dir}/out/layer.meta.erofs`,
      ]);
      assert.equal(fsck.code, 0, fsck.out);
      assert.deepEqual(await Deno.readFile(`${dir}/x/lorem.txt`), await extractedLorem());
    });
  },
});

/** lorem.txt as GNU tar extracts it from the fixture tar. */
async function extractedLorem(): Promise<Uint8Array> {
  const out = await new Deno.Command("tar", {
    args: ["-xOf", `${FIXTURES}/layer.tar`, "lorem.txt"],
    stdout: "piped",
  }).output();
  return out.stdout;
}

Deno.test({
  name: "index: our meta + zinfo over the tar.gz mount lazily with the expected tree",
  ignore: requires(root(), path("/dev/fuse"), command("python3"), command("mount"), fixtures),
  async fn() {
    await withDir(async (dir) => {
      const result = await runCli([
        "index",
        `${FIXTURES}/big-multi.tar.gz`,
        "-o",
        dir,
        "--span",
        "1048576",
        "--timestamp",
        "1700000000",
      ], { timeoutMs: 60_000 });
      assert.equal(result.code, 0, result.stderr);
      // Every piece inflated for the mount is checked against NAME.pieces.
      const listed = await withIndexFilesMounted(
        `${FIXTURES}/big-multi.tar.gz`,
        dir,
        "big-multi",
        (mnt) => manifest(mnt),
      );
      assert.equal(listed, expectedTarListing("big.meta.txt"));
    });
  },
});

Deno.test({
  name: "index: corrupt or wrong input fails with one line and leaves no files",
  ignore: requires(fixtures),
  async fn() {
    await withDir(async (dir) => {
      const gz = await Deno.readFile(`${FIXTURES}/layer.tar.gz`);
      const cases: [string, Uint8Array, RegExp][] = [
        ["crc.tar.gz", flip(gz, gz.length - 6), /fails its check/],
        ["cut.tar.gz", gz.subarray(0, gz.length - 1000), /truncated/],
        ["z.tar.zst", new Uint8Array([0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3]), /is zstd-compressed/],
        ["junk.tar", new Uint8Array(4096).fill(7), /checksum|not a tar/],
        ["block.tar.gz", setBits(gz, 10, 0x06), /invalid block type/],
        // A header cut in its FEXTRA field: was "empty input: not a tar archive".
        [
          "head.tar.gz",
          new Uint8Array([0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 3, 0xff, 0x7f, 1, 2, 3]),
          /gzip data truncated after 15 bytes/,
        ],
      ];
      for (const [file, bytes, message] of cases) {
        await Deno.writeFile(`${dir}/${file}`, bytes);
        const result = await runCli(["index", `${dir}/${file}`, "-o", `${dir}/out`], {
          timeoutMs: 60_000,
        });
        assert.equal(result.code, 1, `${file}: ${result.stderr}`);
        assert.match(result.stderr, message);
        assert.equal(result.stderr.split("\n").filter((l) => l.startsWith("erofs-oci:")).length, 1);
        assert.ok(!result.stderr.includes("    at "), `stack trace for ${file}`);
        const left = await listDir(`${dir}/out`);
        assert.deepEqual(left, [], `${file} left ${left}`);
      }
      const usage = await runCli(["index", `${FIXTURES}/layer.tar.gz`]);
      assert.equal(usage.code, 2);
      const span = await runCli(["index", `${FIXTURES}/layer.tar.gz`, "-o", dir, "--span", "1k"]);
      assert.equal(span.code, 2);
      // A size as every other size option takes it (it wanted a whole number of bytes).
      const sized = await runCli(["index", `${FIXTURES}/layer.tar.gz`, "-o", dir, "--span", "1M"]);
      assert.equal(sized.code, 0, sized.stderr);
    });
  },
});

function flip(bytes: Uint8Array, at: number): Uint8Array {
  const out = bytes.slice();
  out[at] ^= 1;
  return out;
}

/** BTYPE bits set to 11 (reserved, RFC 1951 §3.2.3) at the first deflate block. */
function setBits(bytes: Uint8Array, at: number, mask: number): Uint8Array {
  const out = bytes.slice();
  out[at] |= mask;
  return out;
}

async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) names.push(entry.name);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  return names;
}
