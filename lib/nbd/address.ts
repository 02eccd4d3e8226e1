/** Where a user-space NBD server listens: parsing `--listen`, the NBD URI, opening the socket. */
import { NbdError, UsageError, UserError } from "../errors.ts";
import { probeUnixSocket } from "../../ffi/io.ts";
import { closeFd, libc, MAX_UNIX_SOCKET_PATH_BYTES, SysError } from "../../ffi/libc.ts";
import { openDirTrusted, pathOfFd } from "../../ffi/path_resolve.ts";
import { entryChangeableBy } from "../../ffi/trusted_path.ts";

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

/** A host name as it goes before `:PORT` (an IPv6 address in brackets). */
export function bracketed(hostname: string): string {
  return hostname.includes(":") ? `[${hostname}]` : hostname;
}

/** The NBD URI (as libnbd tools take it) of an export at `addr`. */
export function nbdUri(addr: ListenAddress, exportName: string): string {
  const name = encodeURIComponent(exportName);
  if (addr.transport === "unix") {
    return `nbd+unix:///${name}?socket=${encodeURIComponent(addr.path).replaceAll("%2F", "/")}`;
  }
  const host = bracketed(addr.hostname);
  return `nbd://${host}:${addr.port}/${name}`;
}

/** The listener at `addr`, and for a unix socket the file it made (see listenUnix). */
export function listenOn(addr: ListenAddress): { listener: Deno.Listener; socket?: OwnSocket } {
  if (addr.transport === "tcp") {
    try {
      return {
        listener: Deno.listen({ transport: "tcp", hostname: addr.hostname, port: addr.port }),
      };
    } catch (error) {
      throw new NbdError(`cannot listen on ${addr.hostname}:${addr.port}: ${message(error)}`);
    }
  }
  try {
    return listenUnix(addr.path);
  } catch (error) {
    if (error instanceof UserError) throw error;
    throw new NbdError(`cannot listen on ${addr.path}: ${message(error)}`);
  }
}

/**
 * A unix stream listener at `path`, the socket file mode 0600 (whoever may connect reads what
 * is served). Deno unlinks the path it bound when the listener closes, whatever file is there
 * by then (another server's, after ours was removed): so the socket is bound at a temporary name
 * beside `path`, linked to `path` (which also claims it atomically) and the temporary name
 * removed; `path` itself is removed by removeOwnSocket only while it is still ours. Its
 * directory is resolved and checked as claimSocketPath does, and nothing is done to the file
 * by its name after the link (a chmod there followed a symlink swapped in for the socket).
 */
export function listenUnix(path: string): { listener: Deno.Listener; socket: OwnSocket } {
  refuseSpecialSocketPath(path);
  const trusted = claimSocketPath(path);
  const bound = `${trusted}.${crypto.randomUUID().slice(0, 8)}.bind`;
  if (new TextEncoder().encode(bound).length <= MAX_UNIX_SOCKET_PATH_BYTES) {
    const listener = bindPrivately(bound);
    try {
      const socket = ownSocket(trusted, bound);
      Deno.linkSync(bound, trusted);
      Deno.removeSync(bound);
      return { listener, socket };
    } catch (error) {
      listener.close(); // unlinks the temporary name
      if (error instanceof Deno.errors.AlreadyExists) {
        throw new UserError(
          `${path} was taken by another server meanwhile`,
          "stop that server or choose another socket path",
        );
      }
      // No hard links here (or no room): bound in place below.
    }
  }
  // Closing this listener unlinks the path, whatever file is there by then.
  const listener = bindPrivately(trusted);
  return { listener, socket: ownSocket(trusted) };
}

/**
 * A unix listener at `path` whose socket file is created 0600 whatever the umask (no moment
 * open to others): whoever may connect reads what is served, or controls a mount's server.
 */
export function bindPrivately(path: string): Deno.Listener {
  const previous = libc().umask(0o177);
  try {
    return Deno.listen({ transport: "unix", path });
  } finally {
    libc().umask(previous);
  }
}

/**
 * Makes `path` free for a new unix socket and returns it with its directory resolved (the path
 * to bind at): a socket file nobody accepts on is left over from a killed server and is
 * removed; anything else there (a file, a directory, a live server's socket) is refused with
 * one line, never removed. The directory is resolved as openDirTrusted does (another user's
 * symlink on the way is refused: through one, a dead socket of root's elsewhere was removed)
 * and, as root, refused when a user other than root could change it: that user could swap the
 * socket for a symlink, or for a socket of their own that root's clients would then trust.
 */
