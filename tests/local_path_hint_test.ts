/**
 * An image name that is also a path in the working directory goes to a registry; when that
 * fails, the error says how to name the path (before: only the registry's DNS or connection
 * error, for `inspect app` beside a directory `app`).
 */
import { assertCliError, runCli } from "./_support/cli.ts";

Deno.test("an image name that is also a local directory: the failure says to write ./NAME", async () => {
  const work = await Deno.makeTempDir({ prefix: "erofs-oci-local-hint-" });
  try {
    // A name whose registry part refuses at once (nothing listens on port 1).
    await Deno.mkdir(`${work}/127.0.0.1:1/app`, { recursive: true });
    for (const command of [["inspect"], ["pull", "--layer", "0", "-o", "x.erofs"]]) {
      const result = await runCli([command[0], "127.0.0.1:1/app", ...command.slice(1)], {
        cwd: work,
      });
      assertCliError(result, 1, /127\.0\.0\.1:1/);
      if (
        !/hint: 127\.0\.0\.1:1\/app is also a directory here.*write \.\/127\.0\.0\.1:1\/app/.test(
          result.stderr,
        )
      ) {
        throw new Error(`no hint about the local path:\n${result.stderr}`);
      }
    }
    // A name that is no path here gets no such hint.
    const plain = await runCli(["inspect", "127.0.0.1:1/nothing-here"], { cwd: work });
    assertCliError(plain, 1);
    if (/is also a/.test(plain.stderr)) throw new Error(plain.stderr);
    // No registry host and no such path: a mistyped path went to Docker Hub, said as Docker
    // Hub's failure only. (A proxy that refuses keeps the request on this machine.)
    const mistyped = await runCli(["inspect", "nodir/x.erofs"], {
      cwd: work,
      env: { HTTPS_PROXY: "http://127.0.0.1:1", NO_PROXY: "", no_proxy: "" },
    });
    assertCliError(mistyped, 1);
    if (
      !/hint: nodir\/x\.erofs names a Docker Hub image .* no file or directory/.test(
        mistyped.stderr,
      )
    ) {
      throw new Error(`no hint about the missing path:\n${mistyped.stderr}`);
    }
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});
