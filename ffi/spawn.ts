/**
 * Starting programs with posix_spawn(3) instead of Deno.Command. Deno.Command costs a process
 * ~12 ms at its first use (Deno loads its process module then: `mount`'s way to its server ran
 * through it) and, with `detached: true`, forks the whole process (its setsid pre-exec stops
 * Rust from using posix_spawn: 13-20 ms for the FUSE keeper of a mount server). glibc's
 * posix_spawn is a vfork-style clone; POSIX_SPAWN_SETSID does the setsid. Descriptors handed
 * on are dup2'd in the child only: no inheritable copy ever exists in this process, where
 * another spawn could take it along.
 */
import { closeFd, cstr, Errno, errno, libc, O_RDWR, SysError } from "./libc.ts";
import { listDirectory, pathExists, readSmallFile } from "./files.ts";
import {
  makePipe,
  pollAsync,
  pollFds,
  POLLIN,
  POLLOUT,
  readableNow,
  setNonBlocking,
} from "./io.ts";
import {
  exitCodeOf,
  parentPid,
  pidfdOpen,
  pidfdSendSignal,
  SIGKILL,
  takeReapedExitCode,
} from "./process.ts";

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

/** How a spawned program is started. */
export interface SpawnOptions {
  /** In a session of its own (setsid). */
  newSession?: boolean;
  /** Its stdin: /dev/null, or a pipe this process writes (SpawnedProcess.stdin). */
  stdin?: "null" | "pipe";
  /** Its stdout: /dev/null, or a pipe this process reads (SpawnedProcess.stdout). */
  stdout?: "null" | "pipe";
  /** Its stderr: /dev/null, this process's own, or a pipe this process reads. */
  stderr?: "null" | "inherit" | "pipe";
  /**
   * Descriptors of this process the child gets, as SpawnedProcess.fds (numbered up from above
   * the highest of them); nothing else is inherited (a Deno process opens every descriptor
   * close-on-exec) but for stdin/stdout/stderr.
   */
  inherit?: readonly number[];
}

/** A started program (this process's child until it is waited for, so its pid stays its own). */
export interface SpawnedProcess {
  pid: number;
  /** Per SpawnOptions.inherit: the descriptor's number in the child. */
  fds: number[];
  stdin?: PipeWriter;
  stdout?: PipeReader;
  stderr?: PipeReader;
  /** Waits until it has ended (on a pool thread) and reaps it: its exit code, or 128 + signal. */
  status(): Promise<number>;
}

/**
 * Runs `path` with `args` and exactly the environment `env`, with no signal blocked and SIGPIPE
 * at its default (Rust ignores it in this process). Resolves once the child has exec'd.
 */
