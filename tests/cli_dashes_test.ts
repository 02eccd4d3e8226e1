/**
 * What follows `--` belongs to the command `trace` runs: its `-h`/`--help` must reach that
 * command, not make erofs-oci print trace's help and exit 0 without tracing anything.
 */
import assert from "node:assert/strict";
import { assertCliError, describe, runCli } from "./_support/cli.ts";

const NOT_AN_IMAGE = "/nonexistent/erofs-oci-test/not-an-image";

for (const flag of ["-h", "--help"]) {
  Deno.test(`trace … -- CMD ${flag}: the flag is CMD's, trace goes on (here: to its own error)`, async () => {
    const result = await runCli(["trace", NOT_AN_IMAGE, "-o", "/dev/null", "--", "ls", flag]);
    assert.doesNotMatch(result.stdout, /Usage: erofs-oci trace/, describe(result));
    assertCliError(result, 2, /invalid image reference/);
  });
}

Deno.test("trace --help before -- still prints trace's help", async () => {
  const result = await runCli(["trace", "--help", "--", "ls"]);
  assert.equal(result.code, 0, describe(result));
  assert.match(result.stdout, /^Usage: erofs-oci trace/, describe(result));
});
