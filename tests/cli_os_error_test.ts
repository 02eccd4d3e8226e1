/**
 * Deno's OS error texts ("No such file or directory (os error 2): stat '…'") reach the user in
 * our words: the cause without the "(os error N)" tail or a second copy of the path; --debug
 * still names the errno. Before, `build` and `index` of a missing SOURCE printed Deno's text.
 */
import assert from "node:assert/strict";
import { assertCliError, runCli } from "./_support/cli.ts";
import { withTempDir } from "./_support/temp_dir.ts";

function isolated(work: string): Record<string, string> {
  return {
    EROFS_OCI_CACHE_DIR: `${work}/cache`,
    EROFS_OCI_STATE_DIR: `${work}/state`,
    EROFS_OCI_RUNTIME_DIR: `${work}/run`,
  };
}

Deno.test("a missing SOURCE or a file where a directory was expected: the cause, no os error", async () => {
  await withTempDir("erofs-oci-os-error-", async (work) => {
    const env = isolated(work);
    Deno.writeTextFileSync(`${work}/file`, "x");
    const missing = await runCli(["build", `${work}/nope`, "-o", `${work}/o.erofs`], { env });
    assertCliError(
      missing,
      1,
      /^erofs-oci: build: cannot read \S*\/nope: No such file or directory$/,
    );
    const throughFile = await runCli(["index", `${work}/file/x.tar.gz`, "-o", `${work}/i`], {
      env,
    });
    assertCliError(
      throughFile,
      1,
      /^erofs-oci: index: cannot read \S*\/file\/x\.tar\.gz: Not a directory$/,
    );
    assert.deepEqual([...Deno.readDirSync(work)].map((e) => e.name).sort(), ["file"]);
  });
});

Deno.test("--debug names the errno; --log-format json gives the same words", async () => {
  await withTempDir("erofs-oci-os-error-", async (work) => {
    const env = isolated(work);
    const debug = await runCli(["--debug", "build", `${work}/nope`, "-o", `${work}/o.erofs`], {
      env,
    });
    assert.equal(debug.code, 1);
    const [first] = debug.stderr.split("\n");
    assert.match(first, /^erofs-oci: build: cannot read \S*\/nope: No such file or directory$/);
    assert.match(debug.stderr, /^ {2}errno: ENOENT \(os error 2\)$/m);
    const json = await runCli([
      "--log-format",
      "json",
      "--debug",
      "build",
      `${work}/nope`,
      "-o",
      `${work}/o.erofs`,
    ], { env });
    assert.equal(json.code, 1);
    const record = JSON.parse(json.stderr.trim().split("\n").at(-1)!);
    assert.match(record.msg, /cannot read \S*\/nope: No such file or directory$/);
    assert.deepEqual(record.errno, ["ENOENT (os error 2)"]);
  });
});

Deno.test("an error line longer than 4000 characters is cut, saying so; --debug prints it whole", async () => {
  await withTempDir("erofs-oci-long-error-", async (work) => {
    const env = isolated(work);
    const name = `/nonexistent/${"b".repeat(4050)}`;
    const cut = await runCli(["inspect", name], { env });
    assert.equal(cut.code, 2, cut.stderr);
    const [first] = cut.stderr.split("\n");
    // The middle of the name goes; its end and the reason after it stay.
    assert.match(
      first,
      /^erofs-oci: .*b… \(\d+ characters left out; --debug shows all\) …b+ is a file path, not an image reference$/,
    );
    assert.ok(first.length < 4100, `a line of ${first.length} characters`);
    const whole = await runCli(["--debug", "inspect", name], { env });
    assert.ok(whole.stderr.includes(name), "--debug prints the whole message");
  });
});
