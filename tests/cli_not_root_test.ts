/**
 * Commands run by a user who is not root: one line saying root is needed, never an internal
 * error. `list` and `metrics` read the runtime dir, which is root's (0700); umount and
 * reattach say what needs root (they said "mounting").
 */
import assert from "node:assert/strict";
import { assertCliError, type CliResult } from "./_support/cli.ts";
import { command, REPO_ROOT, requires, root } from "./_support/requires.ts";

/** erofs-oci as uid 65534, with a runtime dir of root's that exists (as after any mount). */
async function asNobody(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  const runtimeDir = await Deno.makeTempDir({ prefix: "erofs-oci-notroot-" });
  try {
    await Deno.mkdir(`${runtimeDir}/mounts`, { mode: 0o700 });
    await Deno.chmod(runtimeDir, 0o700);
    const output = await new Deno.Command("setpriv", {
      args: [
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        `${REPO_ROOT}/scripts/erofs-oci-dev`,
        ...args,
      ],
      env: { EROFS_OCI_RUNTIME_DIR: runtimeDir, DOCKER_CONFIG: "/nonexistent", ...env },
      stdin: "null",
      signal: AbortSignal.timeout(20_000),
    }).output();
    return {
      code: output.code,
      stdout: new TextDecoder().decode(output.stdout),
      stderr: new TextDecoder().decode(output.stderr),
      timedOut: false,
      commandLine: `(uid 65534) erofs-oci ${args.join(" ")}`,
    };
  } finally {
    await Deno.remove(runtimeDir, { recursive: true });
  }
}

for (const args of [["list"], ["list", "--json"], ["metrics"]]) {
  Deno.test({
    name: `not root: erofs-oci ${args.join(" ")} says it needs root`,
    ignore: requires(root(), command("setpriv")),
    async fn() {
      assertCliError(await asNobody(args), 1, /cannot read erofs-oci's mounts .*permission denied/);
    },
  });
}

for (
  const [args, what] of [
    [["umount", "/nonexistent/erofs-oci-test"], "unmounting"],
    [["reattach", "--all"], "reattaching"],
    [["mount", "/nonexistent/erofs-oci-test.erofs", "/nonexistent/erofs-oci-test"], "mounting"],
  ] as const
) {
  Deno.test({
    name: `not root: erofs-oci ${args[0]} says ${what} needs root`,
    ignore: requires(root(), command("setpriv")),
    async fn() {
      assertCliError(await asNobody([...args]), 1, new RegExp(`^erofs-oci: ${what} needs root`));
    },
  });
}

Deno.test({
  name: "not root: erofs-oci cache says the disk cache is root's (not that it is damaged)",
  ignore: requires(root(), command("setpriv")),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "erofs-oci-notroot-cache-" });
    try {
      await Deno.mkdir(`${dir}/cache/blobs`, { recursive: true, mode: 0o700 });
      await Deno.chmod(`${dir}/cache`, 0o700);
      await Deno.chmod(dir, 0o755);
      const result = await asNobody(["cache"], { EROFS_OCI_CACHE_DIR: `${dir}/cache` });
      assertCliError(result, 1, /permission denied/i);
      // It said to make the cache root's and 0700 (it is) or to remove it.
      assert.match(result.stderr, /hint: the disk cache is root's: run erofs-oci cache as root/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
