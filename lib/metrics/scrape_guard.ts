/**
 * What a metrics endpoint does before and around rendering: a render shared by the scrapes of
 * a second (each render asks every mount's server for its stats and walks the disk cache: 164
 * scrapes a second from one user cost the metrics process 60% of a core and each mount's
 * server 3.5%), and the Host header of a TCP scrape checked against names a browser cannot be
 * tricked into using (DNS rebinding: a page whose name came to point at 127.0.0.1 read the
 * mounts' paths and images).
 */

/** How long a rendered text answers scrapes: Prometheus scrapes every 15 s or more. */
export const RENDER_REUSE_MS = 1000;

/**
 * `render`, called at most once per `reuseMs`: scrapes meanwhile get the text it gave, and
 * scrapes while it runs wait for that same render. A render that failed is not reused.
 */
export function sharedRender(
  render: () => Promise<string>,
  reuseMs = RENDER_REUSE_MS,
): () => Promise<string> {
  let last: { text: Promise<string>; doneMs?: number } | undefined;
  return () => {
    const now = performance.now();
    if (last && (last.doneMs === undefined || now - last.doneMs < reuseMs)) return last.text;
    const current: { text: Promise<string>; doneMs?: number } = { text: render() };
    last = current;
    current.text.then(
      () => current.doneMs = performance.now(),
      () => {
        if (last === current) last = undefined;
      },
    );
    return current.text;
  };
}

/**
 * Whether a scrape naming `host` (its Host header, the port included, or undefined without one)
 * may be answered by an endpoint listening on `listenHostname`: an IP address, localhost, the
 * listen address's own name, or one of this machine's names (machineNames). Any other name is
 * one a browser was sent to by a page, resolving to this host only through DNS rebinding.
 */
export function hostAllowed(
  host: string | undefined,
  listenHostname: string,
  machine: ReadonlySet<string> = machineNames(),
): boolean {
  if (host === undefined) return true; // HTTP/1.0: no browser sends a request without one
  const name = host.trim().replace(/:\d*$/, "").replace(/\.$/, "").toLowerCase();
  if (name.startsWith("[") && name.endsWith("]")) return true; // an IPv6 literal
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(name)) return true;
  if (name === "localhost" || name.endsWith(".localhost")) return true;
  if (name === listenHostname.toLowerCase()) return true;
  return machine.has(name);
}

/** Largest /etc/hosts or /etc/resolv.conf read for machineNames. */
const MAX_NAME_FILE_BYTES = 1 << 20;

let names: Set<string> | undefined;

/** machineNamesFrom this machine's hostname, /etc/hosts and /etc/resolv.conf (read once). */
function machineNames(): Set<string> {
  const text = (path: string) => {
    try {
      const bytes = Deno.readFileSync(path);
      return bytes.length <= MAX_NAME_FILE_BYTES ? new TextDecoder().decode(bytes) : "";
    } catch {
      return "";
    }
  };
  return names ??= machineNamesFrom(Deno.hostname(), text("/etc/hosts"), text("/etc/resolv.conf"));
}

/**
 * The names this machine goes by, exactly: its hostname and that name's first label, every name
 * on an /etc/hosts line that lists one of those (`127.0.1.1 vm.corp.lan vm`), and the first label
 * under each `domain` and `search` suffix of resolv.conf (what `vm` expands to). Not any name
 * that merely starts with the hostname: `vm.attacker.example` is anyone's to point at 127.0.0.1.
 */
export function machineNamesFrom(
  hostname: string,
  hostsText: string,
  resolvText: string,
): Set<string> {
  const full = hostname.trim().replace(/\.$/, "").toLowerCase();
  const label = full.split(".")[0];
  const names = new Set([full, label].filter(Boolean));
  const words = (line: string) => line.replace(/#.*/, "").trim().split(/\s+/).filter(Boolean);
  for (const line of hostsText.split("\n")) {
    const aliases = words(line).slice(1).map((name) => name.replace(/\.$/, "").toLowerCase());
    if (aliases.some((name) => name === full || name === label)) {
      for (const name of aliases) names.add(name);
    }
  }
  for (const line of resolvText.split("\n")) {
    const [key, ...suffixes] = words(line);
    if (key !== "domain" && key !== "search") continue;
    for (const suffix of suffixes) {
      const domain = suffix.replace(/^\.|\.$/g, "").toLowerCase();
      if (label && domain) names.add(`${label}.${domain}`);
    }
  }
  return names;
}
