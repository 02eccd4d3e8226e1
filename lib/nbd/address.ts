/** Where a user-space NBD server listens: parsing `--listen`, the NBD URI, opening the socket. */
import { NbdError, UsageError } from "../errors.ts";

export type ListenAddress =
  | { transport: "unix"; path: string }
  | { transport: "tcp"; hostname: string; port: number };

/** `unix:PATH` or `tcp:HOST:PORT` (`tcp:[::1]:10809` for IPv6). */
export function parseListenAddress(spec: string): ListenAddress {
  const usage = "use unix:PATH or tcp:HOST:PORT, e.g. --listen unix:/run/erofs.sock";
  if (spec.startsWith("unix:")) {
    const path = spec.slice(5);
    if (!path) throw new UsageError(`--listen ${spec}: empty socket path`, usage);
    return { transport: "unix", path };
  }
  if (spec.startsWith("tcp:")) {
    const rest = spec.slice(4);
    const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(rest);
    const port = match ? Number(match[3]) : NaN;
    if (!match || port > 65535) {
      throw new UsageError(`--listen ${spec}: expected tcp:HOST:PORT`, usage);
    }
    return { transport: "tcp", hostname: match[1] ?? match[2], port };
  }
  throw new UsageError(`--listen ${spec}: unknown address kind`, usage);
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

export async function listenOn(addr: ListenAddress): Promise<Deno.Listener> {
  if (addr.transport === "tcp") {
    try {
      return Deno.listen({ transport: "tcp", hostname: addr.hostname, port: addr.port });
    } catch (error) {
      throw new NbdError(`cannot listen on ${addr.hostname}:${addr.port}: ${message(error)}`);
    }
  }
  await removeStaleSocket(addr.path);
  try {
    return Deno.listen({ transport: "unix", path: addr.path });
  } catch (error) {
    throw new NbdError(`cannot listen on ${addr.path}: ${message(error)}`);
  }
}

/** A socket file nobody accepts on is left over from a killed server: replace it. */
async function removeStaleSocket(path: string): Promise<void> {
  let info: Deno.FileInfo;
  try {
    info = Deno.lstatSync(path);
  } catch {
    return;
  }
  if (!info.isSocket) {
    throw new NbdError(`${path} exists and is not a socket`, "choose another --listen path");
  }
  try {
    const probe = await Deno.connect({ transport: "unix", path });
    probe.close();
  } catch {
    Deno.removeSync(path);
    return;
  }
  throw new NbdError(`${path} is in use by another server`, "stop it or choose another path");
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
