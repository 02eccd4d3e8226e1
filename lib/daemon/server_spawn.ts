/**
 * Starting the mount server process: a re-exec of this program that waits for its spec on
 * stdin (server_process.ts hands it over). Small on purpose: `mount` spawns the server before
 * its own modules load (lib/cli/mount_ahead.ts), and every module imported here delays that.
 */
import { selfCommand } from "./self_exec.ts";
import { SERVER_COMMAND } from "../state/server_liveness.ts";
import { RUNTIME_ENV, RUNTIME_ROOT } from "../state/runtime_dirs.ts";
import { mark } from "../timing.ts";
import { closeInheritedOnExec } from "../../ffi/process.ts";
import { type SpawnedProcess, spawnProcess } from "../../ffi/spawn.ts";

/**
 * The server's V8 flags, ahead of any the caller put in DENO_V8_FLAGS (V8 takes the last of a
 * flag given twice, so a caller can still turn one off).
 *
 * `--jitless`: V8 generates no machine code at run time and maps no executable memory. The
 * mount server runs as root for as long as its mount lives and parses what registries and
 * images send; with the JIT on it holds ~500 MB of writable-and-executable mappings and runs
 * V8's optimizing compilers, where most V8 exploits land. Its hot paths are native (Web
 * Crypto's hashing, zlib, copies, the reader threads' pread/write): host benchmark, 2 runs
 * each, cold find / python / full read within each other's spread, mount 0.23-0.24 ->
 * 0.26-0.28 s, peak RSS 89 -> 77-78 MB; in the QEMU TCG guest (emulated CPU) the NBD mount
 * 5.2-5.4 -> 4.4-4.8 s, full read 2.0-2.7x -> 1.8-2.4x, RSS 79-81 -> 65-67 MB. What it costs:
 * a FUSE READ the main thread answers (--no-disk-cache, bytes not fetched yet; the reader
 * thread answers disk-cached, pinned and local-file bytes itself) takes ~40 us more CPU, most
 * of it Deno's worker message delivery, interpreted: `ls -lR` of 200,000 files 1.3x the time,
 * 1.45x server CPU, before local files got direct reads. The CLI of `mount` (and of every
 * command but those in scripts/jit-commands) runs --jitless too, so the server reads the V8 code
 * cache the CLI wrote (V8 refuses one made under other flags: each process compiled the bundle
 * again). `serve` keeps the JIT (without it its per-request JavaScript ran 28 % slower: 450 ->
 * 322 MB/s), as does the builder (a build from a tar took 2.8x as long).
 *
 * `--max-semi-space-size=1`: V8's young generation at 1 MiB per semispace instead of growing
 * to 16 (the server's garbage is short-lived request buffers). Host benchmark, cold read of the
 * 136 MB image, with glibc's mmap threshold fixed at 128 KiB: server peak RSS 181-198 -> 157
 * MB, RSS after it 181 -> 117 MB.
 */
export const SERVER_V8_FLAGS = ["--jitless", "--max-semi-space-size=1"] as const;

function serverV8Env(): Record<string, string> {
  const callers = Deno.env.get("DENO_V8_FLAGS");
  return { DENO_V8_FLAGS: [...SERVER_V8_FLAGS, ...(callers ? [callers] : [])].join(",") };
}

/**
 * glibc's mmap threshold for the server, fixed (not glibc's dynamic one, which rises up to 32
 * MiB and then keeps freed buffers in the arenas) but above the fetch path's read buffers
 * (Deno's HTTP client reads a body into blocks of up to ~400-500 KiB, a new block whenever the
 * previous one is still handed on), and the heap's top kept up to 2 MiB: at the launchers'
 * 128 KiB (set for the CLI, inherited) every such block was a fresh mmap, page-faulted in
 * (zeroed) while the socket was read into it and unmapped after it: ~7,000 minor faults per
 * cold fetch of the 136 MB image, ~1,200-1,700 at 512 KiB (fill micro-benchmark: system CPU
 * 120-132 -> 77 ms median per 136 MB, 5 runs each). Set whatever the caller's values, which
 * are the launchers' for the CLI.
 */
const SERVER_MALLOC_ENV: Record<string, string> = {
  MALLOC_MMAP_THRESHOLD_: String(512 << 10),
  MALLOC_TRIM_THRESHOLD_: String(2 << 20),
};

