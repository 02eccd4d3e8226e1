/**
 * Ctrl-C (SIGINT) during `pull`: the download is aborted and FILE.partial removed (pull's help
 * promises nothing is left behind on failure), exit 130 with one line. Before, the signal
 * ended pull at once and FILE.partial stayed.
 */
import assert from "node:assert/strict";
import { assertCliError, type CliResult, describe, runCli } from "./_support/cli.ts";
import { command, FIXTURES, REPO_ROOT, requires } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { isBlobGet, startFaultProxy } from "./_support/fault_proxy.ts";
import { exists, waitFor } from "./_support/wait.ts";

Deno.test({
  name: "SIGINT during pull: FILE.partial removed, exit 130, one line",
  ignore: requires(command("docker-registry")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const image = `${registry.host}/pull-interrupt/app:v1`;
    const pushed = await runCli(["push", image, `${FIXTURES}/basic.erofs`, "--plain-http"]);
    assert.equal(pushed.code, 0, describe(pushed));
    // Every blob GET waits 5 s: pull sits with FILE.partial open, waiting for the layer.
    await using proxy = await startFaultProxy(registry.host, [
      { match: isBlobGet, fault: { kind: "delay", ms: 5_000 } },
    ]);
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-pull-interrupt-" });
    const output = `${work}/layer.erofs`;
    const child = new Deno.Command(`${REPO_ROOT}/scripts/erofs-oci-dev`, {
      args: [
        "pull",
        image.replace(registry.host, proxy.host),
        "--layer",
        "0",
        "-o",
        output,
        "--plain-http",
      ],
      env: { DOCKER_CONFIG: "/nonexistent/erofs-oci-test-docker-config" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const running = child.output();
    try {
      await waitFor("pull's partial file", () => exists(`${output}.partial`));
      child.kill("SIGINT");
      const out = await running;
      const result: CliResult = {
        code: out.code,
        stdout: new TextDecoder().decode(out.stdout),
        stderr: new TextDecoder().decode(out.stderr),
        timedOut: false,
        commandLine: "erofs-oci pull … (SIGINT)",
      };
      assertCliError(result, 130, /pull interrupted: nothing written/);
      assert.deepEqual([...Deno.readDirSync(work)].map((e) => e.name), [], "nothing left");
    } finally {
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
      await running.catch(() => {});
      await Deno.remove(work, { recursive: true });
    }
  },
});