export async function spawnProcess(
  path: string,
  args: readonly string[],
  env: Record<string, string>,
  options: SpawnOptions = {},
): Promise<SpawnedProcess> {
  const symbols = libc();
  const attr = new Uint8Array(new ArrayBuffer(ATTR_BYTES));
  new DataView(attr.buffer).setInt16(
    0,
    (options.newSession ? POSIX_SPAWN_SETSID : 0) | POSIX_SPAWN_SETSIGMASK |
      POSIX_SPAWN_SETSIGDEF,
    true,
  );
  attr[ATTR_SIGDEFAULT_AT + ((SIGPIPE - 1) >> 3)] |= 1 << ((SIGPIPE - 1) & 7);
  const actions = new Uint8Array(new ArrayBuffer(ACTIONS_BYTES));
  const inherit = options.inherit ?? [];
  const opened: number[] = [];
  const ours: number[] = [];
  try {
    const stdinPipe = options.stdin === "pipe" ? pipe(opened) : undefined;
    const stdoutPipe = options.stdout === "pipe" ? pipe(opened) : undefined;
    const stderrPipe = options.stderr === "pipe" ? pipe(opened) : undefined;
    // Above every descriptor the actions copy: none is overwritten before it is copied.
    const first = Math.max(3, ...[...inherit, ...opened].map((fd) => fd + 1));
    const fds = inherit.map((_, i) => first + i);
    const devNull = cstr("/dev/null");
    const addOpen = (fd: number) =>
      check(
        symbols.posix_spawn_file_actions_addopen(actions, fd, devNull, O_RDWR, 0),
        "posix_spawn_file_actions_addopen",
      );
    const addDup = (from: number, to: number) =>
      check(
        symbols.posix_spawn_file_actions_adddup2(actions, from, to),
        "posix_spawn_file_actions_adddup2",
      );
    if (stdinPipe) addDup(stdinPipe.read, 0);
    else addOpen(0);
    if (stdoutPipe) addDup(stdoutPipe.write, 1);
    else addOpen(1);
    if (stderrPipe) addDup(stderrPipe.write, 2);
    else if (options.stderr !== "inherit") addOpen(2);
    inherit.forEach((fd, i) => addDup(fd, fds[i]));
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
    const pid = call.pid[0];
    if (stdinPipe) ours.push(stdinPipe.write);
    if (stdoutPipe) ours.push(stdoutPipe.read);
    if (stderrPipe) ours.push(stderrPipe.read);
    return {
      pid,
      fds,
      stdin: stdinPipe && new PipeWriter(stdinPipe.write),
      stdout: stdoutPipe && new PipeReader(stdoutPipe.read),
      stderr: stderrPipe && new PipeReader(stderrPipe.read),
      status: () => waitFor(pid),
    };
  } finally {
    symbols.posix_spawn_file_actions_destroy(actions);
    // The child's ends are the child's now; ours stay open only when the spawn worked.
    for (const fd of opened) if (!ours.includes(fd)) closeFd(fd);
  }
}

/** Runs `path` in a session of its own, stdio on /dev/null, handed `inherit` (SpawnOptions). */
export async function spawnInNewSession(
  path: string,
  args: readonly string[],
  env: Record<string, string>,
  inherit: readonly number[] = [],
): Promise<{ pid: number; fds: number[] }> {
  const { pid, fds } = await spawnProcess(path, args, env, { newSession: true, inherit });
  return { pid, fds };
}

/** How runCaptured's program ended. */
export type CapturedRun =
  | { outcome: "exited"; code: number; stdout: Uint8Array; stderr: Uint8Array }
  /** Still running at the time limit: killed, with what it started. */
  | { outcome: "timeout" }
  /** Printed more than the limit (on stdout or stderr): killed, with what it started. */
  | { outcome: "too-much-output" }
  /** This process got `signal` while the program ran: the program was killed, with its children. */
  | { outcome: "interrupted"; signal: Deno.Signal };

/** Signals a terminal or a service manager sends to end a command. */
const ENDING_SIGNALS: Deno.Signal[] = ["SIGINT", "SIGTERM", "SIGHUP"];

/** runCaptured's programs not yet reaped (their pids are still theirs). */
const capturedRunning = new Set<number>();

/**
 * SIGKILLs every program runCaptured is running, with what each started: for a command that
 * ends its process in its own signal handler (Deno.exit), which runs before runCaptured's own
 * listener could (a credential helper asked during `index` outlived an interrupted index).
 */
export function killCapturedPrograms(): void {
  for (const pid of capturedRunning) killTree(pid);
}

/**
 * Runs `path` with `input` on its stdin and collects its stdout and stderr, within `timeoutMs`
 * and `maxOutputBytes` (each stream). The program stays in this process's group, so a terminal
 * it prompts on is its own as much as this command's (in a group of its own, a read of the
 * terminal stopped it: SIGTTIN) and the terminal's Ctrl-C reaches it. Past either limit, or at
 * SIGINT, SIGTERM or SIGHUP to this process ("interrupted": a signal sent to this process alone
 * would leave it running), it is SIGKILLed with every process it started that is still its
 * descendant (/proc), and nothing is waited for any longer: a process that holds the pipes
 * after leaving its tree is no reason to wait. Once the program has exited, what is in its
 * pipes is its output: a child of it that keeps them open is not waited for either. `input`
 * must fit in a pipe (64 KiB), written at once.
 */
