/**
 * `-o FILE` of a command that writes one file (pull, build): a directory, anything else that is
 * not a regular file, or the command's own input is refused before any work (the final rename
 * would fail after all the download or build, or replace what it should not), and what the file
 * system refuses (read-only, full, no permission) is one line naming the file, not an internal
 * error.
 */
import { Errno, refusedSpecialPath, UsageError, UserError } from "../errors.ts";
import { hiddenTempName, NewFileInDir, splitPath } from "../../ffi/new_file_in_dir.ts";
import { strerror, SysError } from "../../ffi/libc.ts";
import { dirWriteErrno, fstatFd } from "../../ffi/files.ts";

export function checkOutputFile(command: string, path: string, inputs: string[] = []): void {
  // Before the work, not after it (trace ran the whole traced command, then could not write).
  if (path.endsWith("/")) {
    const example = command === "trace" ? "trace.json" : "image.erofs";
    throw new UsageError(
      `${command}: -o ${path} names a directory`,
      `name the file to write, e.g. -o ${path}${example}`,
    );
  }
  const parent = dirOf(path);
  let special: UserError | undefined;
  try {
    if (!Deno.statSync(parent).isDirectory) {
      throw new UsageError(`${command}: -o ${path}: ${parent} is not a directory`);
    }
    // A read-only mount or a directory of another user's: said now, not after the build.
    const denied = dirWriteErrno(parent);
    if (denied === Errno.EROFS || denied === Errno.EACCES || denied === Errno.EPERM) {
      throw new UserError(
        `${command}: cannot write ${path}: ${strerror(denied)} (${parent})`,
        "write the file elsewhere",
      );
    }
  } catch (error) {
    if (error instanceof UserError) throw error;
    if (error instanceof Deno.errors.NotFound) {
      throw new UsageError(
        `${command}: -o ${path}: directory ${parent} does not exist`,
        "create it first, or write the file elsewhere",
      );
    }
    // Under /dev, /proc or /sys: refused as every file erofs-oci is given there (the file is
    // written through descriptors, which Deno's own refusal would not stop), after what the
    // path itself is has been said (-o /dev/null: a character device).
    special = refusedSpecialPath(error);
    // Unreachable for another reason (permissions): writing it says why.
  }
  let info: Deno.FileInfo;
  try {
    info = Deno.lstatSync(path);
  } catch {
    if (special) throw special;
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
  if (special) throw special;
  for (const input of inputs) {
    let inputInfo: { dev: number | bigint; ino: number | bigint | null };
    try {
      // "-": standard input, which `build - -o X < X` redirected from the output itself.
      inputInfo = input === "-" ? fstatFd(0) : Deno.statSync(input);
    } catch {
      continue; // not a file here (an image reference): reading it says what is wrong
    }
    if (
      BigInt(inputInfo.dev) === BigInt(info.dev) && inputInfo.ino !== null && info.ino !== null &&
      BigInt(inputInfo.ino) === BigInt(info.ino)
    ) {
      throw new UsageError(
        `${command}: -o ${path} is the input ${
          input === "-" ? "(standard input)" : input
        }: writing it would replace what is read`,
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
  // A system call's refusal on the way (mkdir, open in a directory's descriptor): said of the
  // output, as Deno's own errors are.
  if (error instanceof SysError) {
    return new UserError(`${command}: cannot write ${path}: ${strerror(error.errno)}`);
  }
  if (error instanceof UserError) return error;
  const code = (error as { code?: unknown } | undefined)?.code;
  if (typeof code === "string" && /^E[A-Z0-9]+$/.test(code)) {
    return new UserError(`${command}: cannot write ${path}: ${(error as Error).message}`);
  }
  return error;
}

/** The directory `path` names its file in ("." for a bare name). */
export function dirOf(path: string): string {
  return splitPath(path).dir;
}

/**
 * Writes `bytes` as the file `path` (checked with checkOutputFile first): a new file in its
 * directory, named `path` once complete through one descriptor of that directory
 * (ffi/new_file_in_dir.ts), so a symlink or device planted at the path, or a directory
 * swapped meanwhile, is never written through, and a failure leaves what was there.
 */
export function writeOutputFile(command: string, path: string, bytes: Uint8Array): void {
  try {
    const out = NewFileInDir.create(path, { tempName: hiddenTempName });
    try {
      out.write(bytes);
      out.commit();
    } finally {
      out.discard();
    }
  } catch (error) {
    throw outputFileError(command, path, error);
  }
}
