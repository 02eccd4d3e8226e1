/**
 * The proxy environment as Deno's fetch reads it (ALL_PROXY, HTTPS_PROXY, HTTP_PROXY, each
 * upper-case first, then lower-case; NO_PROXY, else no_proxy), with one change: loopback is never
 * proxied, as in Go's net/http (docker, containerd, skopeo). A system-wide HTTP_PROXY sent requests
 * for a registry on 127.0.0.1, localhost or [::1] to the proxy, which cannot reach this machine's
 * loopback: "cannot reach registry 127.0.0.1:5000: Connection refused" while it listened.
 *
 * Deno reads these variables when it makes an HTTP client: its default one at the first fetch of
 * the process, the others at Deno.createHttpClient. bypassProxyForLoopback runs before both
 * (RegistryTransport's constructor, host_routing's clients) and adds loopback to NO_PROXY; the
 * processes this one starts (the mount server) inherit it.
 */

/**
 * Loopback, which Go's httpproxy never proxies (`localhost` and loopback addresses; IPv4-mapped
 * ones too here). NO_PROXY's domain rule makes `localhost` cover names under it as well, which
 * RFC 6761 reserves for loopback.
 */
const LOOPBACK_NO_PROXY = ["localhost", "127.0.0.0/8", "::1", "::ffff:127.0.0.0/104"];

/** In the order Deno's fetch tries them; the first set (and usable) of each pair counts. */
const PROXY_VARIABLES: { names: [string, string]; scheme?: "http:" | "https:" }[] = [
  { names: ["ALL_PROXY", "all_proxy"] },
  { names: ["HTTPS_PROXY", "https_proxy"], scheme: "https:" },
  { names: ["HTTP_PROXY", "http_proxy"], scheme: "http:" },
];

let bypassed = false;

/** Where the variables are read and NO_PROXY written: the process's environment. */
export interface ProxyEnvironment {
  get(name: string): string | undefined;
  set(name: string, value: string): void;
}

const processEnvironment: ProxyEnvironment = {
  get(name) {
    try {
      return Deno.env.get(name);
    } catch {
      return undefined; // no --allow-env: Deno's fetch still reads them, we cannot tell
    }
  },
  set: (name, value) => Deno.env.set(name, value),
};

let environment = processEnvironment;

/**
 * Reads (and writes) `replacement` instead of the process's environment, and forgets the
 * bypass made (undefined: the process's again). For in-process tests: the environment is the
 * whole process's, and `deno test --parallel` runs every test file in it: a proxy set there
 * reached the HTTP clients and child processes other test files made meanwhile.
 */
export function useProxyEnvironment(replacement: ProxyEnvironment | undefined): void {
  environment = replacement ?? processEnvironment;
  bypassed = false;
}

/** Adds loopback to NO_PROXY when a proxy variable is set (once per process). */
export function bypassProxyForLoopback(): void {
  if (bypassed) return;
  bypassed = true;
  if (!PROXY_VARIABLES.some(({ names }) => names.some((name) => env(name)))) return;
  const entries = noProxyList();
  const missing = LOOPBACK_NO_PROXY.filter((entry) => !entries.includes(entry));
  if (missing.length > 0) environment.set("NO_PROXY", [...entries, ...missing].join(","));
}

/** The proxy fetch uses for `url` (credentials left out) and the variable naming it. */
export interface UsedProxy {
  proxy: string;
  variable: string;
}

/** The proxy a request to `url` goes through, by the rules of Deno's fetch; undefined: direct. */
export function proxyFor(url: string): UsedProxy | undefined {
  let target: URL;
  try {
    target = new URL(url);
  } catch {
    return undefined;
  }
  if (noProxyMatches(target.hostname)) return undefined;
  for (const { names, scheme } of PROXY_VARIABLES) {
    if (scheme !== undefined && scheme !== target.protocol) continue;
    // Deno ignores HTTP_PROXY under CGI, where a request's "Proxy:" header would set it.
    if (scheme === "http:" && env("REQUEST_METHOD") !== undefined) continue;
    for (const variable of names) {
      const value = env(variable);
      if (value && usableProxy(value)) return { proxy: withoutCredentials(value), variable };
    }
  }
  return undefined;
}

