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
 * listen address's own name, or this machine's name. Any other name is one a browser was sent
 * to by a page, resolving to this host only through DNS rebinding.
 */
export function hostAllowed(host: string | undefined, listenHostname: string): boolean {
  if (host === undefined) return true; // HTTP/1.0: no browser sends a request without one
  const name = host.trim().replace(/:\d*$/, "").toLowerCase();
  if (name.startsWith("[") && name.endsWith("]")) return true; // an IPv6 literal
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(name)) return true;
  if (name === "localhost" || name.endsWith(".localhost")) return true;
  if (name === listenHostname.toLowerCase()) return true;
  const machine = Deno.hostname().toLowerCase();
  return name === machine || name.startsWith(`${machine}.`);
}
