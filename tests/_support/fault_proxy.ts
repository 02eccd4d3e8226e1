/**
 * An HTTP proxy on loopback in front of a test registry that injects faults into chosen
 * requests (server errors, connection resets mid-body, ignored ranges, redirects to another
 * host, delays, corrupted bytes) and records every request it sees. A rule applies to its first
 * `times` matching requests, then requests pass through unchanged.
 */

export interface ProxiedRequestInfo {
  method: string;
  /** Path and query, e.g. `/v2/app/blobs/sha256:…`. */
  path: string;
  headers: Headers;
}

export type Fault =
  /** Answer with this status (JSON error body) without asking the registry. */
  | { kind: "status"; status: number; retryAfter?: string }
  /** Send the headers and `afterBytes` body bytes, wait `stallMs` (50), abort the connection. */
  | { kind: "reset"; afterBytes: number; stallMs?: number }
  /** Drop the Range header upstream, so the client gets 200 with the whole body. */
  | { kind: "ignore-range" }
  /** 307 to a second loopback server (another host) that serves the same bytes. */
  | { kind: "redirect" }
  /** 307 to the same path with `r=1` added to its query: a redirect that stays on this host. */
  | { kind: "redirect-here" }
  /** Answer `status` with this Location header as it is (malformed, file:, …), no registry. */
  | { kind: "location"; status: number; location: string }
  /** Wait this long before forwarding. */
  | { kind: "delay"; ms: number }
  /** Forward, then never answer: the registry did the request, the client hears nothing. */
  | { kind: "lose-reply" }
  /** Forward with this Accept header (a registry that answers whatever the tag holds). */
  | { kind: "accept"; value: string }
  /**
   * Forward, but flip one byte of the body: byte 100, or the byte at `blobOffset` of the
   * blob when the reply (its Content-Range) covers it.
   */
  | { kind: "corrupt"; blobOffset?: number }
  /**
   * Forward, but send the body slowly: `bytes` every `everyMs` (a peer that passes the stall
   * rule yet takes far longer than a deadline), after padding it with spaces to `padTo` bytes
   * (JSON stays valid: a manifest fetched by tag is still accepted).
   */
  | { kind: "drip"; bytes: number; everyMs: number; padTo?: number }
  /** Forward, adding `Content-Encoding: gzip` to the reply (its body as it is: not gzip). */
  | { kind: "say-gzip" }
  /** Forward a 206 as a multipart/byteranges body of its one part (no Content-Range header). */
  | { kind: "multipart" }
  /** Drop the Range header upstream, then send the first half of the 200 (Content-Length too). */
  | { kind: "half-200" };

export interface FaultRule {
  /** Label used in records. */
  name?: string;
  match: (request: ProxiedRequestInfo) => boolean;
  fault: Fault;
  /** How many matching requests get the fault (default: all). */
  times?: number;
}

export interface ProxyRecord {
  timeMs: number;
  method: string;
  path: string;
  range: string | null;
  hasAuthorization: boolean;
  /** Status sent to the client. */
  status: number;
  /** Name (or fault kind) of the rule applied, if any. */
  fault?: string;
  /**
   * Body bytes handed to the connection so far (replies passed through without a fault): what
   * the client was sent, short of the socket buffers when it stopped reading.
   */
  bytesSent: number;
}

export interface RedirectRecord {
  timeMs: number;
  path: string;
  range: string | null;
  hasAuthorization: boolean;
  status: number;
}

