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
 */

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
