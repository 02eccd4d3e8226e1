/**
 * The command line as the kernel holds it. Deno decodes it lossily: every byte that is not
 * UTF-8 becomes U+FFFD, so a path with such bytes (`mnt\xff`) named another file — as root,
 * `mount` mounted another image onto another directory, `build -o` wrote elsewhere.
 */
import { readSmallFileBytes } from "../../ffi/files.ts";
import { UsageError, UserError } from "../errors.ts";
import { printable } from "../text.ts";

/**
 * Refuses the command line when one of `args` (the program's arguments, the last ones of the
 * process's command line) is not valid UTF-8 as given. Only looked at when an argument holds
 * U+FFFD (a lossy decoding shows as one), so a command line without one costs nothing.
 */
export function refuseNonUtf8Arguments(
  args: readonly string[],
  rawCommandLine: () => Uint8Array | undefined = () =>
    readSmallFileBytes("/proc/self/cmdline", 1 << 21),
): void {
  if (!args.some((arg) => arg.includes("\uFFFD"))) return;
  const raw = rawCommandLine();
  if (!raw) return;
  const parts = nulSeparated(raw);
  const ours = parts.slice(Math.max(0, parts.length - args.length));
  ours.forEach((bytes, i) => {
    if (!isUtf8(bytes)) {
      throw new UsageError(
        `argument ${i + 1} is not valid UTF-8: ${printable(args[i])} (each \uFFFD stands for ` +
          "a byte that is not)",
        "name the file by a path that is UTF-8 (rename it, or give a symlink named in UTF-8)",
      );
    }
  });
}

/**
 * Deno's refusal to read an environment variable that is not UTF-8 (an EROFS_OCI_* directory
 * with such a byte was an "internal error" naming no variable), as one line naming it.
 */
export function nonUtf8Environment(
  error: unknown,
  rawEnvironment: () => Uint8Array | undefined = () =>
    readSmallFileBytes("/proc/self/environ", 1 << 21),
): UserError | undefined {
  if (
    !(error instanceof Deno.errors.InvalidData) ||
    !/environment variable was not valid unicode/.test(error.message)
  ) return undefined;
  const names = nulSeparated(rawEnvironment() ?? new Uint8Array(0))
    .filter((entry) => !isUtf8(entry))
    .map((entry) => {
      const equals = entry.indexOf(0x3d);
      return printable(new TextDecoder().decode(entry.subarray(0, equals < 0 ? 0 : equals)));
    });
  return new UserError(
    `environment variable ${names.length ? names.join(", ") : "(one of them)"} is not valid UTF-8`,
    "give it a value that is UTF-8 (a path: rename it, or use a symlink named in UTF-8), or unset it",
  );
}

/** The NUL-terminated strings of /proc/self/cmdline or /proc/self/environ. */
function nulSeparated(raw: Uint8Array): Uint8Array[] {
  const parts: Uint8Array[] = [];
  for (let start = 0; start < raw.length;) {
    const end = raw.indexOf(0, start);
    parts.push(raw.subarray(start, end < 0 ? raw.length : end));
    start = end < 0 ? raw.length : end + 1;
  }
  return parts;
}

function isUtf8(bytes: Uint8Array): boolean {
  try {
    new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    return true;
  } catch {
    return false;
  }
}