export interface FaultProxy {
  /** `127.0.0.1:PORT`: use it as the registry in image references. */
  host: string;
  /** Host of the redirect target (`127.0.0.2:PORT` when that address works). */
  redirectHost: string;
  readonly requests: readonly ProxyRecord[];
  /** Requests that reached the redirect target. */
  readonly redirected: readonly RedirectRecord[];
  /** How often rule `index` has fired. */
  hits(index: number): number;
  /** The GETs of the blob `digest` recorded so far. */
  blobGets(digest: string): ProxyRecord[];
  stop(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

const BLOB_PATH = /^\/v2\/.+\/blobs\/sha256:[0-9a-f]{64}$/;
const MANIFEST_PATH = /^\/v2\/.+\/manifests\/[^/]+$/;
const HOP_BY_HOP = ["connection", "keep-alive", "transfer-encoding", "upgrade", "host"];

export function isBlobGet(request: ProxiedRequestInfo): boolean {
  return request.method === "GET" && BLOB_PATH.test(request.path.split("?")[0]);
}

/** A GET of the blob `digest` (e.g. one layer, not the image config). */
export function isBlobGetOf(digest: string): (request: ProxiedRequestInfo) => boolean {
  return (request) => isBlobGet(request) && request.path.split("?")[0].endsWith(`/blobs/${digest}`);
}

export function isManifestGet(request: ProxiedRequestInfo): boolean {
  return request.method === "GET" && MANIFEST_PATH.test(request.path.split("?")[0]);
}

export function startFaultProxy(
  upstreamHost: string,
  plan: FaultRule[],
  /** Where it listens (default 127.0.0.1; "::1" for a registry named `[::1]:PORT`). */
  options: { hostname?: string } = {},
): Promise<FaultProxy> {
  const hostname = options.hostname ?? "127.0.0.1";
  const hostPart = hostname.includes(":") ? `[${hostname}]` : hostname;
  const requests: ProxyRecord[] = [];
  const redirected: RedirectRecord[] = [];
  const hitCounts = plan.map(() => 0);
  const redirectBodies = new Map<string, Uint8Array<ArrayBuffer>>();
  const target = startRedirectTarget(redirectBodies, redirected);
  const redirectHost = `${target.hostname}:${target.server.addr.port}`;
  const aborts = new AbortController();

  const server = Deno.serve(
    { hostname, port: 0, onListen: () => {}, onError: () => new Response(null) },
    async (request) => {
      const url = new URL(request.url);
      const info: ProxiedRequestInfo = {
        method: request.method,
        path: url.pathname + url.search,
        headers: request.headers,
      };
      const record: ProxyRecord = {
        timeMs: Date.now(),
        method: request.method,
        path: info.path,
        range: request.headers.get("range"),
        hasAuthorization: request.headers.has("authorization"),
        status: 0,
        bytesSent: 0,
      };
      requests.push(record);
      const index = plan.findIndex((rule, i) =>
        hitCounts[i] < (rule.times ?? Infinity) && rule.match(info)
      );
      const rule = index >= 0 ? plan[index] : undefined;
      if (rule) {
        hitCounts[index]++;
        record.fault = rule.name ?? rule.fault.kind;
      }
      const fault = rule?.fault;
      const proxyHost = `${hostPart}:${server.addr.port}`;
      const response = await answer(fault, request, info, proxyHost, record);
      record.status = response.status;
      return response;
    },
  );

  async function answer(
    fault: Fault | undefined,
    request: Request,
    info: ProxiedRequestInfo,
    proxyHost: string,
    record: ProxyRecord,
  ): Promise<Response> {
    if (fault?.kind === "status") {
      await request.body?.cancel();
      return Response.json(
        { errors: [{ code: "UNKNOWN", message: `injected HTTP ${fault.status}` }] },
        {
          status: fault.status,
          headers: fault.retryAfter === undefined ? {} : { "retry-after": fault.retryAfter },
        },
      );
    }
    if (fault?.kind === "location") {
      await request.body?.cancel();
      return new Response(null, { status: fault.status, headers: { location: fault.location } });
    }
    if (fault?.kind === "redirect-here") {
      await request.body?.cancel();
      const location = info.path + (info.path.includes("?") ? "&" : "?") + "r=1";
      return new Response(null, { status: 307, headers: { location } });
    }
    if (fault?.kind === "delay") await sleep(fault.ms, aborts.signal);
    const headers = new Headers(request.headers);
    for (const name of HOP_BY_HOP) headers.delete(name);
    if (
      fault?.kind === "ignore-range" || fault?.kind === "redirect" || fault?.kind === "half-200"
    ) {
      headers.delete("range");
    }
    if (fault?.kind === "accept") headers.set("accept", fault.value);
    const hasBody = request.method !== "GET" && request.method !== "HEAD";
    const upstream = await fetch(`http://${upstreamHost}${info.path}`, {
      method: request.method,
      headers,
      // Buffered so the registry sees a Content-Length, as from a real client.
      body: hasBody ? await request.arrayBuffer() : undefined,
      redirect: "manual",
      signal: aborts.signal,
    });
    if (fault?.kind === "lose-reply") {
      await upstream.body?.cancel();
      await sleep(10 * 60_000, aborts.signal);
    }
    const responseHeaders = new Headers(upstream.headers);
    for (const name of HOP_BY_HOP) responseHeaders.delete(name);
    const location = responseHeaders.get("location");
    if (location?.startsWith(`http://${upstreamHost}/`)) {
      responseHeaders.set(
        "location",
        `http://${proxyHost}${location.slice(7 + upstreamHost.length)}`,
      );
    }
    if (request.method === "HEAD" || upstream.body === null) {
      await upstream.body?.cancel();
      return new Response(null, { status: upstream.status, headers: responseHeaders });
    }
    const body = new Uint8Array(await upstream.arrayBuffer());
    if (fault?.kind === "redirect" && upstream.status === 200) {
      const id = crypto.randomUUID();
      redirectBodies.set(id, body);
      return new Response(null, {
        status: 307,
        headers: { location: `http://${redirectHost}/objects/${id}?signature=test` },
      });
    }
    if (fault?.kind === "corrupt" && body.length > 0) {
      const start = Number(
        /^bytes (\d+)-/.exec(upstream.headers.get("content-range") ?? "")?.[1] ?? 0,
      );
      const multipart = /^multipart\/byteranges/i.test(upstream.headers.get("content-type") ?? "");
      const at = fault.blobOffset === undefined
        ? Math.min(body.length - 1, 100)
        : multipart
        ? bodyIndexInParts(body, fault.blobOffset)
        : fault.blobOffset - start;
      if (at >= 0 && at < body.length) body[at] ^= 0xff;
    }
    if (fault?.kind === "reset") {
      // Keep Content-Length: the client must see a body cut short, not a shorter body.
      responseHeaders.set("content-length", String(body.length));
      const partial = body.subarray(0, Math.min(fault.afterBytes, body.length));
      let sent = false;
      const stream = new ReadableStream<Uint8Array>({
        async pull(controller) {
          if (!sent) {
            sent = true;
            controller.enqueue(partial);
            return;
          }
          // A short pause by default lets the partial body reach the client before the abort.
          await sleep(fault.stallMs ?? 50, aborts.signal).catch(() => {});
          controller.error(new InjectedReset());
        },
      });
      return new Response(stream, { status: upstream.status, headers: responseHeaders });
    }
    if (fault?.kind === "drip") {
      const padded = new Uint8Array(Math.max(body.length, fault.padTo ?? 0)).fill(0x20);
      padded.set(body);
      responseHeaders.set("content-length", String(padded.length));
      let at = 0;
      const stream = new ReadableStream<Uint8Array>({
        async pull(controller) {
          if (at > 0) {
            try {
              await sleep(fault.everyMs, aborts.signal);
            } catch (error) {
              return controller.error(error);
            }
          }
          controller.enqueue(padded.slice(at, at + fault.bytes));
          at += fault.bytes;
          if (at >= padded.length) controller.close();
        },
      });
      return new Response(stream, { status: upstream.status, headers: responseHeaders });
    }
    if (fault?.kind === "say-gzip") responseHeaders.set("content-encoding", "gzip");
    if (fault?.kind === "half-200" && upstream.status === 200) {
      const half = body.slice(0, Math.floor(body.length / 2));
      responseHeaders.set("content-length", String(half.length));
      return new Response(half, { status: 200, headers: responseHeaders });
    }
    if (fault?.kind === "multipart" && upstream.status === 206) {
      const range = responseHeaders.get("content-range") ?? "";
      responseHeaders.delete("content-range");
      responseHeaders.set("content-type", "multipart/byteranges; boundary=PART");
      const head = new TextEncoder().encode(
        `--PART\r\nContent-Type: application/octet-stream\r\nContent-Range: ${range}\r\n\r\n`,
      );
      const tail = new TextEncoder().encode("\r\n--PART--\r\n");
      const parts = new Uint8Array(head.length + body.length + tail.length);
      parts.set(head);
      parts.set(body, head.length);
      parts.set(tail, head.length + body.length);
      responseHeaders.set("content-length", String(parts.length));
      return new Response(parts, { status: 206, headers: responseHeaders });
    }
    responseHeaders.set("content-length", String(body.length));
    return new Response(countedBody(body, record), {
      status: upstream.status,
      headers: responseHeaders,
    });
  }

  const stop = async () => {
    aborts.abort();
    await Promise.all([server.shutdown(), target.server.shutdown()]);
  };
  return Promise.resolve({
    host: `${hostPart}:${server.addr.port}`,
    redirectHost,
    requests,
    redirected,
    hits: (index) => hitCounts[index],
    blobGets: (digest) =>
      requests.filter((r) => r.method === "GET" && r.path.endsWith(`/blobs/${digest}`)),
    stop,
    [Symbol.asyncDispose]: stop,
  });
}

/** Piece by piece as the connection takes them (nothing read ahead), counted in `record`. */
function countedBody(
  body: Uint8Array<ArrayBuffer>,
  record: ProxyRecord,
): ReadableStream<Uint8Array> {
  let at = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (at >= body.length) return controller.close();
      const piece = body.slice(at, at + 64 * 1024);
      at += piece.length;
      record.bytesSent += piece.length;
      controller.enqueue(piece);
      if (at >= body.length) controller.close();
    },
  }, { highWaterMark: 0 });
}

