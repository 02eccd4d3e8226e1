/** Picks how layers reach the kernel: NBD block devices when the module is there, else FUSE. */
import { MountError, UsageError } from "../errors.ts";
import { pathExists } from "../../ffi/files.ts";

export type BackendName = "nbd" | "fuse";

export function nbdAvailable(): boolean {
  return pathExists("/sys/module/nbd");
}

export function fuseAvailable(): boolean {
  return pathExists("/dev/fuse");
}

/** Resolves `auto` and checks that an explicit choice can work here. */
export function chooseBackend(requested: string): { backend: BackendName; reason: string } {
  switch (requested) {
    case "auto":
      if (nbdAvailable()) return { backend: "nbd", reason: "nbd module loaded" };
      if (fuseAvailable()) {
        return { backend: "fuse", reason: "no nbd module here, using the FUSE backend" };
      }
      throw new MountError(
        "neither the nbd module nor /dev/fuse is available",
        "run `modprobe nbd nbds_max=16` or `modprobe fuse`",
      );
    case "nbd":
      if (!nbdAvailable()) {
        throw new MountError(
          "the nbd kernel module is not loaded",
          "run `modprobe nbd nbds_max=16`, or use `--backend fuse`",
        );
      }
      return { backend: "nbd", reason: "requested" };
    case "fuse":
      if (!fuseAvailable()) {
        throw new MountError("/dev/fuse is missing", "run `modprobe fuse`, or use `--backend nbd`");
      }
      return { backend: "fuse", reason: "requested" };
    default:
      // A bad command line (exit 2), like any other bad option value.
      throw new UsageError(`unknown backend '${requested}'`, "use auto, nbd or fuse");
  }
}
