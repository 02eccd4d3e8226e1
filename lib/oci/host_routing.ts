/**
 * Turns a registry's hosts.toml into endpoints (TLS clients for `ca`/`client`) and sends a
 * request through them: mirrors with the needed capability in file order, then the registry
 * (or its `server`). A mirror that errs is skipped for a while and the next host answers; a 404
 * from a mirror (a proxy cache that lacks the blob or a private repository) just moves on. The
 * last host's answer, whatever it is, is the caller's.
 */
import { FormatError } from "../errors.ts";
import { debug, warn } from "../log.ts";
import {
  type HostCapability,
  loadRegistryHostsConfig,
  type RegistryHostEntry,
} from "./hosts_config.ts";
import { isHostDown, markHostDown, MIRROR_DOWN_MS } from "./host_pacing.ts";
import { describeFailure, type RetryPolicy } from "./retry.ts";
import { bypassProxyForLoopback } from "./proxy_env.ts";

export type { HostCapability } from "./hosts_config.ts";

/** How a client reaches one configured host. */
export interface ServerEndpoint {
  origin: string;
  apiRoot: string;
  httpClient?: Deno.HttpClient;
  headers?: Record<string, string>;
  capabilities?: ReadonlySet<HostCapability>;
  /** A mirror gets no `--username` credentials (only Docker's config for its own name). */
  isMirror?: boolean;
}

export interface HostRoutes {
  /** The configured `server` (replaces the registry's address). */
  server?: ServerEndpoint;
  /** Settings for the registry's usual address when no `server` is given. */
  serverSettings?: Pick<ServerEndpoint, "httpClient" | "headers" | "capabilities">;
  mirrors: ServerEndpoint[];
}

export interface MirrorHost<C> {
  client: C;
  capabilities: ReadonlySet<HostCapability>;
}

/** Attempts on a mirror before the next host is asked; a mirror should answer promptly. */
const MIRROR_MAX_ATTEMPTS = 2;
const MIRROR_DEADLINE_MS = 5_000;
const MAX_PEM_BYTES = 1024 * 1024;

const httpClients = new Map<string, Deno.HttpClient>();

/**
 * The connection pool of every HTTP client here: at most a few idle connections per host, closed
 * after a while. Deno's default kept every connection a burst opened (a GET finishing lets the
 * next one open another before its own goes back to the pool), for minutes: 31 for 16 GETs
 * in flight (request_slots.ts), 322 before that bound.
 */
const POOL = { poolMaxIdlePerHost: 8, poolIdleTimeout: 30_000 } as const;
let plainClient: Deno.HttpClient | undefined;

/** The HTTP client of requests no hosts.toml setting applies to (redirect targets too). */
export function defaultHttpClient(): Deno.HttpClient {
  if (plainClient) return plainClient;
  bypassProxyForLoopback(); // Deno reads the proxy variables as it makes the client
  plainClient = Deno.createHttpClient({ ...POOL });
  return plainClient;
}
const warned = new Set<string>();

function warnOnce(key: string, message: string): void {
  if (warned.has(key)) return;
  warned.add(key);
  warn(message);
}

function readPem(path: string, what: string): string {
  try {
    const info = Deno.statSync(path);
    if (!info.isFile || info.size > MAX_PEM_BYTES) throw new Error("not a PEM file");
    return Deno.readTextFileSync(path);
  } catch (error) {
    throw new FormatError(
      `cannot read ${what} ${path}: ${(error as Error).message}`,
      "fix the path in hosts.toml",
    );
  }
}

/** One HTTP client per distinct TLS setting, shared by all clients of the process. */
function httpClientFor(entry: RegistryHostEntry): Deno.HttpClient | undefined {
  if (entry.caCertPaths.length === 0 && entry.clientCerts.length === 0) return undefined;
  const key = JSON.stringify([entry.caCertPaths, entry.clientCerts]);
  let client = httpClients.get(key);
  if (client) return client;
  bypassProxyForLoopback(); // Deno reads the proxy variables as it makes the client
  const caCerts = entry.caCertPaths.map((p) => readPem(p, "CA certificate"));
  const pair = entry.clientCerts[0];
  if (entry.clientCerts.length > 1) {
    warnOnce(key, `${entry.origin}: only the first client certificate of hosts.toml is used`);
  }
  const clientPem = pair && {
    cert: readPem(pair.certPath, "client certificate"),
    key: readPem(pair.keyPath, "client key"),
  };
  try {
    client = Deno.createHttpClient({ ...POOL, caCerts, ...clientPem });
  } catch (error) {
    // The TLS library's words about PEM it cannot use, which file was which added.
    const files = [
      ...entry.caCertPaths.map((path) => `CA certificate ${path}`),
      ...pair ? [`client certificate ${pair.certPath}`, `client key ${pair.keyPath}`] : [],
    ];
    throw new FormatError(
      `hosts.toml of ${entry.origin || "the registry"}: cannot use ${files.join(", ")}: ${
        (error as Error).message
      }`,
      "fix the files or their paths in hosts.toml (PEM: a certificate, and a private key that " +
        "belongs to it)",
    );
  }
  httpClients.set(key, client);
  return client;
}

