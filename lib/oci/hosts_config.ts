/**
 * containerd's registry host configuration (docs/hosts.md of containerd): a directory
 * (`EROFS_OCI_REGISTRY_CONFIG_DIR`, default `/etc/containerd/certs.d`) with
 * `HOST[:PORT]/hosts.toml` per registry and `_default/hosts.toml` for the others. A file names
 * the upstream (`server`, default `https://HOST`) and mirrors (`[host."URL"]`, tried in file
 * order before the server), each with `capabilities` (pull, resolve, push; all when absent),
 * `ca`, `client`, `skip_verify`, `header` and `override_path`. Reading the same files as
 * containerd lets a fleet point erofs-oci at its mirror without a second configuration.
 */
import { FormatError } from "../errors.ts";
import { isTomlTable, parseTomlSubset, type TomlTable, type TomlValue } from "./toml_subset.ts";

export const DEFAULT_REGISTRY_CONFIG_DIR = "/etc/containerd/certs.d";
export const REGISTRY_CONFIG_DIR_ENV = "EROFS_OCI_REGISTRY_CONFIG_DIR";
/** hosts.toml files are a few hundred bytes; anything far larger is not one. */
const MAX_HOSTS_FILE_BYTES = 256 * 1024;
/** Bound on mirrors per registry (GKE allows 10); each costs a fallback attempt. */
const MAX_HOSTS = 16;

export type HostCapability = "pull" | "resolve" | "push";
const ALL_CAPABILITIES: readonly HostCapability[] = ["pull", "resolve", "push"];

/** One host of a registry's configuration: a mirror or the server itself. */
export interface RegistryHostEntry {
  /** `https://mirror.example:5000` */
  origin: string;
  /** What replaces the leading `/v2` of API paths, e.g. `https://m:5000/v2`, `https://m/proxy/v2`. */
  apiRoot: string;
  capabilities: ReadonlySet<HostCapability>;
  /** PEM files trusted in addition to the system roots (absolute paths). */
  caCertPaths: string[];
  /** Client certificate (and key, else a `.key` beside it) for mutual TLS. */
  clientCerts: { certPath: string; keyPath: string }[];
  skipVerify: boolean;
  headers: Record<string, string>;
  /** The `server` entry: the registry itself, not a mirror. */
  isServer: boolean;
}

export interface RegistryHostsConfig {
  /** The file read (for messages). */
  path: string;
  /** Mirrors in file order. */
  mirrors: RegistryHostEntry[];
  /** The `server` key with the top-level settings; undefined: the registry's usual address. */
  server?: RegistryHostEntry;
  /** Top-level settings when no `server` is given (they apply to the usual address). */
  serverSettings?: Omit<RegistryHostEntry, "origin" | "apiRoot">;
}

/** The configuration directory in effect. */
export function registryConfigDir(): string {
  return Deno.env.get(REGISTRY_CONFIG_DIR_ENV) || DEFAULT_REGISTRY_CONFIG_DIR;
}

function readSmallText(path: string): string | undefined {
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(path, { read: true });
  } catch (error) {
    if (error instanceof Deno.errors.NotFound || error instanceof Deno.errors.NotADirectory) {
      return undefined;
    }
    throw new FormatError(`cannot read ${path}: ${(error as Error).message}`);
  }
  try {
    const buffer = new Uint8Array(MAX_HOSTS_FILE_BYTES + 1);
    let filled = 0;
    for (;;) {
      const n = file.readSync(buffer.subarray(filled));
      if (n === null) break;
      filled += n;
      if (filled > MAX_HOSTS_FILE_BYTES) {
        throw new FormatError(`${path} is larger than ${MAX_HOSTS_FILE_BYTES} bytes`);
      }
    }
    return new TextDecoder("utf-8", { fatal: true }).decode(buffer.subarray(0, filled));
  } catch (error) {
    if (error instanceof FormatError) throw error;
    throw new FormatError(`cannot read ${path}: ${(error as Error).message}`);
  } finally {
    file.close();
  }
}

/**
 * The hosts.toml for `registry` (`docker.io`, `localhost:5000`): its own directory, else
 * `_default`; undefined when neither exists. Malformed files are a FormatError naming the file.
 */
export function loadRegistryHostsConfig(
  registry: string,
  dir: string = registryConfigDir(),
): RegistryHostsConfig | undefined {
  if (registry === "" || registry.includes("/") || registry.startsWith(".")) return undefined;
  for (const name of [registry, "_default"]) {
    const hostDir = `${dir}/${name}`;
    const path = `${hostDir}/hosts.toml`;
    const text = readSmallText(path);
    if (text === undefined) continue;
    return parseHostsToml(text, path, hostDir);
  }
  return undefined;
}