/** The error used to abort a response body (also what Deno logs for it). */
class InjectedReset extends Error {
  constructor() {
    super("fault proxy: injected connection reset");
  }
}

/**
 * The "object storage" a blob redirect points to. Another loopback address than the registry
 * (127.0.0.2) so it is another host; like S3 it refuses requests that carry Authorization.
 */
function startRedirectTarget(
  bodies: Map<string, Uint8Array<ArrayBuffer>>,
  records: RedirectRecord[],
): { server: Deno.HttpServer<Deno.NetAddr>; hostname: string } {
  const handler = (request: Request): Response => {
    const url = new URL(request.url);
    const range = request.headers.get("range");
    const record: RedirectRecord = {
      timeMs: Date.now(),
      path: url.pathname + url.search,
      range,
      hasAuthorization: request.headers.has("authorization"),
      status: 0,
    };
    records.push(record);
    const respond = (response: Response) => {
      record.status = response.status;
      return response;
    };
    if (record.hasAuthorization) {
      return respond(new Response("only one auth mechanism allowed\n", { status: 400 }));
    }
    const body = bodies.get(url.pathname.replace(/^\/objects\//, ""));
    if (!body) return respond(new Response("no such object\n", { status: 404 }));
    const match = range?.match(/^bytes=(\d+)-(\d*)$/);
    if (!match) return respond(new Response(body, { status: 200 }));
    const start = Number(match[1]);
    const end = Math.min(match[2] ? Number(match[2]) : body.length - 1, body.length - 1);
    if (start > end) {
      return respond(
        new Response(null, {
          status: 416,
          headers: { "content-range": `bytes */${body.length}` },
        }),
      );
    }
    return respond(
      new Response(body.slice(start, end + 1), {
        status: 206,
        headers: { "content-range": `bytes ${start}-${end}/${body.length}` },
      }),
    );
  };
  for (const hostname of ["127.0.0.2", "127.0.0.1"]) {
    try {
      const server = Deno.serve({ hostname, port: 0, onListen: () => {} }, handler);
      return { server, hostname };
    } catch (error) {
      if (hostname === "127.0.0.1") throw error;
    }
  }
  throw new Error("unreachable");
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * Where blob byte `blobOffset` lies in a multipart/byteranges body: in the data of the part
 * whose Content-Range covers it; -1 when none does.
 */
function bodyIndexInParts(body: Uint8Array, blobOffset: number): number {
  const text = new TextDecoder("latin1").decode(body);
  const header = /Content-Range: bytes (\d+)-(\d+)\/\d+\r\n(?:[^\r\n]*\r\n)*\r\n/gi;
  for (let match; (match = header.exec(text));) {
    const [first, last] = [Number(match[1]), Number(match[2])];
    if (blobOffset >= first && blobOffset <= last) {
      return match.index + match[0].length + blobOffset - first;
    }
  }
  return -1;
}
