/**
 * A scrape endpoint: HTTP on a unix socket or TCP address answering `GET /metrics` with the
 * text `produce` returns. One request at a time is plenty for a scraper; a slow producer is
 * bounded by the control socket timeouts it uses.
 */
import type { ListenAddress } from "../nbd/address.ts";
import { PROMETHEUS_CONTENT_TYPE } from "./prometheus.ts";
import { UserError } from "../errors.ts";

export interface MetricsEndpoint {
  /** `unix:PATH` or `tcp:HOST:PORT` actually bound (port 0 resolved). */
  address: string;
  finished: Promise<void>;
  shutdown(): Promise<void>;
}

export function serveMetrics(
  addr: ListenAddress,
  produce: () => Promise<string>,
): MetricsEndpoint {
  const handler = async (request: Request): Promise<Response> => {
    const { pathname } = new URL(request.url);
    if (request.method !== "GET" && request.method !== "HEAD") {
      return new Response("method not allowed\n", { status: 405 });
    }
    if (pathname !== "/metrics" && pathname !== "/") {
      return new Response("not found: try /metrics\n", { status: 404 });
    }
    return new Response(await produce(), { headers: { "content-type": PROMETHEUS_CONTENT_TYPE } });
  };
  const onError = () => new Response("internal error\n", { status: 500 });
  // An address in use or not ours is the user's to change: one line, not an internal error.
  const listening = <T>(where: string, serve: () => T): T => {
    try {
      return serve();
    } catch (error) {
      throw new UserError(
        `cannot listen on ${where}: ${(error as Error).message}`,
        "choose another address (e.g. tcp:127.0.0.1:0 picks a free port)",
      );
    }
  };
  if (addr.transport === "unix") {
    const server = listening(
      addr.path,
      () => Deno.serve({ path: addr.path, onListen() {}, onError }, handler),
    );
    return {
      address: `unix:${addr.path}`,
      finished: server.finished,
      shutdown: () => server.shutdown(),
    };
  }
  const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
  const server = listening(
    `${host}:${addr.port}`,
    () => Deno.serve({ hostname: addr.hostname, port: addr.port, onListen() {}, onError }, handler),
  );
  return {
    address: `tcp:${host}:${server.addr.port}`,
    finished: server.finished,
    shutdown: () => server.shutdown(),
  };
}
