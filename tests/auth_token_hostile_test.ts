/**
 * A token server's reply is hostile input: a token that cannot be sent as a header value is
 * refused as the token server's fault, with a message that does not quote it (loopback token
 * server and registry); and a token server cannot have a local file read as its reply.
 */
import assert from "node:assert/strict";
import { RegistryClient } from "../lib/oci/client.ts";
import { OciError } from "../lib/errors.ts";

async function requestWithToken(token: string): Promise<unknown> {
  await using tokenServer = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    () => Response.json({ token }),
  );
  const realm = `http://127.0.0.1:${tokenServer.addr.port}/token`;
  await using registry = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    () =>
      new Response("{}", {
        status: 401,
        headers: { "www-authenticate": `Bearer realm="${realm}",service="reg"` },
      }),
  );
  const client = new RegistryClient(`127.0.0.1:${registry.addr.port}`, { deadlineMs: 10_000 });
  try {
    const response = await client.request({
      method: "GET",
      path: "/v2/app/manifests/latest",
      scope: "repository:app:pull",
    });
    await response.body?.cancel();
    return response.status;
  } catch (error) {
    return error;
  }
}

Deno.test("auth: a token with control or non-ASCII characters is the token server's fault", async () => {
  for (const token of ["secret\nX-Injected: 1", "secret\r", "sec\0ret", "sécret", "secret\u0101"]) {
    const error = await requestWithToken(token);
    assert.ok(error instanceof OciError, `${token}: ${error}`);
    assert.match(error.message, /^token server 127\.0\.0\.1:\d+ sent a token that cannot be/);
    assert.ok(!error.message.includes("secret") && !error.message.includes("\n"), error.message);
  }
});

Deno.test("auth: a token server redirecting to a file: URL is not followed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-token-file-" });
  const secret = `${dir}/secret.json`;
  await Deno.writeTextFile(secret, JSON.stringify({ token: "SECRET-FROM-A-LOCAL-FILE" }));
  const seen: string[] = [];
  await using tokenServer = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    () => new Response(null, { status: 302, headers: { location: `file://${secret}` } }),
  );
  const realm = `http://127.0.0.1:${tokenServer.addr.port}/token`;
  await using registry = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (request) => {
      seen.push(request.headers.get("authorization") ?? "");
      return new Response("{}", {
        status: 401,
        headers: { "www-authenticate": `Bearer realm="${realm}",service="reg"` },
      });
    },
  );
  const client = new RegistryClient(`127.0.0.1:${registry.addr.port}`, { deadlineMs: 10_000 });
  try {
    await assert.rejects(
      client.request({
        method: "GET",
        path: "/v2/app/manifests/latest",
        scope: "repository:app:pull",
      }),
      (error: unknown) => error instanceof OciError && /pointed to a file: URL/.test(error.message),
    );
    assert.ok(!seen.some((header) => header.includes("SECRET")), seen.join(", "));
  } finally {
    client.close();
    await Deno.remove(dir, { recursive: true });
  }
});
