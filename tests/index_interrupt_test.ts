/**
 * Ctrl-C (SIGINT) while `index IMAGE -o DIR` writes a layer's index: what this run added goes
 * (its temporary files, and DIR itself when the run made it; what DIR held before stays),
 * exit 130 with one line. Before, the signal ended index at once and left NAME.zinfo.XXXX.tmp
 * (and the directory it had made) behind.
 */
import assert from "node:assert/strict";
import { assertCliError, type CliResult, startCli, stopCli } from "./_support/cli.ts";
import { command, FIXTURES, requires } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { isBlobGet, type ProxyRecord, startFaultProxy } from "./_support/fault_proxy.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { waitFor } from "./_support/wait.ts";

function names(dir: string): string[] {
  try {
    return [...Deno.readDirSync(dir)].map((e) => e.name).sort();
  } catch {
    return [];
  }
}

async function interruptedIndex(
  image: string,
  dir: string,
  proxy: { requests: readonly ProxyRecord[] },
  layerDigest: string,
): Promise<CliResult> {
  const seen = proxy.requests.length;
  const indexing = startCli(["index", image, "-o", dir, "--plain-http"]);
  try {
    // Interrupted while the layer's bytes are held by the proxy.
    await waitFor(
      "the layer's GET",
      () =>
        proxy.requests.slice(seen).some((r) =>
          r.method === "GET" && r.path.endsWith(`/blobs/${layerDigest}`)
        ),
    );
    indexing.child.kill("SIGINT");
    return await indexing.result;
  } finally {
    await stopCli(indexing);
  }
}

Deno.test({
  name: "SIGINT during index -o DIR: this run's files (and a DIR it made) removed, exit 130",
  ignore: requires(command("docker-registry")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const repository = "index-interrupt/app";
    const { layers: [layer] } = await pushImage(registry, repository, "v1", [{
      bytes: await Deno.readFile(`${FIXTURES}/layer.tar.gz`),
      mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
    }]);
    // Blob GETs wait 5 s: index sits with its temporary zinfo open, waiting for the layer.
    await using proxy = await startFaultProxy(registry.host, [
      { match: isBlobGet, fault: { kind: "delay", ms: 5_000 } },
    ]);
    const image = `${proxy.host}/${repository}:v1`;
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-index-interrupt-" });
    try {
      const made = `${work}/new`;
      assertCliError(
        await interruptedIndex(image, made, proxy, layer.digest),
        130,
        /index interrupted/,
      );
      assert.deepEqual(names(work), [], "the directory index made is gone");

      const existing = `${work}/existing`;
      await Deno.mkdir(existing);
      await Deno.writeTextFile(`${existing}/mine.txt`, "kept");
      assertCliError(
        await interruptedIndex(image, existing, proxy, layer.digest),
        130,
        /index interrupted/,
      );
      assert.deepEqual(names(existing), ["mine.txt"], "only what was there before stays");
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});
