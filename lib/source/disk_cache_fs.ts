/**
 * File systems the disk cache refuses to live on: those whose files other hosts (or a VM's
 * host) see too. The cache marks a chunk WRITTEN before fdatasync and trusts the mark within
 * one kernel boot (disk_cache_boot.ts), and it excludes other processes with OFD byte-range
 * locks (disk_cache_io.ts); both hold for one page cache and one lock table, i.e. a file
 * system local to this host. On these a process on another host could read a mark over bytes
 * that never reached the server, and the locks need not be coherent between hosts.
 *
 * FUSE (0x65735546) is left out on purpose: sshfs is remote, but many FUSE file systems are
 * local (ntfs-3g, gocryptfs, mergerfs over local disks), and statfs cannot tell them apart.
 * Here too: what the cache leaves free on its file system and what that holds (statfs).
 */
import { statFs } from "../../ffi/files.ts";

/**
 * statfs(2) f_type → name, as `stat -f -c %T` prints it, so a user can check their directory.
 * Magics from include/uapi/linux/magic.h unless noted.
 */
const SHARED_FILE_SYSTEMS: ReadonlyMap<number, string> = new Map([
  [0x6969, "nfs"], // NFS_SUPER_MAGIC (NFS v2, v3 and v4)
  [0x517b, "smb"], // SMB_SUPER_MAGIC (the old smbfs)
  [0xff534d42, "cifs"], // CIFS_SUPER_MAGIC: cifs.ko mounts speaking SMB1
  [0xfe534d42, "smb2"], // SMB2_SUPER_MAGIC: cifs.ko mounts speaking SMB2 or SMB3
  [0x01021997, "v9fs"], // V9FS_MAGIC: 9p, e.g. a directory shared by a VM's host
  [0x00c36400, "ceph"], // CEPH_SUPER_MAGIC
  [0x5346414f, "afs"], // AFS_SUPER_MAGIC (OpenAFS)
  [0x6b414653, "k-afs"], // AFS_FS_MAGIC (the kernel's AFS client, fs/afs)
  [0x73757245, "coda"], // CODA_SUPER_MAGIC
  [0x01161970, "gfs/gfs2"], // GFS2_MAGIC, include/uapi/linux/gfs2_ondisk.h
  [0x7461636f, "ocfs2"], // OCFS2_SUPER_MAGIC
  [0x0bd00bd0, "lustre"], // LL_SUPER_MAGIC, Lustre's lustre_user.h
  [0x47504653, "gpfs"], // "GPFS", IBM Storage Scale
  [0x19830326, "fhgfs"], // BeeGFS (formerly FhGFS)
  [0xaad7aaea, "panfs"], // Panasas
]);

/**
 * The name of the file system shared between hosts that statfs magic `magic` (f_type) stands
 * for, or undefined for any other (local, in-memory, FUSE, unknown).
 */
export function sharedFileSystemName(magic: number): string | undefined {
  return SHARED_FILE_SYSTEMS.get(magic);
}

/**
 * What the cache leaves free on its file system unless told otherwise: a tenth of it, at most
 * 4 GiB (journald's default for its logs' file system is alike). The cache runs as root, whose
 * writes also take the blocks kept for root: a bound larger than the free space would
 * otherwise fill the disk under every other program on the host.
 */
const KEEP_FREE_SHARE = 0.1;
const KEEP_FREE_MAX_BYTES = 4 * 1024 ** 3;

/** A tenth of the file system holding `dir`, at most 4 GiB; 0 when statfs fails. */
export function defaultKeepFreeBytes(dir: string): number {
  try {
    const stats = statFs(dir);
    return Math.min(
      KEEP_FREE_MAX_BYTES,
      Math.floor(KEEP_FREE_SHARE * Number(stats.blocks) * stats.blockSizeBytes),
    );
  } catch {
    return 0;
  }
}

/**
 * Bytes unprivileged users may still write on `dir`'s file system (what the reserve is kept
 * in: root's own reserve is not counted); undefined when statfs fails.
 */
export function availableBytesOf(dir: string): number | undefined {
  try {
    const stats = statFs(dir);
    return Number(stats.availableBlocks) * stats.blockSizeBytes;
  } catch {
    return undefined;
  }
}

/**
 * The statfs magic of `dir`'s file system, or -1 (matches none) when statfs fails: that
 * alone does not make the directory unusable, the cache's own file operations say if it is.
 */
export function fileSystemTypeOf(dir: string, fileSystemType?: (dir: string) => number): number {
  try {
    return fileSystemType ? fileSystemType(dir) : statFs(dir).type;
  } catch {
    return -1;
  }
}