/** Parses one hosts.toml; relative certificate paths are relative to `hostDir`. */
export function parseHostsToml(text: string, path: string, hostDir: string): RegistryHostsConfig {
  const doc = parseTomlSubset(text, path);
  const bad = (what: string): never => {
    throw new FormatError(`${path}: ${what}`, "see containerd's docs/hosts.md");
  };
  const settings = (table: TomlTable, where: string) => {
    const caps = table.capabilities;
    let capabilities = new Set<HostCapability>(ALL_CAPABILITIES);
    if (caps !== undefined) {
      if (!Array.isArray(caps)) bad(`${where}capabilities must be an array`);
      capabilities = new Set();
      for (const c of caps as TomlValue[]) {
        if (c !== "pull" && c !== "resolve" && c !== "push") bad(`${where}unknown capability`);
        capabilities.add(c as HostCapability);
      }
    }
    const skipVerify = table.skip_verify ?? false;
    if (typeof skipVerify !== "boolean") bad(`${where}skip_verify must be true or false`);
    const overridePath = table.override_path ?? false;
    if (typeof overridePath !== "boolean") bad(`${where}override_path must be true or false`);
    return {
      capabilities,
      caCertPaths: stringList(table.ca, `${where}ca`, bad).map((p) => resolvePath(hostDir, p)),
      clientCerts: clientList(table.client, `${where}client`, bad, hostDir),
      skipVerify: skipVerify as boolean,
      headers: headerTable(table.header, `${where}header`, bad),
      overridePath: overridePath as boolean,
    };
  };
  const entry = (url: string, table: TomlTable, isServer: boolean): RegistryHostEntry => {
    const where = isServer ? "" : `host "${url}": `;
    const { overridePath, ...rest } = settings(table, where);
    const { origin, apiRoot } = hostUrl(url, overridePath, bad);
    return { origin, apiRoot, ...rest, isServer };
  };
  const mirrors: RegistryHostEntry[] = [];
  if (doc.host !== undefined) {
    if (!isTomlTable(doc.host)) bad("host must be a table");
    for (const [url, table] of Object.entries(doc.host as TomlTable)) {
      if (!isTomlTable(table)) bad(`host "${url}" must be a table`);
      if (mirrors.length >= MAX_HOSTS) bad(`more than ${MAX_HOSTS} hosts`);
      mirrors.push(entry(url, table as TomlTable, false));
    }
  }
  const config: RegistryHostsConfig = { path, mirrors };
  if (doc.server !== undefined) {
    if (typeof doc.server !== "string") bad("server must be a URL string");
    config.server = entry(doc.server as string, doc, true);
  } else {
    const { overridePath: _, ...rest } = settings(doc, "");
    config.serverSettings = { ...rest, isServer: true };
  }
  return config;
}

function resolvePath(hostDir: string, path: string): string {
  return path.startsWith("/") ? path : `${hostDir}/${path}`;
}

function stringList(value: TomlValue | undefined, what: string, bad: (w: string) => never) {
  if (value === undefined) return [];
  if (typeof value === "string") return [value];
  if (Array.isArray(value) && value.every((v) => typeof v === "string")) return value as string[];
  return bad(`${what} must be a path or an array of paths`);
}

function clientList(
  value: TomlValue | undefined,
  what: string,
  bad: (w: string) => never,
  hostDir: string,
): { certPath: string; keyPath: string }[] {
  if (value === undefined) return [];
  const items = Array.isArray(value) ? value : [value];
  return items.map((item) => {
    const pair = typeof item === "string" ? [item] : item;
    if (
      !Array.isArray(pair) || pair.length < 1 || pair.length > 2 ||
      !pair.every((p) => typeof p === "string")
    ) {
      return bad(`${what} must be a path, or [cert, key] pairs`);
    }
    const certPath = resolvePath(hostDir, pair[0] as string);
    // containerd's convention: a lone certificate `x.cert` has its key in `x.key`.
    const keyPath = pair.length === 2
      ? resolvePath(hostDir, pair[1] as string)
      : certPath.replace(/\.(cert|crt|pem)$/, "") + ".key";
    return { certPath, keyPath };
  });
}

function headerTable(
  value: TomlValue | undefined,
  what: string,
  bad: (w: string) => never,
): Record<string, string> {
  const headers: Record<string, string> = {};
  if (value === undefined) return headers;
  if (!isTomlTable(value)) return bad(`${what} must be a table`);
  for (const [name, v] of Object.entries(value)) {
    const values = typeof v === "string" ? [v] : v;
    if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name)) bad(`${what}: bad header name`);
    if (!Array.isArray(values) || !values.every((x) => typeof x === "string")) {
      bad(`${what}.${name} must be a string or strings`);
    }
    const joined = (values as string[]).join(", ");
    if (/[\r\n\0]/.test(joined)) bad(`${what}.${name}: line breaks in a header value`);
    headers[name.toLowerCase()] = joined;
  }
  return headers;
}

/**
 * `origin` and API root of a host URL; without a scheme HTTPS (as containerd). The API root is
 * the URL's path with `/v2` appended unless it already ends so, or the path as is with
 * `override_path` (registries below a prefix that lacks `/v2`).
 */
function hostUrl(
  raw: string,
  overridePath: boolean,
  bad: (w: string) => never,
): { origin: string; apiRoot: string } {
  let url: URL;
  try {
    url = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `https://${raw}`);
  } catch {
    return bad(`'${raw}' is not a URL`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") bad(`'${raw}': not http(s)`);
  if (url.username || url.password || url.search || url.hash) {
    bad(`'${raw}': user, query or fragment in a host URL`);
  }
  let path = url.pathname.replace(/\/+$/, "");
  if (!overridePath && !path.endsWith("/v2")) path += "/v2";
  return { origin: url.origin, apiRoot: url.origin + path };
}