export async function runCaptured(
  path: string,
  args: readonly string[],
  env: Record<string, string>,
  options: { input: Uint8Array; timeoutMs: number; maxOutputBytes: number },
): Promise<CapturedRun> {
  const deadline = performance.now() + options.timeoutMs;
  const child = await spawnProcess(path, args, env, {
    stdin: "pipe",
    stdout: "pipe",
    stderr: "pipe",
  });
  const streams = [child.stdout!, child.stderr!].map((reader) => ({
    reader,
    chunks: [] as Uint8Array[],
    bytes: 0,
    open: true,
  }));
  let pidfd = -1;
  let exited = false;
  let cut: CapturedRun | undefined;
  let code: number;
  const listeners = ENDING_SIGNALS.map((signal) => ({
    signal,
    listener: () => {
      cut ??= { outcome: "interrupted", signal };
      // Now, while its children are still its own: once it has ended they are init's.
      if (!exited) killTree(child.pid);
    },
  }));
  for (const { signal, listener } of listeners) Deno.addSignalListener(signal, listener);
  capturedRunning.add(child.pid);
  try {
    // Not reaped before the end (status() below): its pid stays this child's meanwhile.
    pidfd = pidfdOpen(child.pid);
    // The program may exit without reading it (EPIPE: SIGPIPE is ignored in this process).
    await child.stdin!.write(options.input as Uint8Array<ArrayBuffer>).catch(() => {});
    child.stdin!.close();
    const buffer = new Uint8Array(65536);
    for (;;) {
      for (const stream of streams) {
        while (stream.open) {
          const n = stream.reader.readNow(buffer);
          if (n === undefined) break;
          if (n === null) {
            stream.open = false;
            break;
          }
          stream.bytes += n;
          if (stream.bytes > options.maxOutputBytes) cut = { outcome: "too-much-output" };
          if (cut) break;
          stream.chunks.push(buffer.slice(0, n));
        }
      }
      // Gone: everything it wrote is in the pipes, read above.
      if (exited || cut) break;
      const left = deadline - performance.now();
      if (left <= 0) {
        cut = { outcome: "timeout" };
        break;
      }
      const fds = [pidfd, ...streams.filter((s) => s.open).map((s) => s.reader.descriptor)];
      await pollAsync(pollFds(fds, POLLIN), Math.ceil(left));
      exited = readableNow(pidfd);
    }
  } finally {
    for (const { signal, listener } of listeners) Deno.removeSignalListener(signal, listener);
    if (!exited) killTree(child.pid);
    if (pidfd >= 0) closeFd(pidfd);
    child.stdin!.close();
    for (const { reader } of streams) reader.close();
    capturedRunning.delete(child.pid); // killed or ended by now; reaped next
    code = await child.status();
  }
  if (cut) return cut;
  const joined = (i: number) => {
    const out = new Uint8Array(streams[i].bytes);
    let at = 0;
    for (const chunk of streams[i].chunks) {
      out.set(chunk, at);
      at += chunk.length;
    }
    return out;
  };
  return { outcome: "exited", code, stdout: joined(0), stderr: joined(1) };
}

/**
 * SIGKILLs `pid` (a child of this process, not reaped yet, so its pid is still its own) and
 * every descendant of it, found through /proc/PID/task/TID/children before any is killed (a
 * process killed first would hand its children to init, out of sight). Each descendant is held
 * by a pidfd as soon as it is found and kept only while its parent is still the one that listed
 * it: a pid that ended meanwhile may be another process's by then, which must not be killed.
 */
