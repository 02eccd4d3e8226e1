/**
 * Tar reader tests: a real source tree on disk, its expected description (from Python's
 * os.lstat, independent of our code), and a comparison of what `readTar` yields for archives
 * that real producers (GNU tar, Python tarfile, busybox) made from it.
 */
import { deepEqual, equal, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import { dataExtents, type TarEntry } from "../../lib/tar/entry.ts";
import { readTar, type TarReaderOptions } from "../../lib/tar/reader.ts";
import { runTool } from "./tool.ts";

export interface TreeOptions {
  /** fifo, char and block devices (needs root). */
  devices?: boolean;
  /** user.* xattrs including binary values. */
  xattrs?: boolean;
  /** Names past 100 and 255 bytes, a long symlink target. */
  longNames?: boolean;
  /** A file with holes. */
  sparse?: boolean;
  /** uid/gid and mtimes outside the octal ranges (base-256 / pax). */
  bigNumbers?: boolean;
}

const sh = (script: string, cwd: string) => runTool("sh", ["-ec", `cd '${cwd}'\n${script}`]);

/** Builds a tree under `dir` with every kind the options allow; returns nothing, `describeTree` tells. */
export async function makeSourceTree(dir: string, o: TreeOptions = {}): Promise<void> {
  await sh(
    `
mkdir -p d/sub empty sticky
chmod 700 d/sub; chmod 1777 sticky
: > zero
printf x > one
head -c 511 /dev/urandom > b511; head -c 512 /dev/urandom > b512; head -c 513 /dev/urandom > b513
head -c 1048577 /dev/urandom > d/big
printf 'hi\\n' > d/a; ln d/a d/hard; ln d/a hard-top
cp d/a setuid; chmod 4755 setuid; cp d/a setgid; chmod 2711 setgid
ln -s ../x d/rel; ln -s /etc/passwd abs; ln -s nowhere dangling
printf u > 'ünïcødé 名前 sp'
chown 1234:5678 one
touch -d '2021-03-04 05:06:07.123456789' one d/a
`,
    dir,
  );
  if (o.devices) await sh(`mkfifo fifo; mknod chr c 1 3; mknod blk b 7 200`, dir);
  if (o.xattrs) {
    await sh(
      `setfattr -n user.plain -v bar d/big
setfattr -n user.bin -v 0x000a0bff0d d/big
setfattr -n user.dirattr -v yes d/sub`,
      dir,
    );
  }
  if (o.longNames) {
    const a = "n".repeat(120);
    const b = "m".repeat(140);
    await sh(
      `mkdir -p ${a}/${b}
printf long > ${a}/${b}/${"f".repeat(200)}
ln -s ${"t".repeat(150)} ${a}/longlink
ln ${a}/${b}/${"f".repeat(200)} ${a}/hl`,
      dir,
    );
  }
  if (o.sparse) {
    await sh(
      `truncate -s 8M sparse
printf first | dd of=sparse bs=1 seek=1048576 conv=notrunc status=none
printf second | dd of=sparse bs=1 seek=5242880 conv=notrunc status=none`,
      dir,
    );
  }
  if (o.bigNumbers) {
    await sh(
      `printf big > bigids; chown 3000000:3000001 bigids
printf old > old; touch -d '1960-01-01 00:00:00 UTC' old
printf future > future; touch -d '2300-01-01 00:00:00 UTC' future`,
      dir,
    );
  }
}

export interface ExpectedNode {
  kind: string;
  mode: number;
  uid: number;
  gid: number;
  mtimeSec: number;
  mtimeNsec: number;
  size: number;
  sha256: string;
  linkname: string;
  devMajor: number;
  devMinor: number;
  ino: number;
  xattrs: Record<string, string>;
}

const DESCRIBE_PY = `
import os, sys, json, stat, hashlib
root = sys.argv[1]
out = {}
def one(path, rel):
    st = os.lstat(path)
    m = st.st_mode
    kind = ("dir" if stat.S_ISDIR(m) else "file" if stat.S_ISREG(m) else "symlink" if stat.S_ISLNK(m)
            else "char" if stat.S_ISCHR(m) else "block" if stat.S_ISBLK(m) else "fifo" if stat.S_ISFIFO(m) else "?")
    h = ""
    if kind == "file":
        d = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""): d.update(chunk)
        h = d.hexdigest()
    xa = {}
    if kind != "symlink":
        for n in os.listxattr(path, follow_symlinks=False):
            if n.startswith("user."): xa[n] = os.getxattr(path, n, follow_symlinks=False).hex()
    out[rel] = dict(kind=kind, mode=stat.S_IMODE(m), uid=st.st_uid, gid=st.st_gid,
        mtimeSec=st.st_mtime_ns // 10**9, mtimeNsec=st.st_mtime_ns % 10**9,
        size=st.st_size if kind == "file" else 0, sha256=h,
        linkname=os.readlink(path) if kind == "symlink" else "",
        devMajor=os.major(st.st_rdev) if kind in ("char", "block") else 0,
        devMinor=os.minor(st.st_rdev) if kind in ("char", "block") else 0,
        ino=st.st_ino, xattrs=xa)
one(root, "")
for dirpath, dirs, files in os.walk(root):
    for n in dirs + files:
        p = os.path.join(dirpath, n)
        one(p, os.path.relpath(p, root))
json.dump(out, sys.stdout)
`;

/** Describes every path under `dir` with Python's os.lstat (an oracle independent of us). */
export async function describeTree(dir: string): Promise<Map<string, ExpectedNode>> {
  const json = await runTool("python3", ["-c", DESCRIBE_PY, dir], 60_000);
  return new Map(Object.entries(JSON.parse(json) as Record<string, ExpectedNode>));
}

export interface ReadResult {
  entry: TarEntry;
  /** sha256 of the logical file content (holes expanded), "" for non-files. */
  sha256: string;
}

/**
 * Reads `tarPath` with `readTar`, hashing each file's data, and checks that the data really
 * sits at `dataOffset`/`dataExtents` in the archive (what a tar index will point at).
 */
export async function readArchive(
  tarPath: string,
  options?: TarReaderOptions,
): Promise<ReadResult[]> {
  const results: ReadResult[] = [];
  using file = await Deno.open(tarPath);
  using raw = await Deno.open(tarPath);
  for await (const entry of readTar(file.readable, options)) {
    let sha256 = "";
    if (entry.kind === "file") {
      const hash = createHash("sha256");
      const stored = createHash("sha256");
      const runs = entry.sparse ?? [{ offset: 0, length: entry.size }];
      const reader = entry.body.getReader();
      let pos = 0;
      let pending: Uint8Array = new Uint8Array();
      for (const run of runs) {
        for (; pos < run.offset; pos += Math.min(65536, run.offset - pos)) {
          hash.update(new Uint8Array(Math.min(65536, run.offset - pos)));
        }
        let left = run.length;
        while (left > 0) {
          if (pending.length === 0) {
            const { value, done } = await reader.read();
            ok(!done, `${entry.path}: body ended early`);
            pending = value;
          }
          const n = Math.min(left, pending.length);
          hash.update(pending.subarray(0, n));
          stored.update(pending.subarray(0, n));
          pending = pending.subarray(n);
          left -= n;
          pos += n;
        }
      }
      ok(pending.length === 0 && (await reader.read()).done, `${entry.path}: body too long`);
      for (; pos < entry.size; pos += Math.min(65536, entry.size - pos)) {
        hash.update(new Uint8Array(Math.min(65536, entry.size - pos)));
      }
      sha256 = hash.digest("hex");
      // The same bytes, read straight from the archive at the advertised offsets.
      const direct = createHash("sha256");
      for (const extent of dataExtents(entry)) {
        const buf = new Uint8Array(extent.length);
        await raw.seek(extent.tarOffset, Deno.SeekMode.Start);
        let got = 0;
        while (got < buf.length) got += (await raw.read(buf.subarray(got)))!;
        direct.update(buf);
      }
      equal(direct.digest("hex"), stored.digest("hex"), `${entry.path}: data not at dataOffset`);
      equal(entry.dataOffset % 512, 0, `${entry.path}: dataOffset not block-aligned`);
    }
    results.push({ entry, sha256 });
  }
  return results;
}

export interface CompareOptions {
  /** Producer stores sub-second mtimes (pax). */
  nsec?: boolean;
  xattrs?: boolean;
  /** Paths the producer leaves out (e.g. the root "."). */
  skip?: (path: string) => boolean;
}

/** Every archive member matches the source tree and every source path is in the archive. */
export function compareWithTree(
  results: ReadResult[],
  expected: Map<string, ExpectedNode>,
  o: CompareOptions = {},
): void {
  const seen = new Set<string>();
  for (const { entry, sha256 } of results) {
    const want = expected.get(entry.path);
    ok(want, `unexpected member "${entry.path}"`);
    seen.add(entry.path);
    const at = `member "${entry.path}"`;
    if (entry.kind === "hardlink") {
      equal(want.kind, "file", at);
      const target = expected.get(entry.linkname);
      ok(target && seen.has(entry.linkname), `${at}: link target "${entry.linkname}"`);
      equal(target.ino, want.ino, `${at}: links to another inode`);
    } else {
      equal(entry.kind, want.kind, `${at}: kind`);
    }
    equal(entry.mode, want.mode, `${at}: mode`);
    equal(entry.uid, want.uid, `${at}: uid`);
    equal(entry.gid, want.gid, `${at}: gid`);
    equal(entry.mtimeSec, want.mtimeSec, `${at}: mtime`);
    if (o.nsec) equal(entry.mtimeNsec, want.mtimeNsec, `${at}: mtime ns`);
    if (entry.kind === "file") {
      equal(entry.size, want.size, `${at}: size`);
      equal(sha256, want.sha256, `${at}: data`);
    }
    if (entry.kind === "symlink") equal(entry.linkname, want.linkname, `${at}: target`);
    if (entry.kind === "char" || entry.kind === "block") {
      deepEqual([entry.devMajor, entry.devMinor], [want.devMajor, want.devMinor], `${at}: dev`);
    }
    if (o.xattrs && entry.kind !== "hardlink") {
      const got = Object.fromEntries(
        [...entry.xattrs].filter(([k]) => k.startsWith("user.")).map((
          [k, v],
        ) => [k, Array.from(v, (b) => b.toString(16).padStart(2, "0")).join("")]),
      );
      deepEqual(got, want.xattrs, `${at}: xattrs`);
    }
  }
  const missing = [...expected.keys()].filter((p) => !seen.has(p) && !o.skip?.(p));
  deepEqual(missing, [], "source paths missing from the archive");
}
