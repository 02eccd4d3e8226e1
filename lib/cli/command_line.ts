/**
 * The command line as the kernel holds it. Deno decodes it lossily: every byte that is not
 * UTF-8 becomes U+FFFD, so a path with such bytes (`mnt\xff`) named another file — as root,
 * `mount` mounted another image onto another directory, `build -o` wrote elsewhere.
 */
import { readSmallFileBytes } from "../../ffi/files.ts";
import { UsageError } from "../errors.ts";
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
  const parts: Uint8Array[] = [];
  for (let start = 0; start < raw.length;) {
    const end = raw.indexOf(0, start);
    parts.push(raw.subarray(start, end < 0 ? raw.length : end));
    start = end < 0 ? raw.length : end + 1;
  }
  const ours = parts.slice(Math.max(0, parts.length - args.length));
  const strict = new TextDecoder("utf-8", { fatal: true });
  ours.forEach((bytes, i) => {
    try {
      strict.decode(bytes);
    } catch {
      throw new UsageError(
        `argument ${i + 1} is not valid UTF-8: ${printable(args[i])} (each \uFFFD stands for ` +
          "a byte that is not)",
        "name the file by a path that is UTF-8 (rename it, or give a symlink named in UTF-8)",
      );
    }
  });
}
