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

/**
 * Refusals of the operating system that describe the host, not a bug: a full or read-only file
 * system, a missing or unreadable path, a directory where a file was expected.
 */
const HOST_REFUSALS: Record<string, string | undefined> = {
  ENOSPC: "free space there, or write elsewhere (-o, --tmpdir)",
  EDQUOT: "free space there, or write elsewhere (-o, --tmpdir)",
  EROFS: "write somewhere writable (-o, --tmpdir)",
  EACCES: undefined,
  EPERM: undefined,
  EISDIR: undefined,
  ENOTDIR: undefined,
  ENOENT: undefined,
  ENAMETOOLONG: undefined,
  ELOOP: undefined,
  EFBIG: undefined,
  EMFILE: "raise the open file limit (ulimit -n)",
  EIO: "the disk or file system reported an I/O error",
};

/**
 * A Deno file error the host caused (HOST_REFUSALS) as one line naming the path, such as
 * "open 'out/x.tmp': Read-only file system"; undefined for anything else.
 */
export function hostRefusal(error: unknown): UserError | undefined {
  if (!(error instanceof Error)) return undefined;
  const code = (error as { code?: unknown }).code;
  if (typeof code !== "string" || !(code in HOST_REFUSALS)) return undefined;
  // Deno's form: "Read-only file system (os error 30): open 'out/x.tmp'".
  const parts = /^(.*?) \(os error \d+\)(?:: (.*))?$/s.exec(error.message);
  const message = parts ? (parts[2] ? `${parts[2]}: ${parts[1]}` : parts[1]) : error.message;
  return new UserError(message, HOST_REFUSALS[code], { cause: error });
}
