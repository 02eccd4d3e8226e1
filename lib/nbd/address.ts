/** Where a user-space NBD server listens: parsing `--listen`, the NBD URI, opening the socket. */
import { NbdError, UsageError, UserError } from "../errors.ts";
import { closeFd } from "../../ffi/libc.ts";
import { connectUnix } from "../../ffi/io.ts";

export type ListenAddress =
  | { transport: "unix"; path: string }
  | { transport: "tcp"; hostname: string; port: number };

/**
 * `unix:PATH` or `tcp:HOST:PORT` (`tcp:[::1]:10809` for IPv6), given to `option` (named in the
 * usage errors).
 */
export function parseListenAddress(spec: string, option = "--listen"): ListenAddress {
  const usage = `use unix:PATH or tcp:HOST:PORT, e.g. ${option} unix:/run/erofs.sock`;
  if (spec.startsWith("unix:")) {
    const path = spec.slice(5);
    if (!path) throw new UsageError(`${option} ${spec}: empty socket path`, usage);
    return { transport: "unix", path };
  }
  if (spec.startsWith("tcp:")) {
    const rest = spec.slice(4);
    const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(rest);
    const port = match ? Number(match[3]) : NaN;
    if (!match || port > 65535) {
      throw new UsageError(`${option} ${spec}: expected tcp:HOST:PORT`, usage);
    }
    return { transport: "tcp", hostname: match[1] ?? match[2], port };
  }
  throw new UsageError(`${option} ${spec}: unknown address kind`, usage);
}

/** The NBD URI (as libnbd tools take it) of an export at `addr`. */
export function nbdUri(addr: ListenAddress, exportName: string): string {
  const name = encodeURIComponent(exportName);
  if (addr.transport === "unix") {
    return `nbd+unix:///${name}?socket=${encodeURIComponent(addr.path).replaceAll("%2F", "/")}`;
  }
  const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
  return `nbd://${host}:${addr.port}/${name}`;
}

export function listenOn(addr: ListenAddress): Deno.Listener {
  if (addr.transport === "tcp") {
    try {
      return Deno.listen({ transport: "tcp", hostname: addr.hostname, port: addr.port });
    } catch (error) {
      throw new NbdError(`cannot listen on ${addr.hostname}:${addr.port}: ${message(error)}`);
    }
  }
  claimSocketPath(addr.path);
  try {
    return Deno.listen({ transport: "unix", path: addr.path });
  } catch (error) {
    throw new NbdError(`cannot listen on ${addr.path}: ${message(error)}`);
  }
}

/**
 * Makes `path` free for a new unix socket: a socket file nobody accepts on is left over from a
 * killed server and is removed; anything else there (a file, a directory, a live server's
 * socket) is refused with one line, never removed.
 */
export function claimSocketPath(path: string): void {
  let info: Deno.FileInfo;
  try {
    info = Deno.lstatSync(path);
  } catch {
    return;
  }
  if (!info.isSocket) {
    throw new UserError(`${path} exists and is not a socket`, "choose another socket path");
  }
  let probe: number;
  try {
    probe = connectUnix(path);
  } catch {
    Deno.removeSync(path);
    return;
  }
  closeFd(probe);
  throw new UserError(
    `${path} is in use by another server`,
    "stop that server or choose another socket path",
  );
}

/** Removes the socket file this process listened on (only a socket: never another file). */
export function removeOwnSocket(path: string): void {
  try {
    if (Deno.lstatSync(path).isSocket) Deno.removeSync(path);
  } catch { /* absent */ }
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