function endpointOf(entry: RegistryHostEntry): ServerEndpoint {
  return {
    origin: entry.origin,
    apiRoot: entry.apiRoot,
    httpClient: httpClientFor(entry),
    headers: entry.headers,
    capabilities: entry.capabilities,
    isMirror: !entry.isServer,
  };
}

/**
 * The routes for `registry` from the hosts.toml in `dir`; undefined without a file. A mirror
 * with `skip_verify` over HTTPS is left out with a warning: Deno's TLS cannot skip certificate
 * checks, and quietly checking anyway would fail every read on it; `ca` is the way.
 */
export function loadHostRoutes(registry: string, dir: string): HostRoutes | undefined {
  const config = loadRegistryHostsConfig(registry, dir);
  if (!config) return undefined;
  const usable = (entry: RegistryHostEntry) => {
    if (!entry.skipVerify || entry.origin.startsWith("http:") || entry.caCertPaths.length > 0) {
      return true;
    }
    warnOnce(
      `skip-${entry.origin}`,
      `${config.path}: skip_verify cannot be honoured for ${entry.origin} (TLS is always verified); ` +
        `${
          entry.isServer ? "verifying it anyway" : "not using it"
        } — give its certificate with ca = "..."`,
    );
    return entry.isServer;
  };
  const routes: HostRoutes = { mirrors: config.mirrors.filter(usable).map(endpointOf) };
  if (config.server && usable(config.server)) routes.server = endpointOf(config.server);
  if (config.serverSettings) {
    const s = config.serverSettings;
    routes.serverSettings = {
      httpClient: httpClientFor({ ...s, origin: "", apiRoot: "" }),
      headers: s.headers,
      capabilities: s.capabilities,
    };
  }
  return routes;
}

/** Builds the mirror clients of `routes` in order. */
export function mirrorsFromRoutes<C>(
  routes: HostRoutes,
  make: (endpoint: ServerEndpoint) => C,
): MirrorHost<C>[] {
  return routes.mirrors.map((endpoint) => ({
    client: make(endpoint),
    capabilities: endpoint.capabilities ?? new Set(),
  }));
}

interface RoutableRequest {
  method: string;
  path: string;
  signal?: AbortSignal;
  policy?: RetryPolicy;
}

/**
 * Sends `req` to the hosts allowed for `route`: each mirror once (with a short retry budget),
 * moving on after errors and 404s; the registry last with the caller's full policy.
 */
export async function routeRequest<C extends { host: string }, R extends RoutableRequest>(
  req: R,
  route: HostCapability,
  mirrors: MirrorHost<C>[],
  self: { client: C; capabilities?: ReadonlySet<HostCapability> },
  send: (client: C, req: R) => Promise<Response>,
): Promise<Response> {
  const candidates = mirrors.filter((m) => m.capabilities.has(route)).map((m) => m.client);
  if (!self.capabilities || self.capabilities.has(route) || candidates.length === 0) {
    candidates.push(self.client);
  }
  for (let i = 0; i < candidates.length - 1; i++) {
    const mirror = candidates[i];
    if (isHostDown(mirror.host)) continue;
    const policy: RetryPolicy = {
      deadlineAtMs: Math.min(req.policy?.deadlineAtMs ?? Infinity, Date.now() + MIRROR_DEADLINE_MS),
      maxAttempts: MIRROR_MAX_ATTEMPTS,
    };
    let failure: string;
    try {
      const response = await send(mirror, { ...req, policy });
      if (response.status < 400 || response.status === 416) return response;
      await response.body?.cancel();
      if (response.status === 404) {
        debug(`${req.method} ${req.path}: mirror ${mirror.host} has no such object; next host`);
        continue;
      }
      failure = `answered ${response.status}`;
    } catch (error) {
      req.signal?.throwIfAborted();
      failure = describeFailure(error);
    }
    // Concurrent reads that saw the same failure warn once.
    if (isHostDown(mirror.host)) continue;
    markHostDown(mirror.host);
    warn(
      `registry mirror ${mirror.host} failed (${failure}); using the next host for ${
        MIRROR_DOWN_MS / 1000
      } s`,
    );
  }
  return await send(candidates[candidates.length - 1], req);
}
