import assert from "node:assert/strict";
import { RegistryAuth, TokenServerUnavailable } from "./auth.ts";

const CHALLENGE = 'Bearer realm="http://127.0.0.1:9/token",service="test"';

/** A RegistryAuth whose token server gives `first` (lifetime `expiresInS`), then answers 503. */
async function authWithToken(
  expiresInS: number,
): Promise<{ auth: RegistryAuth; asked: () => number }> {
  let asked = 0;
  const auth = new RegistryAuth("test.invalid", () => {
    asked++;
    return Promise.resolve(
      asked === 1
        ? Response.json({ token: "first", expires_in: expiresInS })
        : new Response("down", { status: 503, headers: { "retry-after": "1" } }),
    );
  });
  const challenge = new Response(null, {
    status: 401,
    headers: { "www-authenticate": CHALLENGE },
  });
  await auth.unauthorized(challenge, "repository:app:pull", undefined);
  return { auth, asked: () => asked };
}

Deno.test("token renewal: a token still valid carries on while its token server is down", async () => {
  // Lifetime 1 s: renewed from 0.75 s on (a quarter early), valid until 1 s.
  const { auth, asked } = await authWithToken(1);
  assert.equal(await auth.authorize("repository:app:pull"), "Bearer first");
  await new Promise((r) => setTimeout(r, 850));
  assert.equal(await auth.authorize("repository:app:pull"), "Bearer first");
  assert.equal(asked(), 2, "the renewal was tried");
  await new Promise((r) => setTimeout(r, 300));
  // Expired now: the token server's trouble is the caller's, as a temporary one with its pause.
  await assert.rejects(auth.authorize("repository:app:pull"), (error) => {
    assert(error instanceof TokenServerUnavailable, String(error));
    assert.equal(error.retryAfterMs, 1000);
    assert.match(error.message, /answered 503/);
    return true;
  });
});
