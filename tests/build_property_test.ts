/**
 * Property: for random trees (names with odd bytes and lengths, files of random sizes around
 * block boundaries, symlinks, nested dirs, hard links, modes, owners, ns mtimes, xattrs),
 * build → fsck.erofs → kernel mount shows exactly the source tree.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { command, path, PEER_BIN, requires, root } from "./_support/requires.ts";
import { fsckImage, runOk, treeListing, withMountedImage } from "./_support/erofs_tree.ts";
import { scanDirectory } from "../lib/erofs/writer/from_dir.ts";
import { buildImage } from "../lib/erofs/writer/build_image.ts";
import { scanTar } from "../lib/erofs/writer/from_tar.ts";
import { closeFd, O_RDWR } from "../ffi/libc.ts";
import { openFile } from "../ffi/files.ts";

const O_CREAT = 0o100;

const ignore = requires(root(), command("python3"), path(`${PEER_BIN}/fsck.erofs`, "fsck.erofs"));

type Spec =
  | { kind: "file"; size: number; seed: number }
  | { kind: "symlink"; target: string }
  | { kind: "dir"; children: [string, Spec][] }
  | { kind: "link"; to: number };

interface Attrs {
  mode: number;
  uid: number;
  gid: number;
  mtimeSec: number;
  mtimeNsec: number;
  xattr?: [string, string];
}

// By code point: split("") cut the emoji into two lone surrogates, which UTF-8 encodes alike
// (U+FFFD), so two names of one directory could be one file (EEXIST, seen in CI).
const nameChar = fc.constantFrom(...Array.from("ab.-_~!Zé😀 "), "\u00ff");
const name = fc.oneof(
  fc.array(nameChar, { minLength: 1, maxLength: 12 }).map((c) => c.join("")),
  fc.integer({ min: 200, max: 255 }).map((n) => "n".repeat(n)),
).filter((n) => n !== "." && n !== ".." && new TextEncoder().encode(n).length <= 255);
const size = fc.oneof(
  fc.constantFrom(0, 1, 255, 256, 257, 4095, 4096, 4097, 8192, 12289),
  fc.integer({ min: 0, max: 70000 }),
);
const attrs: fc.Arbitrary<Attrs> = fc.record({
  mode: fc.constantFrom(0o644, 0o755, 0o600, 0o4755, 0o1777, 0o000),
  uid: fc.constantFrom(0, 1000, 65535, 65536, 4000000),
  gid: fc.constantFrom(0, 100, 70000),
  mtimeSec: fc.constantFrom(0, 1700000000, 1700000001, 2000000000, -100),
  mtimeNsec: fc.constantFrom(0, 1, 999999999, 500000000),
  xattr: fc.option(
    fc.tuple(
      fc.constantFrom("user.a", "user.b", "trusted.t", "security.s"),
      fc.constantFrom("", "v", "x".repeat(300)),
    ),
    { nil: undefined },
  ),
});

const { tree } = fc.letrec((tie) => ({
  node: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    fc.record({ kind: fc.constant("file" as const), size, seed: fc.nat() }),
    fc.record({
      kind: fc.constant("symlink" as const),
      target: fc.oneof(name, fc.constant("/abs/t"), fc.constant("y".repeat(3000))),
    }),
    fc.record({ kind: fc.constant("link" as const), to: fc.nat() }),
    tie("tree"),
  ) as fc.Arbitrary<Spec>,
  tree: fc.record({
    kind: fc.constant("dir" as const),
    children: fc.uniqueArray(fc.tuple(name, tie("node") as fc.Arbitrary<Spec>), {
      maxLength: 8,
      selector: ([n]) => n,
    }),
  }),
}));

async function materialize(dir: string, spec: Spec & { kind: "dir" }, allAttrs: Attrs[]) {
  const files: string[] = [];
  const dirs: string[] = [];
  let i = 0;
  const walk = (at: string, d: Spec & { kind: "dir" }) => {
    for (const [n, child] of d.children) {
      const p = `${at}/${n}`;
      if (child.kind === "file") {
        const bytes = new Uint8Array(child.size);
        for (let k = 0; k < bytes.length; k++) bytes[k] = (child.seed + k * 31) & 0xff;
        Deno.writeFileSync(p, bytes);
        files.push(p);
      } else if (child.kind === "symlink") Deno.symlinkSync(child.target, p);
      else if (child.kind === "link") {
        if (files.length) Deno.linkSync(files[child.to % files.length], p);
        else Deno.writeTextFileSync(p, "");
      } else {
        Deno.mkdirSync(p);
        walk(p, child);
        dirs.push(p);
      }
    }
  };
  walk(dir, spec);
  for (const p of [...files, ...dirs]) {
    const a = allAttrs[i++ % allAttrs.length];
    const info = Deno.lstatSync(p);
    if (info.isSymlink) continue;
    Deno.chownSync(p, a.uid, a.gid);
    Deno.chmodSync(p, a.mode);
    if (a.xattr) {
      const cmd = new Deno.Command("setfattr", {
        args: ["-n", a.xattr[0], "-v", a.xattr[1] || '""', p],
      });
      await cmd.output();
    }
  }
  // Times last (children change their directory's mtime), deepest first.
  for (const p of [...files, ...dirs.reverse(), dir]) {
    const a = allAttrs[i++ % allAttrs.length];
    const stamp = `@${a.mtimeSec}.${String(a.mtimeNsec).padStart(9, "0")}`;
    await new Deno.Command("touch", { args: ["-h", "-d", stamp, p] }).output();
  }
}

Deno.test({
  name: "build property: random trees mount identical to their source",
  ignore,
  async fn() {
    const base = await Deno.makeTempDir({ prefix: "erofs-oci-build-prop-" });
    let run = 0;
    try {
      await fc.assert(
        fc.asyncProperty(
          tree,
          fc.array(attrs, { minLength: 1, maxLength: 6 }),
          fc.integer({ min: 0, max: 4096 }),
          async (spec, allAttrs, inlineMax) => {
            const work = `${base}/${run++}`;
            const src = `${work}/src`;
            Deno.mkdirSync(src, { recursive: true });
            try {
              await materialize(src, spec as Spec & { kind: "dir" }, allAttrs);
              const image = `${work}/img.erofs`;
              buildImage(scanDirectory(src).root, image, {
                buildTimeSec: 1700000000,
                inlineTailMaxBytes: inlineMax,
              });
              await fsckImage(image);
              const expected = await treeListing(src);
              const actual = await withMountedImage(image, (dir) => treeListing(dir));
              assert.deepEqual(actual, expected);
              // The same tree as a pax tar (GNU tar, xattrs, ns mtimes) through the tar path.
              const tar = `${work}/src.tar`;
              await runOk("tar", [
                "-C",
                src,
                "--format=posix",
                "--xattrs",
                "--xattrs-include=*",
                "--numeric-owner",
                "-cf",
                tar,
                ".",
              ]);
              const fromTar = `${work}/tar.erofs`;
              const spoolFd = openFile(`${work}/spool`, O_RDWR | O_CREAT, 0o600);
              try {
                const { root } = await scanTar((await Deno.open(tar)).readable, { spoolFd });
                buildImage(root, fromTar, {
                  buildTimeSec: 1700000000,
                  inlineTailMaxBytes: inlineMax,
                });
              } finally {
                closeFd(spoolFd);
              }
              await fsckImage(fromTar);
              assert.deepEqual(
                await withMountedImage(fromTar, (dir) => treeListing(dir)),
                expected,
              );
            } finally {
              await Deno.remove(work, { recursive: true });
            }
          },
        ),
        { numRuns: Number(Deno.env.get("BUILD_PROPERTY_RUNS") ?? 25), endOnFailure: true },
      );
    } finally {
      await Deno.remove(base, { recursive: true });
    }
  },
});
