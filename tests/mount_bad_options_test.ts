/**
 * `mount` option values that cannot work are refused as the user's mistake before anything
 * starts: `--backend xyz` is a usage error (exit 2; it was exit 1 like a runtime failure).
 */
import { assertCliError, runCli } from "./_support/cli.ts";
import { FIXTURES, requires, root } from "./_support/requires.ts";

Deno.test({
  name: "mount --backend xyz: usage error, exit 2",
  ignore: requires(root()),
  async fn() {
    const target = await Deno.makeTempDir({ prefix: "erofs-oci-bad-options-" });
    try {
      const result = await runCli(
        ["mount", `${FIXTURES}/basic.erofs`, target, "--backend", "xyz"],
        { env: { EROFS_OCI_RUNTIME_DIR: `${target}-run` } },
      );
      assertCliError(result, 2, /unknown backend 'xyz'/);
    } finally {
      await Deno.remove(target, { recursive: true });
      await Deno.remove(`${target}-run`, { recursive: true }).catch(() => {});
    }
  },
});
