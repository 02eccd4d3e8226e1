/**
 * How requests reach one registry host (the registry itself, its configured `server` or a
 * mirror): API URLs (the API root, `override_path` mirrors), headers (User-Agent, hosts.toml
 * headers, Authorization only to this host), redirects followed by hand, the `--insecure`
 * fallback to plain HTTP before the first connection, and the token server's GETs. Apart from
 * client.ts, which decides what to send and how often (authorization, retries, pacing, mirrors)
 * and offers the API's operations; this file only carries one request and its redirects.
 */
import { stallMs, StallWatch, watchedBody } from "./stall_watch.ts";
import { OciError } from "../errors.ts";
import { debug } from "../log.ts";
import { mark } from "../timing.ts";
import { checkTokenRealm, TokenServerUnavailable } from "./auth.ts";
import { describeFailure, FailedAtRedirectTarget, isNetworkError } from "./retry.ts";
import type { RegistryRequest } from "./client.ts";
import { bypassProxyForLoopback, throughProxy } from "./proxy_env.ts";
import { defaultHttpClient } from "./host_routing.ts";

const MAX_REDIRECTS = 10;

/** A header value from a peer, for a message: one line, escapes visible, at most 100 chars. */
export function quoted(value: string): string {
  const text = JSON.stringify(value.slice(0, 100));
  return value.length > 100 ? `${text.slice(0, -1)}…"` : text;
}

/** `origin` as URL.origin spells it (lower-case host, no default port). */
function normalOrigin(origin: string): string {
  return new URL(origin).origin;
}

/** True when `url` parses and has the origin `origin` (normalOrigin's spelling). */
function sameOrigin(url: string, origin: string): boolean {
  try {
    return new URL(url).origin === origin;
  } catch {
    return false;
  }
}

/** Whether this process has sent a request yet (its start-up timeline marks the first). */
let sentOne = false;

/** Where and how one host is spoken to (RegistryClient's constructor resolves it). */
export interface TransportSettings {
  /** Host serving the API. */
  host: string;
  /** `http://host` or `https://host` (normalised here: lower-case host, no default port). */
  origin: string;
  /** Path that replaces `/v2` in API paths (`override_path` mirrors live below a prefix). */
  apiPath: string;
  httpClient: Deno.HttpClient | undefined;
  /** Headers for this host only (hosts.toml). */
  extraHeaders: Record<string, string>;
  userAgent: string;
  /** Fall back to plain HTTP when HTTPS cannot connect, before any connection succeeded. */
  insecure: boolean;
  /** Time a token server gets for its reply, redirects and body included (one operation's). */
  tokenDeadlineMs: number;
}

export class RegistryTransport {
  readonly host: string;
  readonly #userAgent: string;
  readonly #insecure: boolean;
  #origin: string;
  readonly #apiPath: string;
  readonly #httpClient: Deno.HttpClient | undefined;
  readonly #extraHeaders: Record<string, string>;
  readonly #tokenDeadlineMs: number;
  #connectedOnce = false;

  constructor(settings: TransportSettings) {
    bypassProxyForLoopback(); // before this process's first fetch
    this.host = settings.host;
    this.#origin = normalOrigin(settings.origin);
    this.#apiPath = settings.apiPath;
    this.#httpClient = settings.httpClient;
    this.#extraHeaders = settings.extraHeaders;
    this.#userAgent = settings.userAgent;
    this.#insecure = settings.insecure;
    this.#tokenDeadlineMs = settings.tokenDeadlineMs;
  }

  /** `http://host` or `https://host`, as currently used (as URL.origin spells it). */
  get origin(): string {
    return this.#origin;
  }

