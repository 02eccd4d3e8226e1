/**
 * What follows `--` belongs to the command `trace` runs: its `-h`/`--help` must reach that
 * command, not make erofs-oci print trace's help and exit 0 without tracing anything; and
 * trace wants one place for its trace (--push or -o), its help only the options it takes.
 */
import assert from "node:assert/strict";
import { assertCliError, describe, runCli } from "./_support/cli.ts";

const NOT_AN_IMAGE = "/nonexistent/erofs-oci-test/not-an-image";

for (const flag of ["-h", "--help"]) {
  Deno.test(`trace … -- CMD ${flag}: the flag is CMD's, trace goes on (here: to its own error)`, async () => {
    const result = await runCli([
      "trace",
      NOT_AN_IMAGE,
      "-o",
      // Never written (the image is refused first), in a directory that exists.
      "/tmp/erofs-oci-test-never-written.json",
      "--",
      "ls",
      flag,
    ]);
    assert.doesNotMatch(result.stdout, /Usage: erofs-oci trace/, describe(result));
    assertCliError(result, 2, /is a file path, not an image reference/);
  });
}

Deno.test("trace --help before -- still prints trace's help", async () => {
  const result = await runCli(["trace", "--help", "--", "ls"]);
  assert.equal(result.code, 0, describe(result));
  assert.match(result.stdout, /^Usage: erofs-oci trace/, describe(result));
});

Deno.test("trace with neither --push nor -o: a usage error, nothing pushed", async () => {
  const result = await runCli(["trace", "127.0.0.1:1/app:v1", "--", "true"]);
  assertCliError(result, 2, /trace: give --push or -o FILE/);
  assertCliError(
    await runCli(["trace", "127.0.0.1:1/app:v1", "--push", "-o", "t.json", "--", "true"]),
    2,
    /trace: give --push or -o FILE/,
  );
});

Deno.test("trace's help lists only the options it takes", async () => {
  const result = await runCli(["trace", "--help"]);
  assert.equal(result.code, 0, describe(result));
  assert.doesNotMatch(
    result.stdout,
    /^ +(-u, )?--(username|password)/m,
    "credentials are refused by trace",
  );
  assert.match(result.stdout, /-h, --help/);
  assert.match(result.stdout, /--plain-http/);
});

Deno.test("trace -o a symlink or device: refused before anything runs", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-trace-out-" });
  try {
    await Deno.writeTextFile(`${dir}/target`, "kept");
    await Deno.symlink(`${dir}/target`, `${dir}/link`);
    for (
      const [output, kind] of [[`${dir}/link`, /a symlink/], [
        "/dev/null",
        /a character device/,
      ]] as const
    ) {
      assertCliError(
        await runCli(["trace", "127.0.0.1:1/app:v1", "-o", output, "--", "true"]),
        2,
        kind,
      );
    }
    assert.equal(await Deno.readTextFile(`${dir}/target`), "kept");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
