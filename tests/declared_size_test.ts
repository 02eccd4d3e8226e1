/**
 * A layer's declared size (manifest descriptor, or the size `mount` saw for a local file) is
 * checked against its real size before anything trusts it: every bound check of the walk, the
 * cache and the exports uses it. A mismatch is a one-line error, not a mount of wrong bytes.
 */
import assert from "node:assert/strict";
import { FormatError } from "../lib/errors.ts";
import { openLayerSource } from "../lib/mount/layer_source.ts";
import { RegistryClient } from "../lib/oci/client.ts";
import { RegistryBlob } from "../lib/oci/registry_blob.ts";
import { assertCliError, runCli } from "./_support/cli.ts";
import { mountSandbox, mountsBelow } from "./_support/mounts.ts";
import { OCI_CONFIG, OCI_MANIFEST, putManifest, uploadBlob } from "./_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE, loadFixture } from "./_support/oci_fixtures.ts";
import { startRegistry } from "./_support/registry.ts";
import { command, FIXTURES, path as requirePath, requires, root } from "./_support/requires.ts";

/** Pushes basic.erofs under a manifest that declares `declaredBytes` for it. */
async function pushMisdeclared(host: Awaited<ReturnType<typeof startRegistry>>, declared: number) {
  const fixture = await loadFixture("basic.erofs");
  const config = new TextEncoder().encode(JSON.stringify({ os: "linux", architecture: "amd64" }));
  const configDescriptor = await uploadBlob(host, "demo/sized", config, OCI_CONFIG);
  const layer = await uploadBlob(host, "demo/sized", fixture.bytes, EROFS_MEDIA_TYPE);
  await putManifest(host, "demo/sized", "v1", {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: configDescriptor,
    layers: [{ ...layer, size: declared }],
  }, OCI_MANIFEST);
  return { fixture, layer };
}

Deno.test({
  name: "declared size: a registry blob larger or smaller than its descriptor is refused",
  ignore: requires(command("docker-registry")),
  async fn() {
    const registry = await startRegistry({ auth: "none" });
    try {
      const { fixture, layer } = await pushMisdeclared(registry, 1);
      const client = new RegistryClient(registry.host, { plainHttp: true });
      for (const declared of [fixture.bytes.length - 4096, fixture.bytes.length + 4096]) {
        const blob = new RegistryBlob(client, "demo/sized", {
          index: 0,
          digest: layer.digest,
          sizeBytes: declared,
          mediaType: EROFS_MEDIA_TYPE,
        });
        await assert.rejects(
          () => blob.read(0, 2048),
          (error: Error) =>
            error instanceof FormatError &&
            error.message.includes(`is ${fixture.bytes.length} bytes`) &&
            error.message.includes(`declares ${declared}`),
        );
      }
      const exact = new RegistryBlob(client, "demo/sized", {
        index: 0,
        digest: layer.digest,
        sizeBytes: fixture.bytes.length,
        mediaType: EROFS_MEDIA_TYPE,
      });
      assert.deepEqual(await exact.read(1024, 4), fixture.bytes.slice(1024, 1028));
    } finally {
      await registry.stop();
    }
  },
});

Deno.test({
  name: "declared size: `mount` of an image whose manifest misstates the layer size is an error",
  ignore: requires(root(), requirePath("/dev/fuse"), command("docker-registry")),
  async fn() {
    const registry = await startRegistry({ auth: "none" });
    const sandbox = await mountSandbox();
    try {
      const { fixture } = await pushMisdeclared(registry, 256 << 20);
      const result = await runCli(
        ["mount", `${registry.host}/demo/sized:v1`, sandbox.target, "--backend", "fuse"],
        { env: sandbox.env, timeoutMs: 120_000 },
      );
      assertCliError(result, 1, new RegExp(`is ${fixture.bytes.length} bytes but its descriptor`));
      assert.deepEqual(mountsBelow(sandbox.target), [], "nothing mounted");
    } finally {
      await sandbox.cleanup();
      await registry.stop();
    }
  },
});

Deno.test({
  name: "declared size: a local layer whose file no longer has the declared size is refused",
  ignore: requires(requirePath(`${FIXTURES}/basic.erofs`, "shared fixtures")),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "erofs-oci-size-" });
    try {
      const path = `${dir}/image.erofs`;
      Deno.copyFileSync(`${FIXTURES}/basic.erofs`, path);
      const sizeBytes = Deno.statSync(path).size;
      const source = await openLayerSource({ kind: "local", path, sizeBytes });
      assert.equal(source.size, sizeBytes);
      await source.close?.();
      Deno.truncateSync(path, sizeBytes + (1 << 20));
      await assert.rejects(
        () => openLayerSource({ kind: "local", path, sizeBytes }),
        (error: Error) =>
          error instanceof FormatError &&
          /is \d+ bytes but \d+ were declared/.test(error.message),
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
