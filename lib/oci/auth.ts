import { OciError } from "../errors.ts";
import { readAtMost } from "../bytes.ts";
import { debug } from "../log.ts";
import {
  type BearerChallenge,
  findBearerChallenge,
  parseAuthChallenges,
} from "./auth_challenge.ts";
import { type Credentials, dockerConfigCredentials } from "./docker_config.ts";
import { isLoopbackRegistry } from "./reference.ts";
import { parseJson } from "../json.ts";
import { parseRetryAfter } from "./host_pacing.ts";
import { describeFailure, isNetworkError, isTransientStatus } from "./retry.ts";

/** Token lifetime when the token server does not say (distribution token spec: 60 s). */
export const DEFAULT_TOKEN_LIFETIME_S = 60;
/** Upper bound on token replies; real ones are a few KiB. */
const MAX_TOKEN_REPLY_BYTES = 1024 * 1024;
/** Printable ASCII: what a Bearer token (RFC 6750 b64token, a JWT) is made of, and more. */
const TOKEN_CHARACTERS = /^[\x20-\x7e]+$/;

interface CachedToken {
  header: string;
  /** When it is renewed: a little before it expires, so none leaves to expire in flight. */
  renewAtMs: number;
  /** When the token server said it expires. */
  expiresAtMs: number;
}

/**
 * The token server cannot give a token for now: it answered 429 or 5xx, could not be reached or
 * broke off its reply. Worth asking again under the request's retry policy, after `retryAfterMs` when
 * the server said (Retry-After); one blip failed the read it came in (EIO in a mount).
 */
export class TokenServerUnavailable extends OciError {
  retryAfterMs?: number;
}

/** Fetch used for token requests; the client passes its redirect-safe fetch. */
export type TokenFetch = (url: URL, headers: Headers, signal?: AbortSignal) => Promise<Response>;

/**
 * Authorization state for one registry: anonymous until the registry answers 401, then Basic or
 * Bearer per its challenge. Bearer tokens are cached per scope and refreshed shortly before they
 * expire or when the registry rejects them.
 */
export class RegistryAuth {
  readonly #registry: string;
  readonly #fetchToken: TokenFetch;
  #credentials: Promise<Credentials | undefined> | undefined;
  #explicitCredentials: boolean;
  readonly #tokens = new Map<string, CachedToken>();

  /** Whether the command takes --username/--password-stdin for this registry (the 401 hint). */
  readonly #credentialOptions: boolean;

  constructor(
    registry: string,
    fetchToken: TokenFetch,
    credentials?: Credentials,
    credentialOptions = true,
  ) {
    this.#registry = registry;
    this.#credentialOptions = credentialOptions;
    this.#fetchToken = fetchToken;
    this.#explicitCredentials = credentials !== undefined;
    if (credentials) this.#credentials = Promise.resolve(credentials);
  }

  #basic: string | undefined;
  #lastBearer: BearerChallenge | undefined;

  /**
   * The Authorization header for a request needing `scope`: a cached token, the Basic header once
   * the registry asked for Basic, or undefined (anonymous). An expired token is renewed first from
   * the last Bearer challenge, so long-running readers do not pay a 401 round trip per expiry.
   */
  async authorize(scope: string, signal?: AbortSignal): Promise<string | undefined> {
    const token = this.#tokens.get(scope);
    if (token) {
      if (token.renewAtMs > Date.now()) return token.header;
      if (this.#lastBearer) {
        try {
          await this.#bearer(this.#lastBearer, scope, signal);
        } catch (error) {
          // Renewal is early on purpose: a token still valid carries on while the server is down.
          if (!(error instanceof TokenServerUnavailable) || token.expiresAtMs <= Date.now()) {
            this.#tokens.delete(scope);
            throw error;
          }
          debug(`token renewal failed (${error.message}); the current token is valid still`);
          return token.header;
        }
        return this.#tokens.get(scope)?.header;
      }
      this.#tokens.delete(scope);
    }
    return this.#basic;
  }

