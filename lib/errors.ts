/**
 * Errors a user can act on. Every area throws a subclass carrying a one-line message and an
 * optional hint; `main.ts` prints them as `erofs-oci: <message>` (+ hint) without a stack trace.
 *
 * @example
 * throw new OciError("manifest unknown: localhost:5000/app:v2", "check the tag with `erofs-oci inspect`");
 */
export class UserError extends Error {
  /** Process exit code: 1 for runtime failures, 2 for usage errors. */
  readonly exitCode: number;
  readonly hint?: string;
  constructor(message: string, hint?: string, options?: { cause?: unknown; exitCode?: number }) {
    super(message, { cause: options?.cause });
    this.name = new.target.name;
    this.hint = hint;
    this.exitCode = options?.exitCode ?? 1;
  }
}

/** The shell's code for a process ended by SIGINT (128 + 2); SIGTERM's too, by choice. */
export const INTERRUPTED_EXIT_CODE = 130;
/** The shell's code for a process ended by SIGHUP (128 + 1): a hangup is not a Ctrl-C. */
export const HANGUP_EXIT_CODE = 129;

/** The exit code of a command that undid its work at `signal`. */
export function interruptedExitCode(signal: Deno.Signal): number {
  return signal === "SIGHUP" ? HANGUP_EXIT_CODE : INTERRUPTED_EXIT_CODE;
}

/** Bad command line: exit code 2. */
export class UsageError extends UserError {
  constructor(message: string, hint?: string) {
    super(message, hint, { exitCode: 2 });
  }
}

/** Registry, reference, manifest or auth problem. */
export class OciError extends UserError {
  /** HTTP status when the error came from a registry reply. */
  status?: number;
}

/** NBD protocol or kernel attach problem. */
export class NbdError extends UserError {}

/** mount(2), overlay or runtime-state problem. */
export class MountError extends UserError {}

/** Bad or unsupported on-disk format (EROFS, zinfo, tar, recovery file). */
export class FormatError extends UserError {}

/**
 * Deno refuses its file APIs under /dev, /proc and /sys unless a program runs with every
 * permission (NotCapable: "Requires all access to …, run again with the --allow-all flag"),
 * which this one does not ask for (scripts/permissions). A user who names such a path (an
 * output in /dev/shm, a cache directory there) gets this instead of Deno's advice.
 */
export function refusedSpecialPath(error: unknown): UserError | undefined {
  if (!(error instanceof Deno.errors.NotCapable)) return undefined;
  const path = /"([^"]*)"/.exec(error.message)?.[1] ?? "that path";
  return new UserError(
    `cannot use ${path}: erofs-oci does not open files under /dev, /proc or /sys`,
    "give a path outside them (for a tmpfs, /run or /tmp)",
    { cause: error },
  );
}

/** Well-known errno values (asm-generic/errno-base.h, errno.h). */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  ENOTBLK: 15,
  EBUSY: 16,
  EEXIST: 17,
  EXDEV: 18,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ETXTBSY: 26,
  EFBIG: 27,
  ENOSPC: 28,
  EROFS: 30,
  EPIPE: 32,
  ERANGE: 34,
  ENAMETOOLONG: 36,
  ENOSYS: 38,
  ENOTEMPTY: 39,
  ELOOP: 40,
  ENODATA: 61,
  EBADMSG: 74,
  EOPNOTSUPP: 95,
  ECONNRESET: 104,
  ENOTCONN: 107,
  ETIMEDOUT: 110,
  ECONNREFUSED: 111,
  /** EFSCORRUPTED of the kernel's file systems, EROFS included. */
  EUCLEAN: 117,
  EDQUOT: 122,
} as const;

/** What helps a process that ran out of file descriptors (EMFILE). */
export const OUT_OF_DESCRIPTORS_HINT = "raise the open file limit (ulimit -n)";

/**
 * Refusals of the operating system that describe the host, not a bug: a full or read-only file
 * system, a missing or unreadable path, a directory where a file was expected.
 */
const HOST_REFUSALS: Record<string, string | ((elsewhere?: string) => string) | undefined> = {
  ENOSPC: fullHint,
  EDQUOT: fullHint,
  EROFS: (elsewhere) =>
    elsewhere ? `write somewhere writable (${elsewhere})` : "make that file system writable",
  EACCES: undefined,
  EPERM: undefined,
  EISDIR: undefined,
  ENOTDIR: undefined,
  ENOENT: undefined,
  ENAMETOOLONG: undefined,
  ELOOP: undefined,
  EFBIG: undefined,
  EMFILE: OUT_OF_DESCRIPTORS_HINT,
  EIO: "the disk or file system reported an I/O error",
};

/** ENOSPC is out of blocks or out of inodes (a tmpfs's nr_inodes, small files by the million). */
function fullHint(elsewhere?: string): string {
  const free = "free space there (or inodes: `df -i`)";
  return elsewhere ? `${free}, or write elsewhere (${elsewhere})` : free;
}

/**
 * A Deno file error the host caused (HOST_REFUSALS) as one line naming the path, such as
 * "open 'out/x.tmp': Read-only file system"; undefined for anything else. `elsewhere` names the
 * options of the command that choose where it writes ("-o, --tmpdir"), for the hint; a command
 * without any (mount: its state and runtime dirs) gets a hint without them.
 */
export function hostRefusal(error: unknown, elsewhere?: string): UserError | undefined {
  if (!(error instanceof Error)) return undefined;
  const code = (error as { code?: unknown }).code;
  if (typeof code !== "string" || !(code in HOST_REFUSALS)) return undefined;
  const hint = HOST_REFUSALS[code];
  return new UserError(
    plainOsErrors(error.message).text,
    typeof hint === "function" ? hint(elsewhere) : hint,
    { cause: error },
  );
}

/**
 * Deno's text for an OS error, alone or quoted in one of our messages: the strerror text
 * (capitalised words: "Input/output error", "Read-only file system"), " (os error N)", and for
 * file calls the call and its path(s), as in "No such file or directory (os error 2): stat 'x'"
 * or "...: rename 'a' -> 'b'".
 */
const DENO_OS_ERROR =
  /([A-Z][a-z]*(?:[ /-][A-Za-z]+)*) \(os error (\d+)\)(?:: (\w+ '[^']*'(?: -> '[^']*')?))?/g;

/**
 * `message` with Deno's OS error texts in our words: the strerror text without the
 * "(os error N)" tail, after the call and path only when the message does not name that path
 * already ("build: cannot read x: No such file or directory", "open 'y': Permission denied").
 * `errnos` are the numbers left out, for --debug.
 */
export function plainOsErrors(message: string): { text: string; errnos: number[] } {
  const errnos: number[] = [];
  const text = message.replace(
    DENO_OS_ERROR,
    (_match, cause: string, errno: string, call: string | undefined, at: number) => {
      errnos.push(Number(errno));
      const paths = call ? [...call.matchAll(/'([^']*)'/g)].map((quoted) => quoted[1]) : [];
      const before = message.slice(0, at);
      const named = paths.every((path) => path !== "" && before.includes(path));
      return call && !named ? `${call}: ${cause}` : cause;
    },
  );
  return { text, errnos };
}

/** "ENOENT (os error 2)" for --debug: the errno's name where Errno knows it. */
export function describeErrno(errno: number): string {
  const name = Object.entries(Errno).find(([, value]) => value === errno)?.[0];
  return name ? `${name} (os error ${errno})` : `os error ${errno}`;
}
