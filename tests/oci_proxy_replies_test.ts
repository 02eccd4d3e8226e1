/**
 * Replies a proxy on the way mangles, from a real docker-registry behind the fault proxy: each
 * failed before too, but the line said something else. A config blob labelled
 * `Content-Encoding: gzip` that is not gzip was asked for ten times and ended in "broke off its
 * reply … Invalid gzip header"; a multipart/byteranges answer to one range said "sent
 * Content-Range ''"; a 200 cut to half the blob said "the manifest does not describe this blob;
 * push the image again" (a download: "blob … is N bytes but the manifest says M").
 */
import assert from "node:assert/strict";
import { command, requires } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { type Fault, isBlobGetOf, startFaultProxy } from "./_support/fault_proxy.ts";
import { getManifest, pushImage } from "./_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE, loadFixture } from "./_support/oci_fixtures.ts";
import { assertCliError, describe, runCli } from "./_support/cli.ts";
import { RegistryClient } from "../lib/oci/client.ts";

const ignore = requires(command("docker-registry"));

/** basic.erofs pushed as `mr/app:v1`, behind a proxy applying `fault` to GETs of `which`. */
async function mangled(which: "config" | "layer", fault: Fault) {
  const registry = await startRegistry({ auth: "none" });
  const { bytes } = await loadFixture("basic.erofs");
  const pushed = await pushImage(registry, "mr/app", "v1", [{
    bytes,
    mediaType: EROFS_MEDIA_TYPE,
  }]);
  const manifest = (await getManifest(registry, "mr/app", "v1")).json as {
    config: { digest: string };
  };
  const digest = which === "config" ? manifest.config.digest : pushed.layers[0].digest;
  const proxy = await startFaultProxy(registry.host, [{ match: isBlobGetOf(digest), fault }]);
  return {
    bytes,
    digest,
    proxy,
    [Symbol.asyncDispose]: async () => {
      await proxy.stop();
      await registry.stop();
    },
  };
}

Deno.test({
  name: "proxy replies: a config labelled gzip that is not is refused at once, saying so",
  ignore,
  async fn() {
    await using setup = await mangled("config", { kind: "say-gzip" });
    const result = await runCli(["inspect", `${setup.proxy.host}/mr/app:v1`, "--plain-http"]);
    assertCliError(
      result,
      1,
      /sent its reply to GET \S+ with Content-Encoding: gzip, and it does not decode/,
    );
    assert.match(result.stderr, /hint: .*compress/, describe(result));
    assert.equal(setup.proxy.hits(0), 1, "asked once, not again and again");
  },
});

Deno.test({
  name: "proxy replies: multipart/byteranges for one range is named as such",
  ignore,
  async fn() {
    await using setup = await mangled("layer", { kind: "multipart" });
    const client = new RegistryClient(setup.proxy.host, { hostsConfigDir: false });
    await assert.rejects(
      client.readBlobRange("mr/app", setup.digest, 4096, 4096),
      /answered bytes 4096-8191 of sha256:\S+ with multipart\/byteranges, which is not supported for one range/,
    );
  },
});

Deno.test({
  name: "proxy replies: a 200 cut to half the blob says where the reply ended",
  ignore,
  async fn() {
    await using setup = await mangled("layer", { kind: "half-200" });
    const client = new RegistryClient(setup.proxy.host, { hostsConfigDir: false });
    const size = setup.bytes.length;
    const error = await client.readBlobRange("mr/app", setup.digest, 0, 4096, undefined, size)
      .then(() => undefined, (thrown: Error & { hint?: string }) => thrown);
    assert(error, "the read failed");
    assert.match(
      error.message,
      new RegExp(`reply ended at ${Math.floor(size / 2)} of the blob's ${size} bytes`),
    );
    assert.doesNotMatch(`${error.message} ${error.hint ?? ""}`, /push the image again/);
  },
});

Deno.test({
  name: "proxy replies: a download cut to half the blob in a 200 says where the reply ended",
  ignore,
  async fn() {
    await using setup = await mangled("layer", { kind: "half-200" });
    const client = new RegistryClient(setup.proxy.host, { hostsConfigDir: false });
    const dir = await Deno.makeTempDir({ prefix: "erofs-oci-proxy-replies-" });
    try {
      const size = setup.bytes.length;
      await assert.rejects(
        client.downloadBlob("mr/app", setup.digest, `${dir}/blob`, { expectedSizeBytes: size }),
        new RegExp(`reply ended at ${Math.floor(size / 2)} of the blob's ${size} bytes`),
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
