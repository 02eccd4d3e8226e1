/**
 * Corrupt zstd layers found by fuzzing (tests/fixtures/zstd-hang-*.tar.zst, 823 and 521
 * bytes; `zstd -t` refuses both at once) made `build` and `convert` spin at 100% CPU forever
 * in the pure-JS decoder used then, deaf to Ctrl-C. Each run here has a deadline, so a hang
 * fails the test instead of hanging the suite: the CLI must exit 1 with one line and leave no
 * output behind. Decoding is libzstd's now: without it, a zstd layer fails in one line naming the
 * package to install.
 */
import assert from "node:assert/strict";
import { assertCliError, runCli } from "./_support/cli.ts";
import { writeOciLayout } from "./_support/oci_layout_writer.ts";
import { command, path, REPO_ROOT, requires, root } from "./_support/requires.ts";
import { withTempDir } from "./_support/temp_dir.ts";

const INPUTS = ["zstd-hang-3213.tar.zst", "zstd-hang-4573.tar.zst"].map((name) =>
  `${REPO_ROOT}/tests/fixtures/${name}`
);
const CORRUPT = /^erofs-oci: zstd: corrupt data/;

function isolated(work: string) {
  return {
    env: {
      EROFS_OCI_CACHE_DIR: `${work}/cache`,
      EROFS_OCI_STATE_DIR: `${work}/state`,
      EROFS_OCI_RUNTIME_DIR: `${work}/run`,
    },
  };
}

/** Names in `dir` other than the CLI's own state directories. */
function leftovers(dir: string): string[] {
  const own = new Set(["cache", "state", "run", "layout", "tmp"]);
  return [...Deno.readDirSync(dir)].map((e) => e.name).filter((name) => !own.has(name));
}

Deno.test("build and build --tar-index of a corrupt tar.zst exit 1 in one line, no file", () =>
  withTempDir("erofs-oci-zstd-corrupt-", async (work) => {
    for (const input of INPUTS) {
      for (const [flags, out] of [[[], "image.erofs"], [["--tar-index"], "index.meta.erofs"]]) {
        const result = await runCli(
          ["build", ...flags, input, "-o", `${work}/${out}`],
          isolated(work),
        );
        assertCliError(result, 1, CORRUPT);
        assert.deepEqual(leftovers(work), [], `${result.commandLine} left files behind`);
      }
    }
  }));

Deno.test("convert of an OCI layout with a corrupt tar+zstd layer exits 1 in one line", () =>
  withTempDir("erofs-oci-zstd-corrupt-", async (work) => {
    await writeOciLayout(`${work}/layout`, [{
      bytes: Deno.readFileSync(INPUTS[1]),
      mediaType: "application/vnd.oci.image.layer.v1.tar+zstd",
    }]);
    Deno.mkdirSync(`${work}/tmp`);
    const result = await runCli(
      ["convert", `oci:${work}/layout:v1`, `oci:${work}/out:v1`, "--tmpdir", `${work}/tmp`],
      isolated(work),
    );
    // Which layer it was is said first (its bytes failed before their digest was known).
    assertCliError(result, 1, /^erofs-oci: layer 1\/1 \(sha256:[0-9a-f]{64}\): zstd: corrupt data/);
    assert.deepEqual(leftovers(work), [], "the new layout is removed");
    assert.deepEqual([...Deno.readDirSync(`${work}/tmp`)], [], "no work files left");
  }));

/** The file the system's libzstd.so.1 resolves to, if there is one where Debian puts it. */
function systemLibzstd(): string | undefined {
  for (const dir of ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64"]) {
    try {
      return Deno.realPathSync(`${dir}/libzstd.so.1`);
    } catch { /* not in this one */ }
  }
  return undefined;
}

const LIBZSTD = systemLibzstd();

Deno.test({
  name: "build of a tar.zst without a usable libzstd exits 1 naming the package, no file",
  ignore: requires(
    root(),
    command("unshare"),
    command("timeout"),
    // Missing, it is skipped saying so (failed under CI), not passed over without a word.
    path(LIBZSTD ?? "/usr/lib/x86_64-linux-gnu/libzstd.so.1", "libzstd.so.1 (Debian libzstd1)"),
  ),
  fn: () =>
    withTempDir("erofs-oci-zstd-nolib-", async (work) => {
      // /dev/null over the library, in a mount namespace of this command only: dlopen fails.
      const script = 'mount --bind /dev/null "$0" && exec "$1" build "$2" -o "$3"';
      const out = await new Deno.Command("timeout", {
        args: ["-s", "KILL", "20", "unshare", "-m", "--propagation", "private", "sh", "-c"]
          .concat([script, LIBZSTD!, `${REPO_ROOT}/scripts/erofs-oci-dev`, INPUTS[0]])
          .concat([`${work}/image.erofs`]),
        env: isolated(work).env,
        stdout: "piped",
        stderr: "piped",
      }).output();
      const result = {
        code: out.code,
        stdout: new TextDecoder().decode(out.stdout),
        stderr: new TextDecoder().decode(out.stderr),
        timedOut: out.code === 137,
        commandLine: `erofs-oci build ${INPUTS[0]} (libzstd hidden)`,
      };
      assertCliError(result, 1, /^erofs-oci: cannot load libzstd\.so\.1 to decompress zstd \(/);
      assert.match(result.stderr, /hint: install the libzstd1 package/);
      assert.deepEqual(leftovers(work), []);
    }),
});