  /**
   * Handles a 401: parses `WWW-Authenticate`, obtains a Basic or Bearer authorization for `scope`
   * and caches it. `sentHeader` is what the failed request carried; a rejected header with no new
   * way to authenticate ends in a one-line OciError (wrong or missing credentials).
   */
  async unauthorized(
    response: Response,
    scope: string,
    sentHeader: string | undefined,
    signal?: AbortSignal,
  ): Promise<void> {
    const challenges = parseAuthChallenges(response.headers.get("www-authenticate") ?? "");
    const bearer = findBearerChallenge(challenges);
    this.#tokens.delete(scope);
    if (bearer) {
      this.#lastBearer = bearer;
      await this.#bearer(bearer, scope, signal);
      return;
    }
    if (challenges.some((c) => c.scheme === "basic")) {
      const credentials = await this.#loadCredentials();
      if (!credentials) throw this.#required();
      const header = basicHeader(credentials);
      if (sentHeader === header) throw this.#rejected(401);
      this.#basic = header;
      return;
    }
    if (sentHeader) throw this.#rejected(401);
    throw new OciError(
      `registry ${this.#registry} answered 401 without a usable WWW-Authenticate challenge`,
    );
  }

  /** The error for a 401 that persists after authenticating: wrong or missing credentials. */
  async persistentFailure(): Promise<OciError> {
    const credentials = await this.#loadCredentials().catch(() => undefined);
    return credentials ? this.#rejected(401) : this.#required();
  }

  async #bearer(challenge: BearerChallenge, scope: string, signal?: AbortSignal): Promise<void> {
    const url = new URL(challenge.realm);
    if (challenge.service !== undefined) url.searchParams.set("service", challenge.service);
    if (scope) url.searchParams.append("scope", scope);
    if (challenge.scope && challenge.scope !== scope) {
      url.searchParams.append("scope", challenge.scope);
    }
    const headers = new Headers({ accept: "application/json" });
    const credentials = await this.#loadCredentials();
    if (credentials) headers.set("authorization", basicHeader(credentials));
    debug(`token request ${url.origin}${url.pathname} scope=${scope}`);
    const requestedAtMs = Date.now();
    const response = await this.#fetchToken(url, headers, signal);
    if (response.status === 401 || response.status === 403) {
      await response.body?.cancel();
      throw credentials ? this.#rejected(response.status) : this.#required();
    }
    if (!response.ok) {
      await response.body?.cancel();
      const message = `token server ${url.host} for ${this.#registry} answered ${response.status}`;
      if (!isTransientStatus(response.status)) throw new OciError(message);
      const error = new TokenServerUnavailable(message);
      error.retryAfterMs = parseRetryAfter(response.headers.get("retry-after"));
      throw error;
    }
    let body: Uint8Array;
    try {
      body = await readLimited(response, MAX_TOKEN_REPLY_BYTES);
    } catch (error) {
      if (!isNetworkError(error)) throw error;
      throw new TokenServerUnavailable(
        `token server ${url.host} broke off its reply: ${describeFailure(error)}`,
        undefined,
        { cause: error },
      );
    }
    let reply: Record<string, unknown>;
    try {
      reply = parseJson(new TextDecoder().decode(body));
    } catch {
      throw new OciError(`token server ${url.host} sent a reply that is not JSON`);
    }
    const token = typeof reply?.token === "string" && reply.token
      ? reply.token
      : typeof reply?.access_token === "string"
      ? reply.access_token
      : "";
    if (!token) throw new OciError(`token server ${url.host} sent no token`);
    // It goes into a header as it is: a control or non-ASCII character would make every request
    // fail in fetch, taken for a network error ("cannot reach registry", with the token's start).
    if (!TOKEN_CHARACTERS.test(token)) {
      throw new OciError(
        `token server ${url.host} sent a token that cannot be an HTTP header (control or non-ASCII characters)`,
      );
    }
    const lifetimeS = typeof reply.expires_in === "number" && reply.expires_in > 0
      ? reply.expires_in
      : DEFAULT_TOKEN_LIFETIME_S;
    // Refresh a little early so a request never leaves with a token that expires in flight.
    const marginMs = Math.min(10_000, lifetimeS * 1000 / 4);
    const expiresAtMs = requestedAtMs + lifetimeS * 1000;
    this.#tokens.set(scope, {
      header: `Bearer ${token}`,
      renewAtMs: expiresAtMs - marginMs,
      expiresAtMs,
    });
  }

  #loadCredentials(): Promise<Credentials | undefined> {
    this.#credentials ??= dockerConfigCredentials(this.#registry).catch((error) => {
      this.#credentials = undefined;
      throw error;
    });
    return this.#credentials;
  }

  #required(): OciError {
    return authRequiredError(this.#registry, this.#credentialOptions);
  }

  #rejected(status: number): OciError {
    const source = this.#explicitCredentials
      ? "the given credentials"
      : "credentials from docker config";
    const error = new OciError(
      `registry ${this.#registry} rejected ${source} (${status})`,
      "check the username and password",
    );
    error.status = status;
    return error;
  }
}

