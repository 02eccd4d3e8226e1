/**
 * Helpers for builder tests: a full-precision listing of a tree (nanosecond mtimes, rdev,
 * xattrs of every namespace, sha256 of contents), fsck.erofs of an image, and loop and overlay
 * mounts that are always undone.
 */
import assert from "node:assert/strict";
import { PEER_BIN } from "./requires.ts";
import { OVERLAY_HARDENING } from "../../lib/mount/overlay.ts";

/** `path type mode uid:gid nlink mtime_ns size data xattrs`, one line per entry, sorted. */
const LISTING_PY = String.raw`
import hashlib, os, stat, sys
root = sys.argv[1]
hash_limit = int(sys.argv[2]) if len(sys.argv) > 2 else -1
paths = ["."]
for dp, dns, fns in os.walk(root):
    rel = os.path.relpath(dp, root)
    for n in dns + fns:
        paths.append(n if rel == "." else rel + "/" + n)
for p in sorted(paths):
    full = os.path.join(root, p)
    st = os.lstat(full)
    m = st.st_mode
    t = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFCHR: "c",
         stat.S_IFBLK: "b", stat.S_IFIFO: "p", stat.S_IFSOCK: "s"}[stat.S_IFMT(m)]
    size, data = "-", "-"
    if t == "f" and 0 <= hash_limit < st.st_size:
        size, data = str(st.st_size), "(not hashed)"
    elif t == "f":
        h = hashlib.sha256()
        with open(full, "rb") as f:
            for blk in iter(lambda: f.read(1 << 20), b""):
                h.update(blk)
        size, data = str(st.st_size), h.hexdigest()
    elif t == "l":
        size, data = str(st.st_size), os.readlink(full)
    elif t in "cb":
        data = "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))
    try:
        names = sorted(os.listxattr(full, follow_symlinks=False))
    except OSError:
        names = []
    xs = ";".join("%s=%r" % (n, os.getxattr(full, n, follow_symlinks=False)) for n in names) or "-"
    print("\t".join([p, t, "%04o" % stat.S_IMODE(m), "%d:%d" % (st.st_uid, st.st_gid),
                     str(st.st_nlink), str(st.st_mtime_ns), size, data, xs]))
`;

