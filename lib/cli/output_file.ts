/**
 * `-o FILE` of a command that writes one file (pull, build): a directory, anything else that is
 * not a regular file, or the command's own input is refused before any work (the final rename
 * would fail after all the download or build, or replace what it should not), and what the file
 * system refuses (read-only, full, no permission) is one line naming the file, not an internal
 * error.
 */
import { UsageError, UserError } from "../errors.ts";

export function checkOutputFile(command: string, path: string, inputs: string[] = []): void {
  // Before the work, not after it (trace ran the whole traced command, then could not write).
  const parent = dirOf(path.replace(/\/+$/, ""));
  try {
    if (!Deno.statSync(parent).isDirectory) {
      throw new UsageError(`${command}: -o ${path}: ${parent} is not a directory`);
    }
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new UsageError(
        `${command}: -o ${path}: directory ${parent} does not exist`,
        "create it first, or write the file elsewhere",
      );
    }
    if (error instanceof UsageError) throw error;
    // Unreachable for another reason (permissions): writing it says why.
  }
  let info: Deno.FileInfo;
  try {
    info = Deno.lstatSync(path);
  } catch {
    return; // absent (the usual case), or unreachable: writing it says why
  }
  if (info.isDirectory) {
    const example = command === "trace" ? "trace.json" : "image.erofs";
    throw new UsageError(
      `${command}: -o ${path} is a directory`,
      `name the file to write, e.g. -o ${path.replace(/\/+$/, "")}/${example}`,
    );
  }
  // The output is written beside and renamed over the path: that would replace a device node
  // (/dev/null), a FIFO or a symlink itself, not write to what it stands for.
  if (!info.isFile) {
    throw new UsageError(
      `${command}: -o ${path} exists and is ${kindOf(info)}, not a regular file`,
      "name a regular file (it is replaced once complete) or remove what is there",
    );
  }
  for (const input of inputs) {
    let inputInfo: Deno.FileInfo;
    try {
      inputInfo = Deno.statSync(input);
    } catch {
      continue; // not a file here (an image reference): reading it says what is wrong
    }
    if (inputInfo.dev === info.dev && inputInfo.ino === info.ino) {
      throw new UsageError(
        `${command}: -o ${path} is the input ${input}: writing it would replace what is read`,
        "name another output file",
      );
    }
  }
}

function kindOf(info: Deno.FileInfo): string {
  if (info.isSymlink) return "a symlink";
  if (info.isCharDevice) return "a character device";
  if (info.isBlockDevice) return "a block device";
  if (info.isFifo) return "a FIFO";
  if (info.isSocket) return "a socket";
  return "not a regular file";
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

/** The directory `path` names its file in ("." for a bare name). */
export function dirOf(path: string): string {
  const slash = path.lastIndexOf("/");
  return slash < 0 ? "." : path.slice(0, slash) || "/";
}

/**
 * Writes `bytes` as the file `path` (checked with checkOutputFile first): to a new file beside it,
 * renamed over it once complete, so a symlink or device planted at the path is never written
 * through and a failure leaves what was there.
 */
export function writeOutputFile(command: string, path: string, bytes: Uint8Array): void {
  const slash = path.lastIndexOf("/");
  const temp = `${path.slice(0, slash + 1)}.${path.slice(slash + 1)}.${
    crypto.randomUUID().slice(0, 8)
  }.tmp`;
  try {
    Deno.writeFileSync(temp, bytes, { createNew: true });
    Deno.renameSync(temp, path);
  } catch (error) {
    try {
      Deno.removeSync(temp);
    } catch { /* not made */ }
    throw outputFileError(command, path, error);
  }
}
