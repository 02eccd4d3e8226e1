import { OciError } from "../errors.ts";
import { debug } from "../log.ts";
import { stallMs, StallWatch, watchedBody } from "./stall_watch.ts";
import { VERSION } from "../version.ts";
import { RegistryAuth, TokenServerUnavailable } from "./auth.ts";
import { RegistryTransport } from "./registry_transport.ts";
import { throughProxy } from "./proxy_env.ts";
import type { Credentials } from "./docker_config.ts";
import { isLoopbackRegistry, registryApiHost } from "./reference.ts";
import type { ImageReference } from "./reference.ts";
import {
  backoff,
  describeFailure,
  FailedAtRedirectTarget,
  isNetworkError,
  isTransientStatus,
  type RetryPolicy,
} from "./retry.ts";
import type { BodySink } from "./blob_range.ts";
import { type BlobReadFrom, readBlobRange, readBlobRangeTo } from "./blob_range_read.ts";
import { type ByteRange, readBlobRanges } from "./blob_ranges.ts";
import { OpenBodies } from "./open_bodies.ts";
import { registryConfigDir } from "./hosts_config.ts";
import {
  noteAnswered,
  noteProbeFailed,
  noteRateLimited,
  parseRetryAfter,
  waitForHost,
} from "./host_pacing.ts";
import {
  type HostCapability,
  loadHostRoutes,
  type MirrorHost,
  mirrorsFromRoutes,
  routeRequest,
  type ServerEndpoint,
} from "./host_routing.ts";
import {
  type FetchedManifest,
  type KeptConfigs,
  type ManifestListener,
  type ResolvedImage,
  resolveImage,
} from "./resolve.ts";
import { downloadBlob, type DownloadOptions } from "./download.ts";
import { type FetchedDocument, getDocument } from "./document.ts";

export type { ResolvedImage } from "./resolve.ts";
export type { LayerDescriptor } from "./layers.ts";

/** Options of a RegistryClient. */
export interface RegistryClientOptions {
  /** Force plain HTTP (true) or HTTPS (false); default: HTTP for loopback registries only. */
  plainHttp?: boolean;
  /**
   * The registry answered the command that started this process moments ago (a mount's or a
   * reattach's server): a refused connection is an outage to retry, not a mistyped host.
   */
  reachedBefore?: boolean;
  /** Fall back to plain HTTP when HTTPS cannot connect (Deno cannot skip TLS verification). */
  insecure?: boolean;
  /** Explicit credentials; otherwise Docker's config.json is consulted on the first 401. */
  credentials?: Credentials;
  /** User-Agent header; default `erofs-oci/VERSION`. */
  userAgent?: string;
  /** Time budget of one operation (one blob read, one manifest GET) including retries. */
  deadlineMs?: number;
  /** Retries without progress before giving up within the deadline. */
  maxAttempts?: number;
  /**
   * Directory of containerd hosts.toml files (mirrors, CAs); default
   * `EROFS_OCI_REGISTRY_CONFIG_DIR` or `/etc/containerd/certs.d`; false: none.
   */
  hostsConfigDir?: string | false;
  /** Where this client talks to instead of the registry's own address (a mirror, `server`). */
  endpoint?: ServerEndpoint;
  /**
   * false: the command takes no --username/--password-stdin for this registry (trace, the
   * source of convert), so a 401's hint names only `docker login`.
   */
  credentialOptions?: boolean;
}

/** One registry API request; see RegistryClient.request. */
export interface RegistryRequest {
  method: "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE";
  /** Path below the registry root (`/v2/...`) or an absolute URL (upload locations). */
  path: string;
  /** Token scope, e.g. `repository:app:pull`. */
  scope: string;
  headers?: Record<string, string>;
  /** Request body; must be re-sendable (bytes or string) so the request can be retried. */
  body?: Uint8Array<ArrayBuffer> | string;
  signal?: AbortSignal;
  /** Retry policy shared by the calls of one operation; default: a fresh one. */
  policy?: RetryPolicy;
  /**
   * Which configured hosts (hosts.toml) may answer: `pull` (blobs, manifests by digest) or
   * `resolve` (manifests by tag), mirrors first; default: the registry itself only (pushes).
   */
  route?: HostCapability;
  /**
   * A stall watch (stall_watch.ts): paused while this client waits on purpose (the host's
   * pace after a 429, backoff, authorization), running from each send.
   */
  stall?: { pause(): void; progressed(): void };
  /**
   * The reply's body is a blob the caller streams for as long as it keeps coming (downloads,
   * converted layers: they resume after a break, with a fresh deadline per MiB brought): the
   * operation's deadline bounds the wait for the headers only. Otherwise (manifests, tokens,
   * chunk tables, configs: replies read whole) it bounds the body too, renewed per MiB.
   */
  streamedBody?: boolean;
  /**
   * Bytes the registry works through before it can answer (an upload's closing PUT commits the
   * whole blob: on object storage a copy of it): time for them is added to the stall rule's.
   */
  commitBytes?: number;
}

