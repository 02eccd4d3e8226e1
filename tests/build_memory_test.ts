/**
 * The builder's memory follows metadata, not data: a 1 GiB layer streamed through gzip on
 * standard input, and a directory of 20,000 files, each build under 200 MB peak RSS (GNU time's
 * maximum resident set size of the builder process).
 */
import assert from "node:assert/strict";
import { command, REPO_ROOT, requires } from "./_support/requires.ts";
import { runOk } from "./_support/erofs_tree.ts";

const ignore = requires(command("python3"), command("gzip"), command("tar"), {
  missing: () => {
    try {
      Deno.statSync("/usr/bin/time");
      return undefined;
    } catch {
      return "GNU time (/usr/bin/time) not installed";
    }
  },
});
const LIMIT_KB = 200 * 1024;

/** Runs a shell pipeline whose last command is the builder under GNU time; returns max RSS. */
async function peakRss(pipeline: string, args: string[]): Promise<number> {
  const out = await new Deno.Command("sh", {
    args: ["-c", pipeline, ...args],
    env: { CLI: `${REPO_ROOT}/scripts/erofs-oci-dev` },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, stderr);
  const match = stderr.match(/Maximum resident set size \(kbytes\): (\d+)/);
  assert.ok(match, stderr);
  return Number(match[1]);
}

Deno.test({
  name: "build memory: 1 GiB tar.gz on stdin and 20,000 files each stay under 200 MB RSS",
  ignore,
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-build-mem-" });
    try {
      const big = `${work}/big`;
      Deno.mkdirSync(big);
      await runOk("truncate", ["-s", "960M", `${big}/zeros`]);
      await runOk("sh", ["-c", `head -c 67108864 /dev/urandom > "$0"`, `${big}/random`]);
      const streamed = await peakRss(
        `tar -C "$0" -cf - . | gzip -1 | /usr/bin/time -v "$CLI" build - -o "$1"`,
        [big, `${work}/big.erofs`],
      );
      assert.ok(Deno.statSync(`${work}/big.erofs`).size > 1024 ** 3);
      await Deno.remove(`${work}/big.erofs`);

      const many = `${work}/many`;
      await runOk("python3", [
        "-c",
        `import os, sys
for d in range(40):
    p = os.path.join(sys.argv[1], "d%02d" % d)
    os.makedirs(p)
    for f in range(500):
        with open(os.path.join(p, "file-%04d.txt" % f), "w") as out:
            out.write("x" * (f * 7))`,
        many,
      ]);
      const files = await peakRss(`/usr/bin/time -v "$CLI" build "$0" -o "$1"`, [
        many,
        `${work}/many.erofs`,
      ]);
      console.log(`peak RSS: 1 GiB tar.gz ${streamed} KiB, 20,000 files ${files} KiB`);
      assert.ok(streamed < LIMIT_KB, `1 GiB tar.gz: ${streamed} KiB`);
      assert.ok(files < LIMIT_KB, `20,000 files: ${files} KiB`);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test({
  name: "build memory: 100,000 small files (inline tails) peak under 240 MB RSS (was 283 MB)",
  ignore,
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-build-mem-" });
    try {
      const many = `${work}/many`;
      // Tails up to 3 KB: most are stored inline, so the metadata area is ~100 MB, which the
      // writer used to hold in one buffer.
      await runOk("python3", [
        "-c",
        `import os, sys
for d in range(1000):
    p = os.path.join(sys.argv[1], "package-%03d" % (d // 20), "module_%02d" % (d % 20))
    os.makedirs(p)
    for f in range(100):
        with open(os.path.join(p, "source_file_number_%04d.py" % f), "w") as out:
            out.write("x" * ((f * 37) % 3000))`,
        many,
      ]);
      const rss = await peakRss(`/usr/bin/time -v "$CLI" build "$0" -o "$1"`, [
        many,
        `${work}/many.erofs`,
      ]);
      console.log(`peak RSS: 100,000 files ${rss} KiB`);
      assert.ok(rss < 240 * 1024, `100,000 files: ${rss} KiB`);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});