/** ` through proxy URL (VARIABLE)` for a message about `url`, or "" when it goes direct. */
export function throughProxy(url: string): string {
  const used = proxyFor(url);
  return used ? ` through proxy ${used.proxy} (${used.variable})` : "";
}

function env(name: string): string | undefined {
  return environment.get(name);
}

/** NO_PROXY's entries; no_proxy's when NO_PROXY is unset or empty. */
function noProxyList(): string[] {
  const raw = env("NO_PROXY") || env("no_proxy") || "";
  return raw.split(",").map((entry) => entry.trim()).filter((entry) => entry !== "");
}

/** A value Deno takes as a proxy: http(s) or socks5(h), or no scheme (http). */
function usableProxy(value: string): boolean {
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(value)?.[1].toLowerCase();
  return scheme === undefined || ["http", "https", "socks5", "socks5h"].includes(scheme);
}

/**
 * `value` without what comes before its last `@`, scheme kept: URL parsers end the credentials
 * at the last `@` (a password may hold more), and one with a raw `/` in it is not split where
 * a parser would be sure to: nothing of it is said.
 */
function withoutCredentials(value: string): string {
  const at = value.lastIndexOf("@");
  if (at < 0) return value;
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(value)?.[0] ?? "";
  return scheme + value.slice(at + 1);
}

/** NO_PROXY's rules as Deno applies them: `*`, IP addresses and networks, domains and subdomains. */
function noProxyMatches(hostname: string): boolean {
  const host = hostname.replace(/^\[|\]$/g, "").toLowerCase();
  const address = parseIp(host);
  for (const entry of noProxyList()) {
    if (entry === "*") return true;
    const slash = entry.indexOf("/");
    const net = parseIp(slash < 0 ? entry : entry.slice(0, slash));
    if (net) {
      if (!address || address.bits !== net.bits) continue;
      const prefix = slash < 0 ? net.bits : Number(entry.slice(slash + 1));
      if (!Number.isInteger(prefix) || prefix < 0 || prefix > net.bits) continue;
      const shift = BigInt(net.bits - prefix);
      if (address.value >> shift === net.value >> shift) return true;
      continue;
    }
    if (address) continue;
    const domain = entry.toLowerCase();
    const bare = domain.startsWith(".") ? domain.slice(1) : domain;
    if (host === bare || host.endsWith(`.${bare}`)) return true;
  }
  return false;
}

/** An IPv4 or IPv6 address as a number of 32 or 128 bits; undefined for anything else. */
function parseIp(text: string): { value: bigint; bits: 32 | 128 } | undefined {
  const v4 = parseIpv4(text);
  if (v4 !== undefined) return { value: v4, bits: 32 };
  if (!text.includes(":") || !/^[0-9a-f:.]+$/i.test(text)) return undefined;
  const halves = text.split("::");
  if (halves.length > 2) return undefined;
  const groups = (part: string): bigint[] | undefined => {
    if (part === "") return [];
    const out: bigint[] = [];
    const pieces = part.split(":");
    for (let i = 0; i < pieces.length; i++) {
      const piece = pieces[i];
      if (i === pieces.length - 1 && piece.includes(".")) {
        const tail = parseIpv4(piece);
        if (tail === undefined) return undefined;
        out.push(tail >> 16n, tail & 0xffffn);
      } else if (/^[0-9a-f]{1,4}$/i.test(piece)) out.push(BigInt(`0x${piece}`));
      else return undefined;
    }
    return out;
  };
  const head = groups(halves[0]);
  const tail = halves.length === 2 ? groups(halves[1]) : [];
  if (!head || !tail) return undefined;
  const missing = 8 - head.length - tail.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return undefined;
  const all = [...head, ...Array<bigint>(missing).fill(0n), ...tail];
  return { value: all.reduce((sum, group) => (sum << 16n) | group, 0n), bits: 128 };
}

function parseIpv4(text: string): bigint | undefined {
  const parts = text.split(".");
  if (parts.length !== 4 || !parts.every((p) => /^(?:0|[1-9][0-9]{0,2})$/.test(p))) {
    return undefined;
  }
  const bytes = parts.map(Number);
  if (bytes.some((b) => b > 255)) return undefined;
  return bytes.reduce((sum, b) => (sum << 8n) | BigInt(b), 0n);
}
