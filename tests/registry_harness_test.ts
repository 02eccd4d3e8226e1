/**
 * Self-tests of the registry harness with plain fetch: the real registry accepts and serves
 * blobs under each auth mode, refuses bad credentials, and token expiry is real.
 */
import assert from "node:assert/strict";
import { command, FIXTURES, requires } from "./_support/requires.ts";
import { type RegistryAuth, startRegistry } from "./_support/registry.ts";
import {
  getBlob,
  getManifest,
  MANIFEST_ACCEPT,
  OCI_MANIFEST,
  pushImage,
} from "./_support/oci_raw.ts";

const ignore = requires(command("docker-registry"), command("htpasswd"), command("openssl"));

for (const auth of ["none", "basic", "token"] as RegistryAuth[]) {
  Deno.test({
    name: `harness: ${auth} registry stores and serves an image`,
    ignore,
    fn: async () => {
      await using registry = await startRegistry({ auth });
      const bytes = await Deno.readFile(`${FIXTURES}/layer1.erofs`);
      const pushed = await pushImage(registry, "harness/app", "v1", [
        { bytes, mediaType: "application/vnd.erofs" },
      ]);
      const manifest = await getManifest(registry, "harness/app", "v1");
      assert.equal(manifest.status, 200);
      assert.equal(manifest.mediaType, OCI_MANIFEST);
      assert.equal(manifest.digest, pushed.manifestDigest);
      assert.deepEqual(
        await getBlob(registry, "harness/app", pushed.layers[0].digest),
        bytes,
      );
      const put = await registry.accessLogOnce((l) =>
        l.includes('"PUT /v2/harness/app/manifests/v1 ')
      );
      assert.ok(put.length > 0, (await registry.accessLog()).join("\n"));

      const anonymous = await fetch(`http://${registry.host}/v2/harness/app/manifests/v1`, {
        headers: { accept: MANIFEST_ACCEPT },
      });
      await anonymous.body?.cancel();
      if (auth === "none") {
        assert.equal(anonymous.status, 200);
      } else {
        assert.equal(anonymous.status, 401);
        const challenge = anonymous.headers.get("www-authenticate") ?? "";
        assert.match(challenge, auth === "basic" ? /^Basic realm=/ : /^Bearer realm="http:/);
      }
      if (auth !== "none") {
        const wrong = await fetch(`http://${registry.host}/v2/harness/app/manifests/v1`, {
          headers: { authorization: `Basic ${btoa(`${registry.username}:wrong`)}` },
        });
        await wrong.body?.cancel();
        assert.equal(wrong.status, 401);
      }
    },
  });
}

Deno.test({
  name: "harness: token server checks credentials and the registry enforces the TTL",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "token", tokenTtlSeconds: 2 });
    const tokens = registry.tokenServer!;
    const challenge = await fetch(`http://${registry.host}/v2/`);
    await challenge.body?.cancel();
    const params = Object.fromEntries(
      [...(challenge.headers.get("www-authenticate") ?? "").matchAll(/(\w+)="([^"]*)"/g)].map((
        m,
      ) => [m[1], m[2]]),
    );
    assert.equal(params.realm, tokens.realm);
    const tokenUrl = `${params.realm}?service=${params.service}&scope=repository:x/y:pull`;
    const refused = await fetch(tokenUrl, {
      headers: { authorization: `Basic ${btoa("tester:nope")}` },
    });
    await refused.body?.cancel();
    assert.equal(refused.status, 401);
    const granted = await fetch(tokenUrl, {
      headers: { authorization: `Basic ${btoa(`${registry.username}:${registry.password}`)}` },
    });
    const body = await granted.json();
    assert.equal(body.expires_in, 2);
    assert.equal(body.token, body.access_token);
    assert.equal(tokens.grantedCount(), 1);

    const withToken = () =>
      fetch(`http://${registry.host}/v2/x/y/tags/list`, {
        headers: { authorization: `Bearer ${body.token}` },
      });
    const fresh = await withToken();
    await fresh.body?.cancel();
    // 404 NAME_UNKNOWN means the token was accepted (the repository does not exist).
    assert.equal(fresh.status, 404);
    await new Promise((resolve) => setTimeout(resolve, 3100));
    const expired = await withToken();
    await expired.body?.cancel();
    assert.equal(expired.status, 401);
  },
});
