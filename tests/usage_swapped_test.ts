/**
 * Arguments in the wrong place or of the wrong kind are said as such: `mount DIR IMAGE` (it
 * suggested `mkdir -p` of a directory named like the reference), an OCI layout or a file path
 * where a registry image is written (it said "registry port '' is not a number" or "empty path
 * component in repository name").
 */
import { assertCliError, runCli } from "./_support/cli.ts";
import { equal as assertEquals } from "node:assert/strict";
import { FIXTURES, requires, root } from "./_support/requires.ts";
import { withTempDir } from "./_support/temp_dir.ts";

Deno.test({
  name: "usage: mount DIR IMAGE swapped, push to oci:/a path, convert to a path",
  ignore: requires(root()),
  fn: () =>
    withTempDir("erofs-oci-swapped-", async (dir) => {
      const env = { EROFS_OCI_RUNTIME_DIR: `${dir}/run`, EROFS_OCI_STATE_DIR: `${dir}/state` };
      await Deno.mkdir(`${dir}/mnt`);
      const swapped = await runCli(["mount", `${dir}/mnt`, "127.0.0.1:9/app:v1"], { env });
      assertCliError(
        swapped,
        2,
        /is a directory and 127\.0\.0\.1:9\/app:v1 an image reference: IMAGE comes first/,
      );
      assertCliError(
        await runCli(["push", `oci:${dir}/out:v1`, `${FIXTURES}/basic.erofs`], { env }),
        2,
        /is an OCI layout; push works with a registry image here/,
      );
      assertCliError(
        await runCli(["push", `${dir}/out`, `${FIXTURES}/basic.erofs`], { env }),
        2,
        /is a file path, not an image reference/,
      );
      const convert = await runCli(["convert", `oci:${dir}/nothing:v1`, `${dir}/out3`], { env });
      assertCliError(convert, 2, /is a file path, not an image reference/);
    }),
});

Deno.test("usage: `-h CMD`, `--help CMD` and `help CMD` show that command's help", async () => {
  for (const args of [["-h", "list"], ["--help", "list"], ["help", "list"]]) {
    const result = await runCli(args);
    assertEquals(result.code, 0, result.stderr);
    assertEquals(result.stdout.split("\n")[0], "Usage: erofs-oci list [--json]", args.join(" "));
  }
});
