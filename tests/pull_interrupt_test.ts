/**
 * Ctrl-C (SIGINT) during `pull`: the download is aborted and its partial file removed (pull's help
 * promises nothing is left behind on failure), exit 130 with one line. Before, the signal
 * ended pull at once and FILE.partial stayed.
 */
import assert from "node:assert/strict";
import {
  assertCliError,
  type CliResult,
  describe,
  runCli,
  startCli,
  stopCli,
} from "./_support/cli.ts";
import { command, FIXTURES, requires } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { isBlobGet, startFaultProxy } from "./_support/fault_proxy.ts";
import { waitFor } from "./_support/wait.ts";

Deno.test({
  name: "SIGINT during pull: the partial file removed, exit 130, one line",
  ignore: requires(command("docker-registry")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const image = `${registry.host}/pull-interrupt/app:v1`;
    const pushed = await runCli(["push", image, `${FIXTURES}/basic.erofs`, "--plain-http"]);
    assert.equal(pushed.code, 0, describe(pushed));
    const layer = `/blobs/sha256:${
      new Uint8Array(
        await crypto.subtle.digest("SHA-256", await Deno.readFile(`${FIXTURES}/basic.erofs`)),
      ).toHex()
    }`;
    // Every blob GET waits 5 s: pull sits with its new file open, waiting for the layer.
    await using proxy = await startFaultProxy(registry.host, [
      { match: isBlobGet, fault: { kind: "delay", ms: 5_000 } },
    ]);
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-pull-interrupt-" });
    const output = `${work}/layer.erofs`;
    const pulling = startCli([
      "pull",
      image.replace(registry.host, proxy.host),
      "--layer",
      "0",
      "-o",
      output,
      "--plain-http",
    ]);
    try {
      // The file is made before the GET (unnamed where the file system allows).
      let ended: CliResult | undefined;
      pulling.result.then((result) => ended = result, () => {});
      await waitFor(
        "pull's layer GET",
        () =>
          ended !== undefined ||
          proxy.requests.some((r) => r.method === "GET" && r.path.endsWith(layer)),
      ).catch((error) => {
        const seen = proxy.requests.map((r) => `${r.method} ${r.path} ${r.status}`).join("\n");
        throw new Error(`${error.message}; the proxy saw:\n${seen}`);
      });
      assert.equal(
        ended,
        undefined,
        `pull ended before its layer GET:\n${ended && describe(ended)}`,
      );
      pulling.child.kill("SIGINT");
      assertCliError(await pulling.result, 130, /pull interrupted: nothing written/);
      assert.deepEqual([...Deno.readDirSync(work)].map((e) => e.name), [], "nothing left");
    } finally {
      await stopCli(pulling);
      await Deno.remove(work, { recursive: true });
    }
  },
});