export function claimSocketPath(path: string): string {
  const trusted = trustedSocketPath(path);
  let info: Deno.FileInfo;
  try {
    info = Deno.lstatSync(trusted);
  } catch {
    return trusted;
  }
  if (!info.isSocket) {
    throw new UserError(`${path} exists and is not a socket`, "choose another socket path");
  }
  const state = probeUnixSocket(trusted);
  if (state === "live") {
    throw new UserError(
      `${path} is in use by another server`,
      "stop that server or choose another socket path",
    );
  }
  if (state === "refused") {
    try {
      Deno.removeSync(trusted);
    } catch { /* gone meanwhile */ }
  }
  return trusted;
}

/** `path` with its directory made symlink-free (see claimSocketPath). */
function trustedSocketPath(path: string): string {
  const slash = path.lastIndexOf("/");
  const name = path.slice(slash + 1);
  if (name === "" || name === "." || name === "..") {
    throw new UserError(
      `${path}: not a socket file name`,
      "name the socket file, e.g. /run/erofs.sock",
    );
  }
  const given = slash < 0 ? "." : path.slice(0, slash) || "/";
  let fd: number;
  try {
    fd = openDirTrusted(given);
  } catch (error) {
    if (!(error instanceof SysError)) throw error; // another user's symlink: its own line
    throw new UserError(`cannot listen on ${path}: ${error.message}`, error.hint);
  }
  let dir: string;
  try {
    dir = pathOfFd(fd);
  } finally {
    closeFd(fd);
  }
  const changeable = Deno.uid() === 0 ? entryChangeableBy(dir) : undefined;
  if (changeable) {
    throw new UserError(
      `cannot listen on ${path}: ${changeable.dir} can be changed by ${changeable.by}, who ` +
        "could replace the socket",
      "choose a directory only root can change, e.g. /run",
    );
  }
  return `${dir === "/" ? "" : dir}/${name}`;
}

/** A unix socket file this process made, known by its identity (device and inode). */
export interface OwnSocket {
  path: string;
  dev: number;
  ino: number;
}

/**
 * The socket file just bound at `path`, remembered by identity (taken at `bound`, the name it
 * was bound at, when given) so that only it is ever removed. Bound 0600 by bindPrivately:
 * nothing is changed through its name.
 */
function ownSocket(path: string, bound = path): OwnSocket {
  const info = Deno.lstatSync(bound);
  return { path, dev: info.dev, ino: info.ino ?? 0 };
}

/**
 * Removes the socket file this process listened on (call after closing the listener), if it is
 * still that file and (with `probe`) nobody accepts on it: another server may have taken the
 * path since (the file removed and bound again; a reused inode number can even look the same),
 * and its socket stays.
 */
export function removeOwnSocket(socket: OwnSocket | undefined, probe = true): void {
  if (!socket) return;
  try {
    const info = Deno.lstatSync(socket.path);
    if (!info.isSocket || info.dev !== socket.dev || info.ino !== socket.ino) return;
  } catch {
    return; // absent
  }
  // Not at exit (probe false): a listener closed then is released only after this runs.
  if (probe) {
    try {
      if (probeUnixSocket(socket.path) === "live") return; // a server answers there: not ours
    } catch {
      return; // cannot tell: leave it
    }
  }
  try {
    Deno.removeSync(socket.path);
  } catch { /* gone meanwhile */ }
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * A socket path under /dev, /proc or /sys (/dev/shm, say) refused in one line: Deno's file
 * APIs refuse them (asking for --allow-all, which the program does not take), and the refusal
 * named a temporary name of ours.
 */
export function refuseSpecialSocketPath(path: string): void {
  const absolute = path.startsWith("/") ? path : `${Deno.cwd()}/${path}`;
  if (/^\/+(dev|proc|sys)(\/|$)/.test(absolute)) {
    throw new UserError(
      `cannot listen on ${path}: erofs-oci makes no socket under /dev, /proc or /sys`,
      "give a path outside them (e.g. under /run)",
    );
  }
}