/** Default time budget of one operation. */
export const DEFAULT_DEADLINE_MS = 60_000;
const DEFAULT_MAX_ATTEMPTS = 8;
/** Before the first successful connection, a refused connection is a typo, not an outage. */
const MAX_ATTEMPTS_NEVER_CONNECTED = 2;
/** How long a blob's redirect target is reused (pre-signed URLs typically live 5-20 min). */
const BLOB_LOCATION_TTL_MS = 60_000;

/**
 * The slowest send a request's body is given time for (8 KiB/s: an 8 MiB upload chunk, 17
 * minutes) before the registry's silence after it counts as a stall.
 */
const MIN_SEND_BYTES_PER_S = 8 * 1024;
/** The slowest commit of an uploaded blob allowed for (1 MiB/s: a GiB, 17 minutes). */
const MIN_COMMIT_BYTES_PER_S = 1 << 20;

/**
 * Time to send `req`'s body at MIN_SEND_BYTES_PER_S and for the registry to commit its
 * `commitBytes` at MIN_COMMIT_BYTES_PER_S (0 for neither): no reply can come before.
 */
function sendAllowanceMs(req: RegistryRequest): number {
  const body = req.body;
  const bytes = body === undefined
    ? 0
    : typeof body === "string"
    ? body.length * 3
    : body.byteLength;
  return Math.ceil(
    (bytes / MIN_SEND_BYTES_PER_S + (req.commitBytes ?? 0) / MIN_COMMIT_BYTES_PER_S) * 1000,
  );
}

/**
 * A client for one registry (OCI distribution API): manifests with platform selection, ranged
 * blob reads with retries and resume, verified downloads and pushes. Authentication (anonymous,
 * Basic, Bearer tokens per scope) and redirects (Authorization never leaves the registry host)
 * are handled inside `request`; how one request reaches the host (URLs, headers, redirects, the
 * `--insecure` fallback, the token server) is registry_transport.ts.
 *
 * @example
 * const client = new RegistryClient("localhost:5000", {});
 * const image = await client.resolveImage(parseReference("localhost:5000/app:v1"));
 * const bytes = await client.readBlobRange("app", image.layers[0].digest, 1024, 4096);
 * client.close();
 */
export class RegistryClient {
  /** Registry name as in the reference (`docker.io`, `localhost:5000`). */
  readonly registry: string;
  /** Host serving the API (`registry-1.docker.io` for Docker Hub). */
  readonly host: string;
  readonly #auth: RegistryAuth;
  /** How a request reaches the host (registry_transport.ts). */
  readonly #transport: RegistryTransport;
  readonly #deadlineMs: number;
  readonly #maxAttempts: number;
  /** Mirrors from hosts.toml, in order; the registry itself comes after them. */
  readonly #mirrors: MirrorHost<RegistryClient>[];
  readonly #capabilities: ReadonlySet<HostCapability> | undefined;
  /** Where blob GETs were last redirected (object storage), to skip the registry hop. */
  readonly #blobLocations = new Map<string, { url: string; expiresAtMs: number }>();

