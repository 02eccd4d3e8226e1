/**
 * The disk cache refuses a directory on a file system shared between hosts (its WRITTEN marks
 * and OFD locks hold only within one host) and still opens on a local one.
 */
import assert from "node:assert/strict";
import { DiskCache } from "../lib/source/disk_cache.ts";
import { sharedFileSystemName } from "../lib/source/disk_cache_fs.ts";
import { statFs } from "../ffi/files.ts";

const NFS_SUPER_MAGIC = 0x6969;

Deno.test("sharedFileSystemName: network and cluster file systems by their statfs magic", () => {
  const expected: [number, string][] = [
    [0x6969, "nfs"],
    [0x517b, "smb"],
    [0xff534d42, "cifs"],
    [0xfe534d42, "smb2"],
    [0x01021997, "v9fs"],
    [0x00c36400, "ceph"],
    [0x5346414f, "afs"],
    [0x6b414653, "k-afs"],
    [0x73757245, "coda"],
    [0x01161970, "gfs/gfs2"],
    [0x7461636f, "ocfs2"],
    [0x0bd00bd0, "lustre"],
    [0x47504653, "gpfs"],
    [0x19830326, "fhgfs"],
    [0xaad7aaea, "panfs"],
  ];
  for (const [magic, name] of expected) {
    assert.equal(sharedFileSystemName(magic), name, `0x${magic.toString(16)}`);
  }
});

Deno.test("sharedFileSystemName: local, in-memory, FUSE and unknown file systems are not shared", () => {
  const notShared: [number, string][] = [
    [0xef53, "ext2/3/4"],
    [0x01021994, "tmpfs"],
    [0x58465342, "xfs"],
    [0x9123683e, "btrfs"],
    [0xf2f52010, "f2fs"],
    [0x794c7630, "overlayfs"],
    [0x65735546, "fuse"],
    [0, "zero"],
    [-1, "statfs failed"],
  ];
  for (const [magic, what] of notShared) {
    assert.equal(sharedFileSystemName(magic), undefined, what);
  }
});

Deno.test("DiskCache.open: a local temp directory opens without a warning", () => {
  const parent = Deno.makeTempDirSync({ prefix: "erofs-oci-disk-cache-fs-" });
  try {
    const dir = `${parent}/cache`;
    // The test proves nothing if the temp directory itself is on a shared file system.
    const type = statFs(parent).type;
    assert.equal(sharedFileSystemName(type), undefined, `temp dir on 0x${type.toString(16)}`);
    const cache = DiskCache.open({ dir, onWarning: (message) => assert.fail(message) });
    assert.ok(cache, "open returned undefined");
    assert.equal(cache.dir, dir);
    assert.ok(Deno.statSync(`${dir}/blobs`).isDirectory);
  } finally {
    Deno.removeSync(parent, { recursive: true });
  }
});

Deno.test("DiskCache.open: a directory on NFS is refused with one warning, memory cache only", () => {
  const parent = Deno.makeTempDirSync({ prefix: "erofs-oci-disk-cache-fs-" });
  try {
    const dir = `${parent}/cache`;
    const warnings: string[] = [];
    const asked: string[] = [];
    const cache = DiskCache.open({
      dir,
      onWarning: (message) => warnings.push(message),
      fileSystemType: (path) => {
        asked.push(path);
        return NFS_SUPER_MAGIC;
      },
    });
    assert.equal(cache, undefined);
    assert.deepEqual(asked, [dir]);
    assert.equal(warnings.length, 1, warnings.join("\n"));
    const [warning] = warnings;
    assert.ok(warning.startsWith(`disk cache ${dir} unusable (on nfs: `), warning);
    assert.ok(warning.includes("EROFS_OCI_CACHE_DIR"), warning);
    assert.ok(warning.endsWith("; keeping the memory cache only"), warning);
    // Refused before anything of the cache is made there.
    assert.throws(() => Deno.statSync(`${dir}/blobs`), Deno.errors.NotFound);
  } finally {
    Deno.removeSync(parent, { recursive: true });
  }
});

Deno.test("DiskCache.open: a failing statfs does not refuse the cache by itself", () => {
  const parent = Deno.makeTempDirSync({ prefix: "erofs-oci-disk-cache-fs-" });
  try {
    const cache = DiskCache.open({
      dir: `${parent}/cache`,
      onWarning: (message) => assert.fail(message),
      fileSystemType: () => {
        throw new Error("statfs: EIO");
      },
    });
    assert.ok(cache, "open returned undefined");
  } finally {
    Deno.removeSync(parent, { recursive: true });
  }
});
