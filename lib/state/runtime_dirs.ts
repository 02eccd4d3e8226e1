/**
 * Runtime state of active mounts under /run/erofs-oci (created on demand, so the first mount
 * after boot works like every other). One directory per mount holds `state.json`, the server
 * log and the control socket.
 */
import {
  dirSetting,
  notRootsAlone,
  type RecordsDir,
  resolvedPath,
  rootOnlyDir,
} from "../../ffi/trusted_path.ts";
import { MAX_UNIX_SOCKET_PATH_BYTES } from "../../ffi/libc.ts";
import { hostRefusal, UserError } from "../errors.ts";
import { hexOf, plural } from "../text.ts";

export const RUNTIME_ENV = "EROFS_OCI_RUNTIME_DIR";
/** The runtime dir as set (EROFS_OCI_RUNTIME_DIR or the default), for messages. */
export const RUNTIME_SETTING = dirSetting(RUNTIME_ENV, "/run/erofs-oci");
/**
 * The runtime dir with the symlinks on its way resolved once, here, and used for everything:
 * mounts under it are unmounted without following symlinks (unmount_pinned.ts; /var/run is a
 * symlink to /run), and a symlink a user owns on the way (in /tmp) could point elsewhere after
 * the check (checkRuntimeRoot checks this path): records were read and logs kept and pruned
 * where that user chose (a helper's repro).
 */
export const RUNTIME_ROOT = resolvedPath(RUNTIME_SETTING);
export const MOUNTS_DIR = `${RUNTIME_ROOT}/mounts`;

const STATE_DIR: RecordsDir = {
  what: "state directory",
  envVar: "EROFS_OCI_STATE_DIR",
  defaultPath: "/var/lib/erofs-oci",
};

/**
 * Durable state (survives reboots of the runtime dir), made if missing: index files of tar
 * layers fetched from registries (indexCacheDir), indexes made here (indexedHereRoot), kept
 * tables and configs. Refused (UntrustedDirError) when a user other than root can change it or
 * a directory above it: a user who could write there planted an index made here whose meta
 * image was another tar's, and `mount --require-verified` served that tar's bytes.
 * `create: false` for those that only look (nothing is made; a missing one is not checked).
 */
export function stateRoot(options: { create?: boolean } = { create: true }): string {
  const root = rootOnlyDir(
    dirSetting(STATE_DIR.envVar, STATE_DIR.defaultPath),
    STATE_DIR,
    options,
  );
  if (options.create) noteRuntimeDirUsing(root);
  return root;
}

/**
 * `stateRoot()/runtime-dirs/`: one empty file per runtime dir whose mounts may name files of
 * this state dir (index copies, kept tables), named by the dir's path in hex (a runtime dir is
 * shorter than a socket path, so the name fits). Instances with runtime dirs of their own share
 * the default state dir: a prune by one must see what the others' mounts name, or an umount
 * in one removed the index copies another's mounts need for reattach.
 */
const RUNTIME_DIRS = "runtime-dirs";
const noted = new Set<string>();

function noteRuntimeDirUsing(root: string): void {
  if (noted.has(root)) return;
  noted.add(root);
  try {
    Deno.mkdirSync(`${root}/${RUNTIME_DIRS}`, { mode: 0o700, recursive: true });
    Deno.writeFileSync(
      `${root}/${RUNTIME_DIRS}/${hexOf(new TextEncoder().encode(RUNTIME_ROOT))}`,
      new Uint8Array(),
    );
  } catch { /* a state dir that cannot take it: prunes then see only their own runtime dir */ }
}

/**
 * The runtime dirs whose mounts may name files of the state dir: this one and those noted by
 * others. One that is gone (a reboot emptied /run) has no mounts left, and is forgotten.
 */
export function runtimeDirsUsingState(): string[] {
  const dirs = new Set([RUNTIME_ROOT]);
  const listed = `${stateRoot({ create: false })}/${RUNTIME_DIRS}`;
  let names: string[] = [];
  try {
    names = [...Deno.readDirSync(listed)].map((entry) => entry.name);
  } catch { /* none noted */ }
  for (const name of names.slice(0, 1024)) {
    const dir = pathOfHex(name);
    if (dir === undefined) continue;
    try {
      if (Deno.lstatSync(dir).isDirectory) {
        // Root's alone, as its own runtime dir must be: a user who made a listed dir again
        // (under /tmp) filled it with files for root to read.
        if (resolvedPath(dir) === dir && notRootsAlone(dir) === undefined) dirs.add(dir);
        continue;
      }
    } catch { /* gone */ }
    try {
      Deno.removeSync(`${listed}/${name}`);
    } catch { /* another prune took it */ }
  }
  return [...dirs];
}

function pathOfHex(name: string): string | undefined {
  if (!/^(?:[0-9a-f]{2})+$/.test(name)) return undefined;
  const bytes = Uint8Array.from(name.match(/../g)!, (pair) => parseInt(pair, 16));
  const path = new TextDecoder().decode(bytes);
  return path.startsWith("/") ? path : undefined;
}

