/**
 * A Docker-style token server (the `auth.token.realm` of distribution) for tests: checks Basic
 * credentials, grants the requested scopes and returns a JWT signed ES256 with a key made by the
 * `openssl` CLI at test time. The registry trusts the token through the `x5c` header (the
 * self-signed certificate of the key), which distribution 2.8 verifies against
 * `auth.token.rootcertbundle` (registry/auth/token/token.go, parseAndVerifyCertChain).
 */

import { selfSignedP256 } from "./certs.ts";

/** Distribution 2.8 accepts a token for 60 s past its `exp` claim (token.go `Leeway`). */
const DISTRIBUTION_EXP_LEEWAY_SECONDS = 60;

export interface TokenRequestRecord {
  /** Milliseconds since the epoch. */
  timeMs: number;
  service: string | null;
  scopes: string[];
  /** User name from the Basic header, undefined when none was sent. */
  account?: string;
  /** True when a token was issued. */
  granted: boolean;
}

export interface TokenServerOptions {
  username: string;
  password: string;
  service: string;
  issuer: string;
  /** Directory for key.pem and cert.pem (kept by the caller, removed with it). */
  dir: string;
  /**
   * Real lifetime of a token at the registry. The JWT `exp` is moved back by distribution's
   * leeway so the registry really rejects the token after this many seconds.
   */
  ttlSeconds?: number;
}

export interface TokenServer {
  /** `http://127.0.0.1:PORT/token`, the `realm` of the registry's challenge. */
  realm: string;
  service: string;
  issuer: string;
  /** PEM path for `auth.token.rootcertbundle`. */
  certPath: string;
  /** Every token request, in order (granted or not). */
  readonly requests: readonly TokenRequestRecord[];
  /** Number of tokens issued so far. */
  grantedCount(): number;
  /** Issues a token directly (for raw `fetch` setup steps in tests). */
  issue(scopes: string[], account?: string): Promise<string>;
  /** From now on only `password` gets tokens (a rotated password). */
  setPassword(password: string): void;
  /**
   * The next `count` token requests are answered `status` (with this Retry-After, if given)
   * instead of a token: a token server's blip.
   */
  failNext(count: number, status: number, retryAfter?: string): void;
  stop(): Promise<void>;
}

export async function startTokenServer(options: TokenServerOptions): Promise<TokenServer> {
  let password = options.password;
  const keyPath = `${options.dir}/token-key.pem`;
  const certPath = `${options.dir}/token-cert.pem`;
  await selfSignedP256({ subject: "/CN=erofs-oci test token issuer", keyPath, certPath });
  const privateKey = await crypto.subtle.importKey(
    "pkcs8",
    pemBody(await Deno.readTextFile(keyPath), "PRIVATE KEY"),
    { name: "ECDSA", namedCurve: "P-256" },
    false,
    ["sign"],
  );
  const certBase64 = base64Of(pemBody(await Deno.readTextFile(certPath), "CERTIFICATE"));
  const ttlSeconds = options.ttlSeconds ?? 300;
  const requests: TokenRequestRecord[] = [];
  let serial = 0;
  let failure: { count: number; status: number; retryAfter?: string } | undefined;

  const issue = async (scopes: string[], account?: string): Promise<string> => {
    const nowSeconds = Math.floor(Date.now() / 1000);
    const header = { typ: "JWT", alg: "ES256", x5c: [certBase64] };
    const claims = {
      iss: options.issuer,
      sub: account ?? "",
      aud: options.service,
      exp: nowSeconds + ttlSeconds - DISTRIBUTION_EXP_LEEWAY_SECONDS,
      nbf: nowSeconds - 1,
      iat: nowSeconds,
      jti: `test-${++serial}-${crypto.randomUUID()}`,
      access: scopes.map(parseScope).filter((a) => a !== undefined),
    };
    const signingInput = `${base64Url(json(header))}.${base64Url(json(claims))}`;
    const signature = await crypto.subtle.sign(
      { name: "ECDSA", hash: "SHA-256" },
      privateKey,
      new TextEncoder().encode(signingInput),
    );
    return `${signingInput}.${base64Url(new Uint8Array(signature))}`;
  };

  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    async (request) => {
      const url = new URL(request.url);
      const scopes = url.searchParams.getAll("scope").flatMap((s) => s.split(" ")).filter(
        Boolean,
      );
      const credentials = parseBasic(request.headers.get("authorization"));
      const record: TokenRequestRecord = {
        timeMs: Date.now(),
        service: url.searchParams.get("service"),
        scopes,
        account: credentials?.username,
        granted: false,
      };
      requests.push(record);
      if (failure && failure.count > 0) {
        failure.count--;
        return new Response("token server unavailable\n", {
          status: failure.status,
          headers: failure.retryAfter === undefined ? {} : { "retry-after": failure.retryAfter },
        });
      }
      if (
        url.pathname !== "/token" || credentials?.username !== options.username ||
        credentials.password !== password
      ) {
        return Response.json(
          { errors: [{ code: "UNAUTHORIZED", message: "authentication required" }] },
          { status: 401, headers: { "www-authenticate": 'Basic realm="test token server"' } },
        );
      }
      const token = await issue(scopes, credentials.username);
      record.granted = true;
      return Response.json({
        token,
        access_token: token,
        expires_in: ttlSeconds,
        issued_at: new Date().toISOString(),
      });
    },
  );

  return {
    realm: `http://127.0.0.1:${server.addr.port}/token`,
    service: options.service,
    issuer: options.issuer,
    certPath,
    requests,
    grantedCount: () => requests.filter((r) => r.granted).length,
    issue,
    setPassword: (changed) => password = changed,
    failNext: (count, status, retryAfter) => failure = { count, status, retryAfter },
    stop: () => server.shutdown(),
  };
}

/** `repository:name:pull,push` → an `access` claim entry (names may contain no colon). */
function parseScope(scope: string) {
  const parts = scope.split(":");
  if (parts.length < 3) return undefined;
  return {
    type: parts[0],
    name: parts.slice(1, -1).join(":"),
    actions: parts[parts.length - 1].split(",").filter(Boolean),
  };
}

function parseBasic(header: string | null): { username: string; password: string } | undefined {
  const match = header?.match(/^Basic\s+(\S+)$/i);
  if (!match) return undefined;
  const decoded = new TextDecoder().decode(Uint8Array.from(atob(match[1]), (c) => c.charCodeAt(0)));
  const colon = decoded.indexOf(":");
  if (colon < 0) return undefined;
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

function pemBody(pem: string, label: string): Uint8Array<ArrayBuffer> {
  const match = pem.match(new RegExp(`-----BEGIN ${label}-----([^-]+)-----END ${label}-----`));
  if (!match) throw new Error(`no ${label} block in PEM`);
  return Uint8Array.from(atob(match[1].replace(/\s+/g, "")), (c) => c.charCodeAt(0));
}

function json(value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value));
}

function base64Of(bytes: Uint8Array): string {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

function base64Url(bytes: Uint8Array): string {
  return base64Of(bytes).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