function killTree(pid: number): void {
  const found: { pid: number; pidfd: number }[] = [{ pid, pidfd: -1 }];
  try {
    for (let i = 0; i < found.length && found.length < 4096; i++) {
      const parent = found[i].pid;
      let tasks: string[];
      try {
        tasks = listDirectory(`/proc/${parent}/task`);
      } catch {
        continue; // ended meanwhile
      }
      for (const task of tasks) {
        const children = readSmallFile(`/proc/${parent}/task/${task}/children`) ?? "";
        for (const child of children.split(" ")) {
          if (!/^\d+$/.test(child)) continue;
          let pidfd: number;
          try {
            pidfd = pidfdOpen(Number(child));
          } catch {
            continue; // ended meanwhile
          }
          if (parentPid(Number(child)) === parent) found.push({ pid: Number(child), pidfd });
          else closeFd(pidfd); // not the child listed: ended, and its pid taken since
        }
      }
    }
    for (const each of found) {
      try {
        if (each.pidfd >= 0) pidfdSendSignal(each.pidfd, SIGKILL);
        else Deno.kill(each.pid, "SIGKILL");
      } catch { /* ended meanwhile */ }
    }
  } finally {
    for (const each of found) if (each.pidfd >= 0) closeFd(each.pidfd);
  }
}

/** A close-on-exec pipe; both ends are added to `opened`. */
function pipe(opened: number[]): { read: number; write: number } {
  const ends = makePipe();
  opened.push(ends.read, ends.write);
  return ends;
}

async function waitFor(pid: number): Promise<number> {
  const status = new Int32Array(new ArrayBuffer(4));
  for (let attempt = 0;; attempt++) {
    const got = await libc().waitpid_nonblocking(pid, status, 0);
    if (got === pid) break;
    // Failed on its pool thread (errno is not ours to read there): reaped by this process's
    // reaper (reattach --watch), or interrupted, so asked again unless the child is gone or it
    // keeps failing.
    const reaped = takeReapedExitCode(pid);
    if (reaped !== undefined) return reaped;
    if (!pathExists(`/proc/${pid}`) || attempt >= 100) return -1;
  }
  return exitCodeOf(status[0]);
}

/** Waits (pool thread) until `fd` is ready for `events`. */
async function pollFor(fd: number, events: number): Promise<void> {
  await pollAsync(pollFds([fd], events), -1);
}

/** This process's end of a pipe to or from a child: O_NONBLOCK, waited on with poll. */
class PipeEnd {
  protected fd: number;

  constructor(fd: number) {
    this.fd = fd;
    setNonBlocking(fd);
  }

  close(): void {
    if (this.fd < 0) return;
    closeFd(this.fd);
    this.fd = -1;
  }
}

/** This process's end of a child's stdin: writes without blocking the event loop. */
export class PipeWriter extends PipeEnd {
  /** Writes all of `bytes`; rejects when the child's end is gone (EPIPE) or closed here. */
  async write(bytes: Uint8Array): Promise<void> {
    let done = 0;
    while (done < bytes.length) {
      if (this.fd < 0) throw new SysError("write", Errno.EBADF, "pipe closed");
      const rest = bytes.subarray(done) as Uint8Array<ArrayBuffer>;
      const n = Number(libc().write(this.fd, rest, BigInt(rest.length)));
      if (n >= 0) {
        done += n;
        continue;
      }
      const code = errno();
      if (code === Errno.EAGAIN) await pollFor(this.fd, POLLOUT);
      else if (code !== Errno.EINTR) throw new SysError("write", code, "pipe");
    }
  }
}

/** This process's end of a child's stdout: reads without blocking the event loop. */
export class PipeReader extends PipeEnd {
  /** The descriptor, to poll it with others (-1 once closed). */
  get descriptor(): number {
    return this.fd;
  }

  /** Some bytes into `buffer` if there are any now: how many, null at the end, else undefined. */
  readNow(buffer: Uint8Array<ArrayBuffer>): number | null | undefined {
    for (;;) {
      if (this.fd < 0) return null;
      const n = Number(libc().read(this.fd, buffer, BigInt(buffer.length)));
      if (n > 0) return n;
      if (n === 0) return null;
      const code = errno();
      if (code === Errno.EAGAIN) return undefined;
      if (code !== Errno.EINTR) throw new SysError("read", code, "pipe");
    }
  }

  /** Some bytes into `buffer`: how many, or null at the end (the child closed its end). */
  async read(buffer: Uint8Array<ArrayBuffer>): Promise<number | null> {
    for (;;) {
      const n = this.readNow(buffer);
      if (n !== undefined) return n;
      await pollFor(this.fd, POLLIN);
    }
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