  /**
   * True when `url` is on this host: origins compared parsed, as URL.href spells a redirect's
   * target (`LOCALHOST:5000` as `localhost:5000`: a same-origin 307 lost its Authorization).
   */
  isHome(url: string): boolean {
    return sameOrigin(url, this.#origin);
  }

  /** True when the host is spoken to over plain HTTP. */
  get plainHttp(): boolean {
    return this.#origin.startsWith("http:");
  }

  /** True once a request of the client got an answer (noteConnected). */
  get connected(): boolean {
    return this.#connectedOnce;
  }

  /** The host answered: from now on a connection failure is an outage, and no fallback. */
  noteConnected(): void {
    this.#connectedOnce = true;
  }

  /**
   * Sends `req` once (no retries, no re-authentication): `authorization` only to this host,
   * redirects followed by hand. `stayedHome`: the response came from this host, not a redirect
   * target (whose 401 is not the registry's challenge).
   */
  async send(
    req: RegistryRequest,
    authorization: string | undefined,
  ): Promise<{ response: Response; stayedHome: boolean }> {
    let url = req.path.startsWith("/v2/") || req.path === "/v2"
      ? this.#origin + this.#apiPath + req.path.slice(3)
      : req.path.startsWith("/")
      ? this.#origin + req.path
      : req.path;
    if (!req.path.startsWith("/")) url = this.#checkedUrl(req.path, undefined, "URL");
    let method: string = req.method;
    let body = req.body;
    for (let hop = 0;; hop++) {
      const home = this.isHome(url);
      const headers: Record<string, string> = {
        "user-agent": this.#userAgent,
        ...(home ? this.#extraHeaders : {}),
        ...req.headers,
      };
      if (authorization && home) headers.authorization = authorization;
      let response: Response;
      try {
        const sending = fetch(url, {
          method,
          headers,
          body,
          redirect: "manual",
          signal: req.signal,
          client: (home ? this.#httpClient : undefined) ?? defaultHttpClient(),
        });
        if (!sentOne) {
          sentOne = true;
          mark("http: first request sent");
        }
        response = await sending;
      } catch (error) {
        if (hop === 0 && home && this.#fallBackToPlainHttp(error)) {
          url = this.#origin + url.slice(url.indexOf("/", "https://".length));
          hop = -1;
          continue;
        }
        if (!home && !req.signal?.aborted) {
          throw new FailedAtRedirectTarget(new URL(url).host, this.host, error, url);
        }
        throw error;
      }
      const location = response.headers.get("location");
      if (response.status < 300 || response.status > 399 || response.status === 304 || !location) {
        return { response, stayedHome: home };
      }
      await response.body?.cancel();
      if (hop >= MAX_REDIRECTS) {
        throw new OciError(`too many redirects for ${req.method} ${req.path} on ${this.host}`);
      }
      url = this.#checkedUrl(location, url, "Location");
      if (
        response.status === 303 || ((response.status === 301 || response.status === 302) &&
          method === "POST")
      ) {
        method = "GET";
        body = undefined;
      }
    }
  }

  /**
   * `location` (relative to `base`) as an absolute http(s) URL, or an OciError naming it: a
   * malformed one (`http://[::1`) failed in `new URL` with a TypeError, taken for a network
   * error and retried for seconds as "cannot reach registry"; another scheme (file:, data:)
   * would have fetch read this machine's files.
   */
  #checkedUrl(location: string, base: string | undefined, what: string): string {
    let url: URL;
    try {
      url = new URL(location, base);
    } catch {
      throw new OciError(`registry ${this.host} sent an invalid ${what}: ${quoted(location)}`);
    }
    if (url.protocol !== "https:" && url.protocol !== "http:") {
      throw new OciError(
        `registry ${this.host} sent a ${what} with the unsupported scheme ${
          quoted(url.protocol)
        }: only http(s) is followed`,
      );
    }
    return url.href;
  }

  #fallBackToPlainHttp(error: unknown): boolean {
    if (!this.#insecure || this.#connectedOnce || !this.#origin.startsWith("https:")) return false;
    if (!isNetworkError(error)) return false;
    debug(`HTTPS to ${this.host} failed (${describeFailure(error)}); --insecure: trying HTTP`);
    this.#origin = normalOrigin(`http://${this.host}`);
    return true;
  }

  /** GETs a token server URL (auth.ts): its realm checked at every redirect hop. */
  async fetchTokenServer(url: URL, headers: Headers, signal?: AbortSignal): Promise<Response> {
    const authOrigin = url.origin;
    let target = url;
    headers.set("user-agent", this.#userAgent);
    // A deadline of its own, the body's too: a token server dripping its reply (a MiB allowed)
    // passes the stall rule, and the request waiting on it is paused meanwhile.
    const endByMs = Date.now() + this.#tokenDeadlineMs;
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      checkTokenRealm(target, this.host, this.plainHttp);
      if (target.origin !== authOrigin) headers.delete("authorization");
      let response: Response;
      // A token server that says nothing is given up after the stall time, as a registry is.
      const watch = new StallWatch(signal);
      watch.endBy(endByMs);
      watch.progressed();
      try {
        response = await fetch(target, {
          headers,
          redirect: "manual",
          signal: watch.signal,
          client: this.#httpClient ?? defaultHttpClient(),
        });
      } catch (error) {
        watch.done();
        // Silence is given up (each try would wait the stall time again); a refusal is retried.
        if (watch.stalled && !signal?.aborted) {
          throw new OciError(
            `token server ${target.host} sent no reply ` +
              (watch.overDeadline
                ? `in time: gave up after ${Math.round(this.#tokenDeadlineMs / 1000)} s`
                : `for ${stallMs() / 1000} s`),
            undefined,
            { cause: error },
          );
        }
        if (signal?.aborted) throw error;
        throw new TokenServerUnavailable(
          `cannot reach token server ${target.host}${throughProxy(target.href)}: ${
            describeFailure(error)
          }`,
          undefined,
          { cause: error },
        );
      }
      watch.pause();
      const location = response.headers.get("location");
      if (response.status < 300 || response.status > 399 || !location) {
        return watchedBody(response, watch, target.host, {
          who: `token server ${target.host}`,
          what: "its reply",
        });
      }
      watch.done();
      await response.body?.cancel();
      try {
        target = new URL(location, target);
      } catch {
        throw new OciError(
          `token server ${target.host} sent an invalid Location: ${quoted(location)}`,
        );
      }
    }
    throw new OciError(`too many redirects from token server ${url.host}`);
  }
}
