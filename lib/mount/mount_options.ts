/**
 * Options of every mount erofs-oci makes. Images come from registries and are not trusted:
 * by default a setuid-root file in one must not raise privileges and a device node in one must
 * not open a device, so mounts get `nosuid,nodev` unless a container runtime asks otherwise.
 */
import { MS_NODEV, MS_NOSUID, MS_RDONLY } from "../../ffi/mount.ts";
import { UsageError } from "../errors.ts";

export interface MountTrust {
  /** Honour setuid/setgid bits (drops MS_NOSUID). */
  suid?: boolean;
  /** Honour device nodes (drops MS_NODEV). */
  dev?: boolean;
}

/** mount(2) flags for a mount of the image: read-only unless `writable`. */
export function mountFlags(trust: MountTrust, writable = false): number {
  return (writable ? 0 : MS_RDONLY) | (trust.suid ? 0 : MS_NOSUID) | (trust.dev ? 0 : MS_NODEV);
}

/** The options as `mount` and `list` show them, e.g. ["ro", "nosuid", "nodev"]. */
export function describeMountFlags(trust: MountTrust, writable = false): string[] {
  return [
    writable ? "rw" : "ro",
    trust.suid ? "suid" : "nosuid",
    trust.dev ? "dev" : "nodev",
  ];
}

/**
 * `--suid`, `--dev` and `-o LIST` (comma-separated suid, nosuid, dev, nodev; later words
 * win) combined into a MountTrust.
 */
export function parseMountTrust(
  flags: { suid?: boolean; dev?: boolean },
  optionLists: string[] = [],
): MountTrust {
  const trust: MountTrust = { suid: flags.suid ?? false, dev: flags.dev ?? false };
  for (const word of optionLists.flatMap((list) => list.split(","))) {
    if (word === "suid" || word === "nosuid") trust.suid = word === "suid";
    else if (word === "dev" || word === "nodev") trust.dev = word === "dev";
    else if (word !== "") {
      throw new UsageError(
        `mount: unknown mount option '${word}'`,
        "-o accepts suid, nosuid, dev, nodev",
      );
    }
  }
  return trust;
}
