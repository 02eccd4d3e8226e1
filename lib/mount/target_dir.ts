/** Checks on the mount target before anything is started, each with the fix in its hint. */
import { MountError } from "../errors.ts";

/** Returns the absolute, symlink-free path of an existing, empty directory. */
export function checkMountTarget(dir: string): string {
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(dir);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new MountError(`mount point ${dir} does not exist`, `create it: mkdir -p ${dir}`);
    }
    throw new MountError(`cannot use mount point ${dir}: ${(error as Error).message}`);
  }
  if (!info.isDirectory) {
    throw new MountError(`mount point ${dir} is not a directory`);
  }
  for (const _ of Deno.readDirSync(dir)) {
    throw new MountError(
      `mount point ${dir} is not empty`,
      "mount on an empty directory so no files are hidden",
    );
  }
  return Deno.realPathSync(dir);
}

export function checkRoot(): void {
  if (Deno.uid() !== 0) {
    throw new MountError("mounting needs root (CAP_SYS_ADMIN)", "run erofs-oci with sudo");
  }
}