/**
 * The backend a server is spawned for: it boots that backend's reader thread while its spec is
 * still coming (lib/fuse/connection.ts, lib/nbd/direct_conns.ts).
 */
export const PRESTART_READER_ENV = "EROFS_OCI_PRESTART_READER";

/**
 * Set for a server that leaves the CLI's session itself (setsid(2) first thing, see
 * lib/daemon/mount_server.ts), whoever spawned it. (Deno.Command's `detached: true`, used once,
 * did it in a pre-exec step, which made Rust fork the whole CLI instead of posix_spawn: 20-30 ms
 * per spawn on the host with a 100 MB heap, and most of the 0.6-1.6 s between `cli: main` and
 * `cli: server spawned ahead` in the QEMU TCG guest.)
 */
export const NEW_SESSION_ENV = "EROFS_OCI_SERVER_NEW_SESSION";

/**
 * The pid of the command that spawned the server (`mount`, `reattach`), for the server to watch
 * until the mount is recorded (lib/daemon/adoption.ts). Passed, not read as the server's parent
 * pid: a `mount` killed before the server's runtime started had already left it to init, so
 * the server took init for its `mount` and never saw it go (mounts left unrecorded).
 */
export const SPAWNED_BY_ENV = "EROFS_OCI_SPAWNED_BY";

/** A server process spawned for one kind of mount, its spec not sent yet. */
export interface ServerChild {
  child: SpawnedProcess;
  foreground: boolean;
  backend?: "nbd" | "fuse";
}

/**
 * Spawns the server process; it does nothing until its spec arrives on stdin. Through
 * posix_spawn on a pool thread (ffi/spawn.ts), not Deno.Command: that one's first use loads
 * Deno's process module, ~12 ms of the CLI's way to its server on the host.
 */
export async function spawnServerChild(
  foreground: boolean,
  backend?: "nbd" | "fuse",
): Promise<ServerChild> {
  // The server (and a FUSE mount's keeper after it) outlives this command: it must not hold
  // what our caller gave us, e.g. the lock of `flock LOCK erofs-oci mount …`.
  closeInheritedOnExec();
  const [program, ...args] = selfCommand([SERVER_COMMAND]);
  mark("cli: server spawn asked");
  const child = await spawnProcess(program, args, {
    ...Deno.env.toObject(),
    // The runtime dir this command resolved and checked: a symlink on the way to it may point
    // elsewhere by now.
    ...(Deno.env.get(RUNTIME_ENV) ? { [RUNTIME_ENV]: RUNTIME_ROOT } : {}),
    ...serverV8Env(),
    ...SERVER_MALLOC_ENV,
    [SPAWNED_BY_ENV]: String(Deno.pid),
    ...(backend ? { [PRESTART_READER_ENV]: backend } : {}),
    ...(foreground ? {} : { [NEW_SESSION_ENV]: "1" }),
  }, {
    stdin: "pipe",
    stdout: "pipe",
    stderr: foreground ? "inherit" : "null",
    // Not a new session here: the server leaves ours itself (NEW_SESSION_ENV) unless foreground.
  });
  return { child, foreground, backend };
}

/** A server spawned ahead: what it was spawned for, known before its spawn settles. */
export interface ServerAhead {
  spawned: Promise<ServerChild>;
  foreground: boolean;
  backend?: "nbd" | "fuse";
}

let spawnedAhead: ServerAhead | undefined;

/**
 * Spawns the server of a `mount` whose own modules are still loading (lib/cli/main.ts), so
 * the second Deno's start-up begins earlier; `mount` takes it with takeServerSpawnedAhead
 * (server_process.ts). Its EROFS_OCI_* settings come with the spec, as for any early spawn.
 */
export function spawnServerAhead(foreground: boolean, backend?: "nbd" | "fuse"): void {
  if (spawnedAhead) return;
  const spawned = spawnServerChild(foreground, backend);
  spawned.catch(() => {}); // taken and awaited (or discarded) by `mount`
  spawnedAhead = { spawned, foreground, backend };
  // The exec runs now on a pool thread; the promise settles when this thread is next free.
  mark("cli: server spawned ahead");
}

/** The server spawned ahead, if any; the caller takes it over (use it or discard it). */
export function takeSpawnedAhead(): ServerAhead | undefined {
  const ahead = spawnedAhead;
  spawnedAhead = undefined;
  return ahead;
}
