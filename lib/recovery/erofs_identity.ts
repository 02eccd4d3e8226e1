/**
 * What a mounted EROFS file system is, told without reading its device: reattach runs exactly
 * when the device's server is dead, and any read of a dead NBD device blocks (the connection
 * timeout is days). statfs(2) on the mount point is answered by erofs_statfs from the in-memory
 * superblock (block size, total_blocks, inode count, and f_fsid folded from the UUID when the
 * image has one), so it cannot wait on the device; stat(2) of the mount point reads the root
 * inode, which stays in memory while mounted, whose mtime is the image's build time unless the
 * root carries its own. The same values are computed from the superblock and root inode of the
 * blob a record now resolves to; a moved tag shows up as a difference.
 */
import {
  checkErofsSuperblock,
  EROFS_SUPER_END,
  EROFS_SUPER_MAGIC,
  EROFS_SUPER_OFFSET,
} from "../erofs/superblock.ts";
import { statFs } from "../../ffi/files.ts";
import { readMountInfo } from "../sys/mountinfo.ts";
import type { StoredErofsIdentity } from "../state/mount_spec.ts";

/** The superblock facts statfs exposes. */
export interface ErofsIdentity {
  blockSizeBytes: number;
  blocks: bigint;
  inodes: bigint;
  /**
   * The UUID folded to 64 bits (linux/statfs.h uuid_to_fsid); undefined when the kernel reports
   * the device number instead (an image without UUID, or a kernel whose statfs does not use it).
   */
  fsid?: bigint;
  /**
   * Root directory mtime in ms: for a mount, what stat says; for an image, every value a kernel
   * may derive from its root inode (see rootMtimeCandidatesMs). Undefined when unknown.
   */
  rootMtimeMs?: number[];
}

/** Where the root inode of the image with this superblock starts, and how much to read. */
export function rootInodeRange(head: Uint8Array): { offset: number; length: number } {
  const sb = checkErofsSuperblock(head);
  // erofs_fs.h: inode `nid` is at meta_blkaddr * block size + nid * 32; extended ones are 64.
  return { offset: sb.metaBlockAddress * sb.blockSizeBytes + sb.rootNid * 32, length: 64 };
}

/**
 * The root mtime (ms) a kernel reports for this root inode. A compact inode has no full mtime:
 * older kernels (6.1) report the superblock build time, newer ones (6.12+) add the inode's
 * 32-bit relative mtime to it; an extended inode carries its own.
 */
function rootMtimeCandidatesMs(head: Uint8Array, inode: Uint8Array): number[] {
  const sb = checkErofsSuperblock(head);
  const sbView = new DataView(head.buffer, head.byteOffset + EROFS_SUPER_OFFSET);
  const ms = (seconds: bigint, nanoseconds: number) =>
    Number(seconds) * 1000 + Math.floor(nanoseconds / 1e6);
  if (inode.length < 32) return [];
  const view = new DataView(inode.buffer, inode.byteOffset, inode.byteLength);
  const extended = (view.getUint16(0, true) & 1) === 1;
  if (extended) {
    if (inode.length < 64) return [];
    return [ms(view.getBigUint64(32, true), view.getUint32(40, true))];
  }
  const base = ms(sb.buildTime, sbView.getUint32(32, true));
  return [base, base + view.getUint32(12, true) * 1000];
}

const U64_MAX = (1n << 64n) - 1n;

/**
 * The identity a kernel will report for an image with this superblock (`head` ≥ 1152 bytes)
 * and root inode (the bytes at rootInodeRange, if read).
 */
export function identityOfImage(
  head: Uint8Array,
  what: string,
  rootInode?: Uint8Array,
): ErofsIdentity {
  const sb = checkErofsSuperblock(head, what);
  const view = new DataView(head.buffer, head.byteOffset + EROFS_SUPER_OFFSET);
  // 48bit images keep the high 16 bits of the block count at offset 14 (erofs_fs.h blocks_hi).
  const blocksHigh = (sb.featureIncompat & 0x80) ? BigInt(view.getUint16(14, true)) : 0n;
  // uuid_to_fsid: le64(uuid[0..8]) ^ le64(uuid[8..16]).
  const fsid = view.getBigUint64(48, true) ^ view.getBigUint64(56, true);
  return {
    blockSizeBytes: sb.blockSizeBytes,
    blocks: (blocksHigh << 32n) | BigInt(sb.blocks),
    inodes: sb.inodes,
    fsid,
    rootMtimeMs: rootInode ? rootMtimeCandidatesMs(head, rootInode) : undefined,
  };
}