/** `stateRoot()/index/LAYER/`: copies of the indexes in use, where reattach finds them again. */
export function indexCacheDir(options?: { create?: boolean }): string {
  return `${stateRoot(options)}/index`;
}

/**
 * Indexes `mount --index-missing` made on this host, `LAYER/` each: the only copy of them, so
 * not under indexCacheDir, whose unreferenced directories are pruned.
 */
export function indexedHereRoot(options?: { create?: boolean }): string {
  return `${stateRoot(options)}/indexed-here`;
}

export function mountDir(id: string): string {
  return `${MOUNTS_DIR}/${id}`;
}

export function controlSocketPath(id: string): string {
  return `${mountDir(id)}/control.sock`;
}

export function logPath(id: string): string {
  return `${mountDir(id)}/server.log`;
}

/** How many logs of servers that failed to start are kept (the oldest go first). */
const KEPT_FAILED_LOGS = 10;

/**
 * Copies the log of a server that failed to start out of its mount's runtime dir, which the
 * failed mount's undo removes, so an error can point at it. Returns the copy's path, or
 * undefined when there was no log to keep.
 */
export function keepFailedServerLog(id: string): string | undefined {
  const dir = `${RUNTIME_ROOT}/failed`;
  const kept = `${dir}/${id}.server.log`;
  try {
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    Deno.copyFileSync(logPath(id), kept);
    const logs = [...Deno.readDirSync(dir)]
      .filter((entry) => entry.isFile && entry.name.endsWith(".server.log"))
      .map((entry) => ({ path: `${dir}/${entry.name}`, mtimeMs: mtimeMs(`${dir}/${entry.name}`) }))
      .sort((a, b) => b.mtimeMs - a.mtimeMs);
    for (const old of logs.slice(KEPT_FAILED_LOGS)) Deno.removeSync(old.path);
    return kept;
  } catch {
    return undefined;
  }
}

function mtimeMs(path: string): number {
  try {
    return Deno.statSync(path).mtime?.getTime() ?? 0;
  } catch {
    return 0;
  }
}

const RUNTIME_DIR: RecordsDir = {
  what: "runtime directory",
  envVar: "EROFS_OCI_RUNTIME_DIR",
  defaultPath: "/run/erofs-oci",
};

/**
 * Refuses (as root) a runtime dir another user can change: root reads its mount records and
 * acts on them (`umount --all` unmounts what they name), and a user who made
 * EROFS_OCI_RUNTIME_DIR first (under /tmp) planted one that had root unmount a file system of
 * its choice (a helper's repro). Not there yet is fine: it is made root's, 0700.
 */
export function checkRuntimeRoot(): void {
  rootOnlyDir(RUNTIME_ROOT, RUNTIME_DIR);
}

/** Creates the runtime dir of a new mount (0700: it holds sockets and logs). */
export function createMountDir(): string {
  const socketBytes = new TextEncoder().encode(controlSocketPath("00000000")).length;
  if (socketBytes > MAX_UNIX_SOCKET_PATH_BYTES) {
    // Found by the server's bind, after it started: "path must be shorter than SUN_LEN".
    const over = socketBytes - MAX_UNIX_SOCKET_PATH_BYTES;
    throw new UserError(
      `EROFS_OCI_RUNTIME_DIR ${RUNTIME_SETTING}${
        RUNTIME_ROOT === RUNTIME_SETTING ? "" : ` (${RUNTIME_ROOT})`
      } is too long: a mount's control socket under it ` +
        `would be ${socketBytes} bytes, ${over} more than a unix socket path may have`,
      `choose a runtime directory ${plural(over, "byte")} shorter at least (the default is ` +
        "/run/erofs-oci)",
    );
  }
  checkRuntimeRoot();
  Deno.mkdirSync(MOUNTS_DIR, { recursive: true, mode: 0o700 });
  Deno.chmodSync(RUNTIME_ROOT, 0o700);
  checkRuntimeRoot();
  const id = crypto.randomUUID().slice(0, 8);
  Deno.mkdirSync(mountDir(id), { mode: 0o700 });
  return id;
}

export function removeMountDir(id: string): void {
  try {
    Deno.removeSync(mountDir(id), { recursive: true });
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
}

/**
 * Writes `text` as the file `path` of a mount's runtime dir whole or not at all (a temporary
 * name, then renamed), 0600: records there may hold credentials.
 */
export function writeRuntimeFile(path: string, text: string): void {
  try {
    Deno.writeTextFileSync(`${path}.tmp`, text, { mode: 0o600 });
    Deno.renameSync(`${path}.tmp`, path);
  } catch (error) {
    try {
      Deno.removeSync(`${path}.tmp`); // a part written to a full file system
    } catch { /* none */ }
    // In words, with the hint: "No space left on device (os error 28): writefile '…'" before.
    throw hostRefusal(error) ?? error;
  }
}
