/**
 * `metrics --listen` on an address it cannot take (in use, a directory that does not exist):
 * one line naming the address, exit 1; before, an internal error with a hint to report a bug.
 */
import { assertCliError, runCli } from "./_support/cli.ts";

async function metricsListen(address: string) {
  const runtimeDir = await Deno.makeTempDir({ prefix: "erofs-oci-metrics-listen-" });
  try {
    return await runCli(["metrics", "--listen", address], {
      env: { EROFS_OCI_RUNTIME_DIR: runtimeDir },
    });
  } finally {
    await Deno.remove(runtimeDir, { recursive: true });
  }
}

Deno.test("metrics --listen on a TCP port in use: one line, exit 1", async () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const port = (taken.addr as Deno.NetAddr).port;
    assertCliError(
      await metricsListen(`tcp:127.0.0.1:${port}`),
      1,
      new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port}: .*in use`),
    );
  } finally {
    taken.close();
  }
});

Deno.test("metrics --listen on a socket in a missing directory: one line, exit 1", async () => {
  assertCliError(
    await metricsListen("unix:/nonexistent/erofs-oci-test/metrics.sock"),
    1,
    /cannot listen on \/nonexistent\/erofs-oci-test\/metrics\.sock/,
  );
});