/**
 * identityOfImage of the image `read` serves (`sizeBytes` long): its head (`head`, when read
 * already), then its root inode when it lies inside the image.
 */
export async function readImageIdentity(
  read: (offset: number, length: number) => Promise<Uint8Array>,
  sizeBytes: number,
  what: string,
  head?: Uint8Array,
): Promise<ErofsIdentity> {
  head ??= await read(0, EROFS_SUPER_END);
  const root = rootInodeRange(head);
  const rootInode = root.offset + root.length <= sizeBytes
    ? await read(root.offset, root.length)
    : undefined;
  return identityOfImage(head, what, rootInode);
}

/**
 * Where the EROFS on block device `source` (`/dev/nbd3`) is mounted and what statfs says of it;
 * undefined when it is mounted nowhere in this namespace.
 */
export function mountedIdentity(
  source: string,
): { mountPoint: string; identity: ErofsIdentity } | undefined {
  const mounts = readMountInfo();
  for (const entry of mounts) {
    if (entry.source !== source || entry.fsType !== "erofs") continue;
    // statfs goes by path: only the topmost mount there is the one asked about.
    if (mounts.findLast((m) => m.mountPoint === entry.mountPoint) !== entry) continue;
    const stats = statFs(entry.mountPoint);
    if (stats.type !== EROFS_SUPER_MAGIC) continue;
    // huge_encode_dev (linux/kdev_t.h), what erofs_statfs reports when it does not use the UUID.
    const deviceFsid = BigInt(
      (entry.minor & 0xff) | (entry.major << 8) | ((entry.minor & ~0xff) << 12),
    );
    return {
      mountPoint: entry.mountPoint,
      identity: {
        blockSizeBytes: stats.blockSizeBytes,
        blocks: stats.blocks,
        // erofs_statfs reports f_ffree = ULLONG_MAX - inos.
        inodes: U64_MAX - stats.freeFiles,
        fsid: stats.fsid === deviceFsid ? undefined : stats.fsid,
        rootMtimeMs: rootMtime(entry.mountPoint),
      },
    };
  }
  return undefined;
}

/** stat of a mount root: its inode is in memory while mounted, so no device read happens. */
function rootMtime(mountPoint: string): number[] | undefined {
  try {
    const mtime = Deno.statSync(mountPoint).mtime?.getTime();
    return mtime === undefined ? undefined : [mtime];
  } catch {
    return undefined;
  }
}

/** The fields in which two identities differ, e.g. `["UUID", "blocks 342 → 290"]`. */
export function identityDifferences(mounted: ErofsIdentity, image: ErofsIdentity): string[] {
  const out: string[] = [];
  // Without the mounted UUID, the other fields are all that can be compared.
  if (mounted.fsid !== undefined && mounted.fsid !== image.fsid) out.push("UUID");
  if (mounted.blockSizeBytes !== image.blockSizeBytes) {
    out.push(`block size ${mounted.blockSizeBytes} → ${image.blockSizeBytes}`);
  }
  if (mounted.blocks !== image.blocks) out.push(`blocks ${mounted.blocks} → ${image.blocks}`);
  if (mounted.inodes !== image.inodes) out.push(`inodes ${mounted.inodes} → ${image.inodes}`);
  const [mountedMtime] = mounted.rootMtimeMs ?? [];
  if (mountedMtime !== undefined && image.rootMtimeMs?.length) {
    if (!image.rootMtimeMs.includes(mountedMtime)) out.push("build time");
  }
  return out;
}

/** `identity` for a JSON record (spec, recovery file). */
export function storedIdentity(identity: ErofsIdentity): StoredErofsIdentity {
  return {
    blockSizeBytes: identity.blockSizeBytes,
    blocks: String(identity.blocks),
    inodes: String(identity.inodes),
    ...(identity.fsid === undefined ? {} : { fsid: String(identity.fsid) }),
    ...(identity.rootMtimeMs ? { rootMtimeMs: identity.rootMtimeMs } : {}),
  };
}

/** storedIdentity's inverse; undefined for a value of another shape. */
export function parseStoredIdentity(stored: StoredErofsIdentity): ErofsIdentity | undefined {
  try {
    return {
      blockSizeBytes: stored.blockSizeBytes,
      blocks: BigInt(stored.blocks),
      inodes: BigInt(stored.inodes),
      fsid: stored.fsid === undefined ? undefined : BigInt(stored.fsid),
      rootMtimeMs: stored.rootMtimeMs,
    };
  } catch {
    return undefined;
  }
}