/**
 * A 401 from `registry`, with what to do about it: `credentialOptions` false when the command
 * takes no --username/--password-stdin for this registry (trace, the source of convert).
 */
export function authRequiredError(
  registry: string,
  credentialOptions: boolean,
  cause?: unknown,
): OciError {
  const error = new OciError(
    `registry ${registry} requires authentication (401)`,
    credentialOptions
      ? "pass --username and --password-stdin, or log in with `docker login`"
      : `log in with \`docker login ${registry}\` (this command reads the credentials of this ` +
        "registry from Docker's config only)",
    cause === undefined ? undefined : { cause },
  );
  error.status = 401;
  return error;
}

/**
 * Refuses a plain-HTTP token realm (or token-server redirect) for a registry spoken to over HTTPS:
 * the token request carries the user's password and its reply grants access, so a challenge
 * naming an `http:` realm would move both into clear text. Allowed when the registry itself is
 * plain HTTP (nothing is protected anyway) or a loopback registry (test and development setups).
 */
export function checkTokenRealm(url: URL, registry: string, registryPlainHttp: boolean): void {
  // fetch() reads file: (and data:, blob:) URLs: a token server redirecting there would have
  // this process read a local file and send what it holds to the registry as a token.
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    throw new OciError(
      `the token server of registry ${registry} pointed to a ${url.protocol} URL: only http(s) is followed`,
    );
  }
  if (url.protocol !== "http:" || registryPlainHttp || isLoopbackRegistry(registry)) return;
  throw new OciError(
    `registry ${registry} is HTTPS but its token server ${url.host} is plain HTTP: refusing to send credentials in clear text`,
    "the registry's auth realm must be https://; use --plain-http only for a registry without TLS",
  );
}

/** `Basic base64(user:password)` with UTF-8 credentials. */
export function basicHeader(credentials: Credentials): string {
  const bytes = new TextEncoder().encode(`${credentials.username}:${credentials.password}`);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return `Basic ${btoa(binary)}`;
}

/** Reads a whole body, refusing more than `maxBytes` (hostile or broken servers). */
export async function readLimited(response: Response, maxBytes: number): Promise<Uint8Array> {
  const tooLarge = () => {
    const url = new URL(response.url || "http://unknown/");
    return new OciError(
      `${url.host} sent more than ${maxBytes} bytes for ${url.pathname}: refused`,
      "such a document is far smaller; the server is broken or hostile",
    );
  };
  const declared = Number(response.headers.get("content-length") ?? NaN);
  if (declared > maxBytes) {
    await response.body?.cancel();
    throw tooLarge();
  }
  if (!response.body) return new Uint8Array(0);
  const bytes = await readAtMost(response.body, maxBytes);
  if (bytes === undefined) throw tooLarge();
  return bytes;
}