  constructor(registry: string, options: RegistryClientOptions = {}) {
    this.registry = registry;
    const configDir = options.hostsConfigDir ?? registryConfigDir();
    const config = options.endpoint || configDir === false
      ? undefined
      : loadHostRoutes(registry, configDir);
    const endpoint = options.endpoint ?? config?.server;
    let origin: string;
    let apiPath: string;
    let httpClient: Deno.HttpClient | undefined;
    let extraHeaders: Record<string, string>;
    if (endpoint) {
      this.host = new URL(endpoint.origin).host;
      origin = endpoint.origin;
      apiPath = new URL(endpoint.apiRoot).pathname;
      httpClient = endpoint.httpClient;
      extraHeaders = endpoint.headers ?? {};
      this.#capabilities = endpoint.capabilities;
    } else {
      this.host = registryApiHost(registry);
      const plain = options.plainHttp ?? isLoopbackRegistry(this.host);
      origin = `${plain ? "http" : "https"}://${this.host}`;
      apiPath = "/v2";
      httpClient = config?.serverSettings?.httpClient;
      extraHeaders = config?.serverSettings?.headers ?? {};
      this.#capabilities = config?.serverSettings?.capabilities;
    }
    const deadlineMs = options.deadlineMs ?? DEFAULT_DEADLINE_MS;
    this.#transport = new RegistryTransport({
      host: this.host,
      origin,
      apiPath,
      httpClient,
      extraHeaders,
      userAgent: options.userAgent ?? `erofs-oci/${VERSION}`,
      insecure: (options.insecure ?? false) && !endpoint,
      tokenDeadlineMs: deadlineMs,
    });
    if (options.reachedBefore) this.#transport.noteConnected();
    this.#deadlineMs = deadlineMs;
    this.#maxAttempts = options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS;
    this.#auth = new RegistryAuth(
      registry,
      (url, headers, signal) => this.#transport.fetchTokenServer(url, headers, signal),
      // Explicit credentials are for the registry (or its configured `server`), never a mirror.
      options.endpoint?.isMirror ? undefined : options.credentials,
      options.credentialOptions,
    );
    this.#mirrors = config
      ? mirrorsFromRoutes(config, (mirror) =>
        new RegistryClient(new URL(mirror.origin).host, {
          ...options,
          credentials: undefined,
          endpoint: mirror,
        }))
      : [];
  }

  /** `http://host` or `https://host`, as currently used. */
  get origin(): string {
    return this.#transport.origin;
  }

  /** True when the registry is spoken to over plain HTTP (what recovery records keep). */
  get plainHttp(): boolean {
    return this.#transport.plainHttp;
  }

  /** A fresh retry policy for one operation. */
  newPolicy(): RetryPolicy {
    return { deadlineAtMs: Date.now() + this.#deadlineMs, maxAttempts: this.#maxAttempts };
  }

  /**
   * Resolves a reference to one platform's manifest and its layers; see resolve.ts. `top`: the
   * reference's own manifest, fetched already through this client (fetchManifest).
   */
  resolveImage(
    ref: ImageReference,
    platform?: string,
    options: {
      onManifest?: ManifestListener;
      top?: Promise<FetchedManifest>;
      keptConfigs?: KeptConfigs;
    } = {},
  ): Promise<ResolvedImage> {
    return resolveImage(
      this,
      ref,
      platform,
      undefined,
      options.onManifest,
      options.top,
      options.keptConfigs,
    );
  }

  /**
   * Reads exactly `length` bytes at `offset` of a blob with HTTP range requests; retries, resumes
   * after truncation and never returns short data. The mount hot path. `expectedSizeBytes`:
   * the descriptor's size, checked against the size the registry reports (FormatError).
   */
  readBlobRange(
    repository: string,
    digest: string,
    offset: number,
    length: number,
    signal?: AbortSignal,
    expectedSizeBytes?: number,
    from?: BlobReadFrom,
  ): Promise<Uint8Array> {
    return readBlobRange(this, repository, digest, offset, length, signal, expectedSizeBytes, from);
  }

  /** readBlobRange handing the bytes to `sink` as they arrive (no buffer of the whole range). */
  readBlobRangeTo(
    repository: string,
    digest: string,
    offset: number,
    length: number,
    sink: BodySink,
    signal?: AbortSignal,
    expectedSizeBytes?: number,
  ): Promise<void> {
    return readBlobRangeTo(
      this,
      repository,
      digest,
      offset,
      length,
      sink,
      signal,
      expectedSizeBytes,
    );
  }

  /** Several ranges in one GET where the registry answers multi-range; see blob_ranges.ts. */
  readBlobRanges(
    repository: string,
    digest: string,
    ranges: readonly ByteRange[],
    expectedSizeBytes?: number,
    signal?: AbortSignal,
  ): Promise<(Uint8Array | undefined)[] | undefined> {
    return readBlobRanges(this, repository, digest, ranges, expectedSizeBytes, signal);
  }

  /** Downloads a blob to `path`, verified against its digest; see download.ts. */
  downloadBlob(
    repository: string,
    digest: string,
    path: string,
    options: DownloadOptions = {},
  ): Promise<{ sizeBytes: number }> {
    return downloadBlob(this, repository, digest, path, options);
  }

  /**
   * The object-storage URL a blob GET was redirected to recently, if still fresh. Such URLs are
   * usually pre-signed for minutes; reusing one for a short while halves the round trips of a
   * mount's reads, and any failure falls back to asking the registry again.
   */
  blobLocation(digest: string): string | undefined {
    const entry = this.#blobLocations.get(digest);
    if (entry && entry.expiresAtMs > Date.now()) return entry.url;
    if (entry) this.#blobLocations.delete(digest);
    return undefined;
  }

  /** Records (url) or forgets (undefined) the redirect target of a blob. */
  setBlobLocation(digest: string, url: string | undefined): void {
    if (url === undefined) this.#blobLocations.delete(digest);
    else this.#blobLocations.set(digest, { url, expiresAtMs: Date.now() + BLOB_LOCATION_TTL_MS });
  }

  /** True when `url` is on this registry or one of its mirrors (not a redirect target). */
  isRegistryUrl(url: string): boolean {
    return this.#transport.isHome(url) ||
      this.#mirrors.some((m) => m.client.isRegistryUrl(url));
  }

  /** Mirror origins in the order they are tried (for messages and tests). */
  get mirrorOrigins(): string[] {
    return this.#mirrors.map((m) => m.client.origin);
  }

  /**
   * Sends `req` and reads its whole body (at most `maxBytes`) under one retry policy; see
   * document.ts. `bytes` is undefined when `wanted` (default: a 200) refused the reply.
   */
  getDocument(
    req: RegistryRequest,
    maxBytes: number,
    wanted?: (response: Response) => boolean,
  ): Promise<FetchedDocument> {
    return getDocument(this, req, maxBytes, wanted);
  }

  /**
   * Blob bodies a host sent whole (it ignored Range) kept open for the next read of the blob
   * (open_bodies.ts); close() cancels them.
   */
  readonly openBodies = new OpenBodies();

  /** Cancels the kept blob bodies; fetch keeps its own connection pool. */
  close(): void {
    this.openBodies.close();
  }

  /**
   * Sends one API request: authorization for `scope` (one re-authentication on 401), redirects
   * followed by hand without Authorization to other hosts, and retries with backoff on 5xx and
   * network errors. Returns the final response whatever its status; the caller must consume or
   * cancel its body.
   */
  request(req: RegistryRequest): Promise<Response> {
    if (req.route === undefined || !req.path.startsWith("/") || this.#mirrors.length === 0) {
      return this.#requestHere(req);
    }
    const self = { client: this as RegistryClient, capabilities: this.#capabilities };
    return routeRequest(req, req.route, this.#mirrors, self, (client, r) => client.#requestHere(r));
  }

  async #requestHere(outer: RegistryRequest): Promise<Response> {
    const policy = outer.policy ?? this.newPolicy();
    const attempts = policy.attempts ?? { made: 0 };
    for (;;) {
      const attempt = ++attempts.made;
      // Requests without a watch of their own get one per attempt: a registry that accepts and
      // then says nothing, or stops in the middle of a body, is asked again, then given up. A
      // request with a body (an upload's chunk, a manifest) gets the time to send it at the
      // slowest rate allowed on top: no reply can come before it is sent.
      const sendMs = sendAllowanceMs(outer);
      const silenceMs = stallMs() + sendMs;
      const watch = outer.stall ? undefined : new StallWatch(outer.signal, silenceMs);
      // And the operation's deadline: a registry dripping a reply passes the stall rule.
      watch?.endBy(policy.deadlineAtMs + sendMs, this.#deadlineMs);
      const req = watch ? { ...outer, signal: watch.signal, stall: watch } : outer;
      req.stall?.pause();
      let response: Response;
      let sentAtMs = 0;
      let probe: number | undefined;
      try {
        probe = await waitForHost(this.host, policy, req.signal);
        sentAtMs = Date.now();
        response = await this.#authorized(req);
      } catch (error) {
        watch?.done();
        if (probe !== undefined) noteProbeFailed(this.host, probe);
        if (watch?.overDeadline && !outer.signal?.aborted) {
          throw new OciError(
            `registry ${this.host} sent no reply to ${req.method} ${req.path} in time: gave up ` +
              `after ${watch.elapsedS} s`,
            undefined,
            { cause: error },
          );
        }
        if (watch?.stalled && !outer.signal?.aborted) {
          const silentS = Math.round(silenceMs / 1000);
          debug(`${req.method} ${req.path}: no reply for ${silentS} s (attempt ${attempt})`);
          if (await backoff(attempt, policy, outer.signal)) continue;
          throw new OciError(
            `registry ${this.host} stopped answering (${req.method} ${req.path}, no reply for ` +
              `${silentS} s)`,
            undefined,
            { cause: error },
          );
        }
        if (error instanceof TokenServerUnavailable) {
          debug(`${req.method} ${req.path}: ${error.message} (attempt ${attempt})`);
          if (await backoff(attempt, policy, outer.signal, error.retryAfterMs)) continue;
          throw error;
        }
        if (!isNetworkError(error)) throw error;
        const limit = this.#transport.connected ? policy : {
          ...policy,
          maxAttempts: Math.min(policy.maxAttempts, MAX_ATTEMPTS_NEVER_CONNECTED),
        };
        debug(`${req.method} ${req.path}: ${describeFailure(error)} (attempt ${attempt})`);
        if (await backoff(attempt, limit, req.signal)) continue;
        const failure = describeFailure(error);
        if (error instanceof FailedAtRedirectTarget) {
          throw new OciError(
            `cannot reach ${error.host}${throughProxy(error.url)}, where registry ${this.host} ` +
              `redirected ${req.method} ${req.path}: ${failure}`,
            "the registry's storage is unreachable from here; try again later",
            { cause: error },
          );
        }
        if (UNREADABLE_REPLY.test(failure)) {
          // Reached, but its reply is not HTTP we read (or a proxy's in front of it).
          throw new OciError(
            `registry ${this.host} sent a reply that cannot be read: ${failure}`,
            "the registry, or a proxy in front of it, answers with malformed or oversized headers",
            { cause: error },
          );
        }
        const via = throughProxy(this.#transport.origin);
        throw new OciError(
          `cannot reach registry ${this.host}${via}: ${failure}`,
          via
            ? "check the proxy, or list the registry in NO_PROXY to reach it directly"
            : unreachableHint(failure, this.#transport.origin.startsWith("https:")),
          { cause: error },
        );
      }
      this.#transport.noteConnected();
      const retryAfterMs = parseRetryAfter(response.headers.get("retry-after"));
      if (response.status === 429 || (response.status === 503 && retryAfterMs !== undefined)) {
        // Paced per host (host_pacing.ts): the wait happens in waitForHost, for every client.
        const pauseMs = noteRateLimited(this.host, retryAfterMs);
        debug(`${req.method} ${req.path}: ${response.status}, pausing ${this.host} ${pauseMs} ms`);
        if (attempt < policy.maxAttempts) {
          await response.body?.cancel();
          watch?.done();
          continue;
        }
        return watch ? this.#watchedBody(response, watch, outer) : response;
      }
      noteAnswered(this.host, sentAtMs);
      if (isTransientStatus(response.status)) {
        debug(`${req.method} ${req.path}: ${response.status} (attempt ${attempt})`);
        if (await backoff(attempt, policy, req.signal)) {
          await response.body?.cancel();
          watch?.done();
          continue;
        }
      }
      return watch ? this.#watchedBody(response, watch, outer) : response;
    }
  }

  /** The reply's body under the request's watch; a streamed blob's free of the deadline. */
  #watchedBody(response: Response, watch: StallWatch, req: RegistryRequest): Response {
    if (req.streamedBody) watch.endBy(Infinity);
    return watchedBody(response, watch, this.host, {
      who: `registry ${this.host}`,
      what: `its reply to ${req.method} ${req.path}`,
    });
  }

  async #authorized(req: RegistryRequest): Promise<Response> {
    let header = await this.#auth.authorize(req.scope, req.signal);
    for (let tries = 0;; tries++) {
      req.stall?.progressed(); // from here the registry owes us an answer
      const { response, stayedHome } = await this.#transport.send(req, header);
      req.stall?.pause();
      // A 401 from object storage after a redirect is not the registry's challenge.
      if (response.status !== 401 || !stayedHome) return response;
      await response.body?.cancel();
      if (tries > 0) throw await this.#auth.persistentFailure();
      await this.#auth.unauthorized(response, req.scope, header, req.signal);
      header = await this.#auth.authorize(req.scope, req.signal);
    }
  }
}

/** What to check when a registry cannot be reached, by what failed. */
/** hyper's words for a reply it could not parse: the registry was reached. */
const UNREADABLE_REPLY =
  /message head is too large|invalid HTTP|parse error|header (?:name|value)/i;

function unreachableHint(failure: string, https: boolean): string | undefined {
  if (/dns error/i.test(failure)) return "check the registry's host name";
  const blocked = /requests to port (\d+) are blocked/i.exec(failure)?.[1];
  if (blocked) {
    // Deno's fetch refuses the Fetch standard's "bad ports" (6000, 6666, 10080, …) before
    // connecting; no option lifts it.
    return `port ${blocked} is one web clients refuse (as browsers do), and erofs-oci's HTTP ` +
      "client with them: serve the registry on another port";
  }
  if (/connection refused/i.test(failure)) {
    return "check the registry's address and port: nothing is listening there";
  }
  return https
    ? "for a registry without TLS pass --plain-http (or --insecure to allow a fallback)"
    : undefined;
}
