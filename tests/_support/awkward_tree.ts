/**
 * The "awkward" source tree of the directory-builder tests (host: tests/build_dir_test.ts, VM:
 * tests/vm/build_vm_test.ts): every inode type, 255-byte names, a long and a dangling symlink,
 * hard links across directories, a multi-block directory with names around the sort positions
 * of "." and "..", shared and inline xattrs, ns mtimes, ids over 16 bits, setuid and sticky
 * bits, an overlayfs whiteout; optionally a sparse file over 4 GiB.
 */
import { runOk } from "./erofs_tree.ts";

/** Size of the sparse file: over 4 GiB, so it needs an extended inode (64-bit size). */
export const BIG_SPARSE_BYTES = 4 * 1024 ** 3 + 12345;
/** What `bigSparseMarks` reads from an intact copy of the sparse file. */
export const BIG_SPARSE_MARKS = ["start\0", "\0\0past 4 GiB\0\0"];

export interface AwkwardTreeOptions {
  /**
   * Namespace of the xattrs that are not tied to one (the shared pair and the 3,000-byte one):
   * "user" where the file system keeps user.* (the host's), "trusted" on the VM's tmpfs
   * (Debian 6.1 keeps trusted.* and security.* there but not user.*).
   */
  xattrNamespace: "user" | "trusted";
  /** Also the file over 4 GiB (not for a push: its image would be uploaded whole). */
  bigSparse: boolean;
}

export async function makeAwkwardTree(src: string, options: AwkwardTreeOptions): Promise<void> {
  const ns = options.xattrNamespace;
  Deno.mkdirSync(`${src}/empty-dir`, { recursive: true });
  Deno.writeFileSync(`${src}/empty-file`, new Uint8Array());
  Deno.writeTextFileSync(`${src}/${"n".repeat(255)}`, "long name");
  Deno.mkdirSync(`${src}/${"d".repeat(255)}`);
  await runOk("mknod", [`${src}/char`, "c", "1", "3"]);
  await runOk("mknod", [`${src}/block`, "b", "259", "1048575"]);
  // The overlayfs form of a whiteout: a 0/0 character device.
  await runOk("mknod", [`${src}/whiteout`, "c", "0", "0"]);
  await runOk("mkfifo", [`${src}/fifo`]);
  await runOk("python3", [
    "-c",
    `import socket; socket.socket(socket.AF_UNIX).bind("${src}/sock")`,
  ]);
  Deno.writeFileSync(`${src}/linked`, crypto.getRandomValues(new Uint8Array(9000)));
  Deno.linkSync(`${src}/linked`, `${src}/hardlink`);
  Deno.linkSync(`${src}/linked`, `${src}/${"d".repeat(255)}/hardlink2`);
  Deno.symlinkSync("x".repeat(4000), `${src}/long-symlink`);
  Deno.symlinkSync("/dangling/absolute", `${src}/dangling`);
  // 3 blocks of directory entries, names around the sort positions of "." and "..".
  Deno.mkdirSync(`${src}/many`);
  for (let i = 0; i < 600; i++) {
    Deno.writeTextFileSync(`${src}/many/f-${i}-${"z".repeat(i % 40)}`, `${i}`.repeat(i));
  }
  for (const name of ["!", "-", ".a", "..b", "~"]) {
    Deno.writeTextFileSync(`${src}/many/${name}`, name);
  }
  for (let i = 0; i < 4; i++) {
    const f = `${src}/x${i}`;
    Deno.writeTextFileSync(f, "x".repeat(i * 3000));
    // The same pair on several files goes to the shared area; the others stay inline.
    await runOk("setfattr", ["-n", `${ns}.shared`, "-v", "same-value", f]);
    await runOk("setfattr", ["-n", "trusted.own", "-v", `v${i}`, f]);
    await runOk("setfattr", [
      "-n",
      "security.capability",
      "-v",
      "0sAQAAAgAgAAAAAAAAAAAAAAAAAAA=",
      f,
    ]);
  }
  await runOk("setfattr", ["-n", "trusted.overlay.opaque", "-v", "y", `${src}/empty-dir`]);
  await runOk("setfattr", ["-n", `${ns}.big`, "-v", "v".repeat(3000), `${src}/many`]);
  await runOk("touch", ["-h", "-d", "2001-02-03 04:05:06.123456789", `${src}/dangling`]);
  await runOk("touch", ["-d", "1960-01-01 00:00:00.5", `${src}/empty-file`]);
  Deno.chownSync(`${src}/x1`, 100000, 200000);
  Deno.chmodSync(`${src}/x2`, 0o6755);
  Deno.chmodSync(`${src}/empty-dir`, 0o1777);
  if (options.bigSparse) writeBigSparseFile(`${src}/big.sparse`);
}

/** A sparse file of BIG_SPARSE_BYTES with a few bytes at its start and past 4 GiB. */
export function writeBigSparseFile(path: string): void {
  using big = Deno.openSync(path, { write: true, create: true });
  big.truncateSync(BIG_SPARSE_BYTES);
  big.writeSync(new TextEncoder().encode("start"));
  big.seekSync(2 ** 32 + 100, Deno.SeekMode.Start);
  big.writeSync(new TextEncoder().encode("past 4 GiB"));
}

/** The bytes of `writeBigSparseFile`'s file around its two written places (BIG_SPARSE_MARKS). */
export async function bigSparseMarks(path: string): Promise<string[]> {
  const at = async (skip: number, count: number) =>
    await runOk("dd", [`if=${path}`, "bs=1", `skip=${skip}`, `count=${count}`, "status=none"]);
  return [await at(0, 6), await at(2 ** 32 + 98, 14)];
}
