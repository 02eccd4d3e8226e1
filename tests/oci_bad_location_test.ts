/**
 * A Location header is the registry's input: a malformed one on a redirect (`http://[::1`) is
 * one line naming it, at once (it was taken for a network error: 8 attempts over ~8 s, then
 * "cannot reach registry …: Invalid URL"), and an upload location that is not http(s) (file:,
 * data:) is refused before any byte is sent there.
 */
import assert from "node:assert/strict";
import { command, requires } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { isBlobGetOf, startFaultProxy } from "./_support/fault_proxy.ts";
import { assertCliError, describe, runCli } from "./_support/cli.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE, loadFixture } from "./_support/oci_fixtures.ts";
import { withTempDir } from "./_support/temp_dir.ts";
import { RegistryClient } from "../lib/oci/client.ts";
import { OciError } from "../lib/errors.ts";

const ignore = requires(command("docker-registry"));

Deno.test({
  name: "bad location: a malformed redirect Location is one line, not retried",
  ignore,
  fn: () =>
    withTempDir("erofs-oci-bad-location-", async (dir) => {
      await using registry = await startRegistry({ auth: "none" });
      const fixture = await loadFixture("basic.erofs");
      const pushed = await pushImage(registry, "loc/app", "v1", [
        { bytes: fixture.bytes, mediaType: EROFS_MEDIA_TYPE },
      ]);
      const layer = pushed.layers[0].digest;
      await using proxy = await startFaultProxy(registry.host, [{
        match: isBlobGetOf(layer),
        fault: { kind: "location", status: 307, location: "http://[::1" },
      }]);
      const startedMs = performance.now();
      const result = await runCli(
        ["pull", `${proxy.host}/loc/app:v1`, "--layer", "0", "-o", `${dir}/out`, "--plain-http"],
      );
      const tookMs = performance.now() - startedMs;
      assertCliError(
        result,
        1,
        /^erofs-oci: registry 127\.0\.0\.1:\d+ sent an invalid Location: "http:\/\/\[::1"$/,
      );
      assert.equal(proxy.blobGets(layer).length, 1, "asked once, not retried");
      assert.ok(tookMs < 15_000, `took ${tookMs} ms\n${describe(result)}`);
    }),
});

Deno.test({
  name: "bad location: an upload location that is not http(s) is refused",
  ignore,
  fn: () =>
    withTempDir("erofs-oci-bad-upload-location-", async (dir) => {
      await using registry = await startRegistry({ auth: "none" });
      const fixture = await loadFixture("basic.erofs");
      const planted = `${dir}/planted`;
      await Deno.writeTextFile(planted, "untouched");
      for (const location of [`file://${planted}`, "data:,x"]) {
        await using proxy = await startFaultProxy(registry.host, [{
          match: (r) => r.method === "POST" && r.path.includes("/blobs/uploads/"),
          fault: { kind: "location", status: 202, location },
        }]);
        const startedMs = performance.now();
        const result = await runCli(
          ["push", `${proxy.host}/loc/up:v1`, fixture.path, "--plain-http"],
        );
        const tookMs = performance.now() - startedMs;
        assertCliError(
          result,
          1,
          /^erofs-oci: registry 127\.0\.0\.1:\d+ sent an upload location that is not http\(s\) for .*: "(?:file|data):"$/,
        );
        assert.ok(tookMs < 15_000, `took ${tookMs} ms\n${describe(result)}`);
        assert.equal(
          proxy.requests.filter((r) => r.method === "POST").length,
          1,
          describe(result),
        );
      }
      assert.equal(await Deno.readTextFile(planted), "untouched");
    }),
});

Deno.test("bad location: a token server's malformed redirect Location is one line", async () => {
  await using tokenServer = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    () => new Response(null, { status: 302, headers: { location: "http://[::1" } }),
  );
  const realm = `http://127.0.0.1:${tokenServer.addr.port}/token`;
  let asked = 0;
  await using registry = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    () => {
      asked++;
      return new Response("{}", {
        status: 401,
        headers: { "www-authenticate": `Bearer realm="${realm}",service="reg"` },
      });
    },
  );
  const client = new RegistryClient(`127.0.0.1:${registry.addr.port}`, { deadlineMs: 10_000 });
  const startedMs = performance.now();
  await assert.rejects(
    client.request({ method: "GET", path: "/v2/app/manifests/v1", scope: "repository:app:pull" }),
    (error: unknown) =>
      error instanceof OciError &&
      /^token server 127\.0\.0\.1:\d+ sent an invalid Location: "http:\/\/\[::1"$/.test(
        error.message,
      ),
  );
  assert.equal(asked, 1, "not retried");
  assert.ok(performance.now() - startedMs < 2_000);
});