export async function run(
  cmd: string,
  args: string[],
  options: { stdin?: Uint8Array } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = new Deno.Command(cmd, {
    args,
    stdin: options.stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (options.stdin) {
    const writer = child.stdin.getWriter();
    await writer.write(options.stdin);
    await writer.close();
  }
  const out = await child.output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
}

export async function runOk(cmd: string, args: string[]): Promise<string> {
  const out = await run(cmd, args);
  assert.equal(out.code, 0, `${cmd} ${args.join(" ")}: ${out.stderr}`);
  return out.stdout;
}

/**
 * The listing of a tree. Files over `hashUpToBytes` (when given) are listed with their size but
 * not hashed (a sparse file of 4 GiB takes minutes to read in the VM); check their bytes apart.
 */
export async function treeListing(
  dir: string,
  options: { hashUpToBytes?: number } = {},
): Promise<string[]> {
  const limit = options.hashUpToBytes === undefined ? [] : [String(options.hashUpToBytes)];
  return (await runOk("python3", ["-c", LISTING_PY, dir, ...limit])).trimEnd().split("\n");
}

/** fsck.erofs 1.9.3 must accept the image (and extract it, which reads every byte). */
export async function fsckImage(image: string, extractTo?: string): Promise<void> {
  const args = extractTo ? [`--extract=${extractTo}`, image] : [image];
  const out = await run(`${PEER_BIN}/fsck.erofs`, args);
  assert.equal(out.code, 0, `fsck.erofs ${args.join(" ")}: ${out.stdout}${out.stderr}`);
  // And the fsck.erofs most hosts have (Debian 12's erofs-utils 1.5, installed by setup.sh): it
  // took an image whose last inode ends at its very end for a corrupted one.
  if (!extractTo && HOST_FSCK_VERSION) {
    const host = await run("fsck.erofs", [image]);
    assert.equal(
      host.code,
      0,
      `fsck.erofs ${HOST_FSCK_VERSION} ${image}: ${host.stdout}${host.stderr}`,
    );
  }
}

/** The host's fsck.erofs version ("1.5"), when it has one that reads 4 KiB-block images. */
const HOST_FSCK_VERSION = (() => {
  try {
    const out = new Deno.Command("fsck.erofs", { args: ["-V"], stdout: "piped", stderr: "piped" })
      .outputSync();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    return /fsck\.erofs (\d+\.\d+)/.exec(text)?.[1];
  } catch {
    return undefined; // not installed: the peer's check above is the one that counts
  }
})();

/** Mounts `image` read-only (loop) on a fresh directory, runs `use`, always unmounts. */
export async function withMountedImage<T>(
  image: string,
  use: (dir: string) => Promise<T>,
  options = "ro,loop",
): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-build-mnt-" });
  try {
    await runOk("mount", ["-t", "erofs", "-o", options, image, dir]);
    try {
      return await use(dir);
    } finally {
      const out = await run("umount", [dir]);
      if (out.code !== 0) await run("umount", ["-l", dir]);
    }
  } finally {
    await Deno.remove(dir).catch(() => {});
  }
}

/**
 * Mounts a read-only overlay of `lowerTopFirst` (top layer first) on `merged`, which it creates,
 * with the options `mount` uses, runs `use`, always unmounts (lazily when busy).
 */
export async function withOverlayMount<T>(
  lowerTopFirst: string[],
  merged: string,
  use: (merged: string) => Promise<T>,
): Promise<T> {
  Deno.mkdirSync(merged);
  await runOk("mount", [
    "-t",
    "overlay",
    "overlay",
    "-o",
    `ro,lowerdir=${lowerTopFirst.join(":")}${OVERLAY_HARDENING}`,
    merged,
  ]);
  try {
    return await use(merged);
  } finally {
    const out = await run("umount", [merged]);
    if (out.code !== 0) await run("umount", ["-l", merged]);
  }
}

/**
 * WORK/src/sparse, a sparse file of `sizeBytes` holding `data` at `offset`, archived by GNU tar
 * (--sparse, pax) as WORK/sparse.tar; returns WORK/src.
 */
export async function sparseTar(
  work: string,
  sizeBytes: number,
  offset: number,
  data: Uint8Array,
): Promise<string> {
  const src = `${work}/src`;
  Deno.mkdirSync(src);
  {
    using f = Deno.openSync(`${src}/sparse`, { write: true, create: true });
    f.truncateSync(sizeBytes);
    f.seekSync(offset, Deno.SeekMode.Start);
    f.writeSync(data);
  }
  await runOk("tar", [
    "-C",
    src,
    "--sparse",
    "--format=posix",
    "-cf",
    `${work}/sparse.tar`,
    "sparse",
  ]);
  return src;
}

/** A CLI failure prints one `erofs-oci: …` line, optionally followed by one `  hint: …` line. */
export function assertOneLineError(stderr: string): void {
  const lines = stderr.trimEnd().split("\n");
  assert.match(lines[0], /^erofs-oci: /, stderr);
  assert.ok(
    lines.length === 1 || (lines.length === 2 && lines[1].startsWith("  hint: ")),
    `more than one error line:\n${stderr}`,
  );
}

/**
 * `files` files (`file0`…) of `fileBytes` random bytes each in an uncompressed image made by
 * mkfs.erofs 1.9.3 in `dir`; returns the image and where each file's data starts in it.
 */
export async function randomFilesImage(dir: string, files: number, fileBytes: number) {
  const tree = `${dir}/tree`;
  Deno.mkdirSync(tree);
  const contents: Uint8Array[] = [];
  for (let i = 0; i < files; i++) {
    const bytes = new Uint8Array(fileBytes);
    for (let off = 0; off < bytes.length; off += 65536) {
      crypto.getRandomValues(bytes.subarray(off, off + 65536));
    }
    Deno.writeFileSync(`${tree}/file${i}`, bytes);
    contents.push(bytes);
  }
  const out = await new Deno.Command(`${PEER_BIN}/mkfs.erofs`, {
    args: ["--quiet", `${dir}/image.erofs`, tree],
  }).output();
  assert(out.success, new TextDecoder().decode(out.stderr));
  const image = Deno.readFileSync(`${dir}/image.erofs`);
  const offsets = contents.map((c) => blockOffsetOf(image, c.subarray(0, 64)));
  offsets.forEach((o, i) => assert(o > 0, `file${i} stored contiguously`));
  return { image, offsets };
}

/** Where `needle` starts in `haystack`, looking at 512-byte boundaries only; -1 if nowhere. */
function blockOffsetOf(haystack: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= haystack.length; i += 512) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}
