/**
 * Starting a long-lived helper program in its own session with posix_spawn(3). Deno.Command
 * with `detached: true` calls setsid in a pre-exec step, which makes Rust fork the whole
 * process instead of posix_spawn: 13-20 ms of a mount server's start-up for the FUSE keeper
 * (its heap's page tables copied), on the event loop. Here glibc's posix_spawn (a vfork-style
 * clone; POSIX_SPAWN_SETSID does the setsid) runs on a pool thread, and the descriptors handed
 * on are dup2'd in the child only: no inheritable copy ever exists in this process, where
 * another spawn could take it along.
 */
import { cstr, libc, O_RDWR, SysError } from "./libc.ts";

/**
 * glibc's posix_spawnattr_t (<spawn.h>): short __flags; pid_t __pgrp; sigset_t __sd (signals
 * set to their default); sigset_t __ss (the mask); sched fields, padding: 336 bytes. Filled
 * here, as posix_spawnattr_init/setflags/setsigmask/setsigdefault would (each libc symbol bound
 * costs ~0.5-1 ms of stub building on first use).
 */
const ATTR_BYTES = 336, ATTR_SIGDEFAULT_AT = 8;
/** glibc's posix_spawn_file_actions_t: zeroed is initialised (posix_spawn_file_actions_init). */
const ACTIONS_BYTES = 80;
const POSIX_SPAWN_SETSIGDEF = 0x04, POSIX_SPAWN_SETSIGMASK = 0x08, POSIX_SPAWN_SETSID = 0x80;
const SIGPIPE = 13;

/**
 * Runs `path` with `args` in a new session: stdin/stdout/stderr on /dev/null, descriptors
 * `inherit` of this process as descriptors `fds` of the child, numbered up from above the
 * highest of them (nothing else is inherited: a Deno process opens every descriptor
 * close-on-exec), the environment `env` (whole), no signal blocked and SIGPIPE at its default
 * (Rust ignores it in this process). Resolves once the child has exec'd. This process never
 * waits for the child.
 */
export async function spawnInNewSession(
  path: string,
  args: readonly string[],
  env: Record<string, string>,
  inherit: readonly number[] = [],
): Promise<{ pid: number; fds: number[] }> {
  const symbols = libc();
  const attr = new Uint8Array(new ArrayBuffer(ATTR_BYTES));
  new DataView(attr.buffer).setInt16(
    0,
    POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF,
    true,
  );
  attr[ATTR_SIGDEFAULT_AT + ((SIGPIPE - 1) >> 3)] |= 1 << ((SIGPIPE - 1) & 7);
  const actions = new Uint8Array(new ArrayBuffer(ACTIONS_BYTES));
  // Above every source: no dup2 overwrites a descriptor still to be copied.
  const first = Math.max(3, ...inherit.map((fd) => fd + 1));
  const fds = inherit.map((_, i) => first + i);
  try {
    const devNull = cstr("/dev/null");
    for (const fd of [0, 1, 2]) {
      check(
        symbols.posix_spawn_file_actions_addopen(actions, fd, devNull, O_RDWR, 0),
        "posix_spawn_file_actions_addopen",
      );
    }
    inherit.forEach((fd, i) =>
      check(
        symbols.posix_spawn_file_actions_adddup2(actions, fd, fds[i]),
        "posix_spawn_file_actions_adddup2",
      )
    );
    const call = new SpawnArena(path, args, env);
    check(
      await symbols.posix_spawn_nonblocking(
        call.pid,
        call.path,
        actions,
        attr,
        call.argv,
        call.envp,
      ),
      "posix_spawn",
      path,
    );
    // Read after the call: the arena (every string the call points into) lived through it.
    return { pid: call.pid[0], fds };
  } finally {
    symbols.posix_spawn_file_actions_destroy(actions);
  }
}

/** posix_spawn* return an error number instead of setting errno. */
function check(result: number, call: string, context?: string): void {
  if (result !== 0) throw new SysError(call, result, context);
}

/**
 * posix_spawn's pid, path, argv and envp in one ArrayBuffer (never moved by the garbage
 * collector): argv and envp are NULL-terminated pointer arrays into the same buffer, which
 * lives as long as any of its views.
 */
class SpawnArena {
  readonly pid: Int32Array<ArrayBuffer>;
  readonly path: Uint8Array<ArrayBuffer>;
  readonly argv: Uint8Array<ArrayBuffer>;
  readonly envp: Uint8Array<ArrayBuffer>;

  constructor(path: string, args: readonly string[], env: Record<string, string>) {
    const argv = [path, ...args].map((value) => cstr(value));
    const envp = Object.entries(env).map(([name, value]) => cstr(`${name}=${value}`));
    const arrayBytes = (strings: Uint8Array[]) =>
      7 + (strings.length + 1) * 8 + strings.reduce((sum, s) => sum + s.length, 0);
    const buffer = new ArrayBuffer(8 + arrayBytes(argv) + arrayBytes(envp));
    const base = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buffer)));
    this.pid = new Int32Array(buffer, 0, 1);
    let at = 8;
    const place = (strings: Uint8Array[]) => {
      at = Math.ceil(at / 8) * 8; // the pointer table's alignment
      const start = at;
      const table = new BigUint64Array(buffer, at, strings.length + 1);
      at += table.byteLength;
      strings.forEach((s, i) => {
        new Uint8Array(buffer, at, s.length).set(s);
        table[i] = base + BigInt(at);
        at += s.length;
      });
      return new Uint8Array(buffer, start, at - start);
    };
    this.argv = place(argv);
    // argv[0] is the path: its bytes follow argv's table.
    this.path = new Uint8Array(buffer, 8 + (argv.length + 1) * 8, argv[0].length);
    this.envp = place(envp);
  }
}
