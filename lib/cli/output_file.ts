/**
 * `-o FILE` of a command that writes one file (pull, build): a directory is refused before any
 * work (the final rename would fail after all the download or build), and what the file system
 * refuses (read-only, full, no permission) is one line naming the file, not an internal error.
 */
import { UsageError, UserError } from "../errors.ts";

export function checkOutputFile(command: string, path: string): void {
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(path);
  } catch {
    return; // absent (the usual case), or unreachable: writing it says why
  }
  if (info.isDirectory) {
    throw new UsageError(
      `${command}: -o ${path} is a directory`,
      `name the file to write, e.g. -o ${path.replace(/\/+$/, "")}/image.erofs`,
    );
  }
}

/** `error` as a one-line UserError when it is the operating system's refusal (it has an errno code). */
export function outputFileError(command: string, path: string, error: unknown): unknown {
  if (error instanceof UserError) return error;
  const code = (error as { code?: unknown } | undefined)?.code;
  if (typeof code === "string" && /^E[A-Z0-9]+$/.test(code)) {
    return new UserError(`${command}: cannot write ${path}: ${(error as Error).message}`);
  }
  return error;
}
