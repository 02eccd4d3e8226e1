/**
 * The tar reader against archives made by real producers from a real tree: GNU tar in every
 * format it writes (pax with xattrs, GNU with L/K and base-256, ustar prefix split, v7, the
 * four sparse encodings), Python's tarfile (GNU and pax) and busybox tar. Each member is
 * compared with Python's os.lstat of the source and its data hash, and its data is checked to
 * sit at the advertised offset in the archive.
 */
import { equal, ok } from "node:assert/strict";
import { command, requires, root } from "./_support/requires.ts";
import { runTool } from "./_support/tool.ts";
import {
  compareWithTree,
  describeTree,
  makeSourceTree,
  readArchive,
  type TreeOptions,
} from "./_support/tar_tree.ts";

async function withTree(
  options: TreeOptions,
  fn: (src: string, work: string) => Promise<void>,
): Promise<void> {
  const work = await Deno.makeTempDir({ prefix: "tar-producers-" });
  try {
    const src = `${work}/src`;
    await Deno.mkdir(src);
    await makeSourceTree(src, options);
    await fn(src, work);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
}

const FULL: TreeOptions = {
  devices: true,
  xattrs: true,
  longNames: true,
  sparse: true,
  bigNumbers: true,
};

Deno.test({
  name: "GNU tar pax (--xattrs, long names, devices, sparse 1.0, big numbers, ns mtimes)",
  ignore: requires(command("tar"), command("python3"), command("setfattr"), root()),
  fn: () =>
    withTree(FULL, async (src, work) => {
      await runTool("tar", [
        "--format=posix",
        "--xattrs",
        "--xattrs-include=user.*",
        "--sparse",
        "-C",
        src,
        "-cf",
        `${work}/a.tar`,
        ".",
      ]);
      const results = await readArchive(`${work}/a.tar`);
      compareWithTree(results, await describeTree(src), { nsec: true, xattrs: true });
      const sparse = results.find((r) => r.entry.path === "sparse")!.entry;
      ok(sparse.sparse && sparse.sparse.length >= 2, "sparse map exposed");
      ok(sparse.storedSize < sparse.size / 100, "holes are not stored");
      const big = results.find((r) => r.entry.path === "d/big")!.entry;
      equal(new TextDecoder().decode(big.xattrs.get("user.plain")), "bar");
    }),
});

Deno.test({
  name: "GNU tar gnu format (L/K long names, base-256 ids and times, old GNU sparse 'S')",
  ignore: requires(command("tar"), command("python3"), root()),
  fn: () =>
    withTree({ ...FULL, xattrs: false }, async (src, work) => {
      await runTool("tar", ["--format=gnu", "--sparse", "-C", src, "-cf", `${work}/a.tar`, "."]);
      const results = await readArchive(`${work}/a.tar`);
      compareWithTree(results, await describeTree(src));
      ok(results.find((r) => r.entry.path === "sparse")!.entry.sparse, "old GNU sparse map");
    }),
});

for (const version of ["0.0", "0.1", "1.0"]) {
  Deno.test({
    name: `GNU tar pax sparse ${version}`,
    ignore: requires(command("tar"), command("python3")),
    fn: () =>
      withTree({ sparse: true }, async (src, work) => {
        await runTool("tar", [
          "--format=posix",
          `--sparse-version=${version}`,
          "--sparse",
          "-C",
          src,
          "-cf",
          `${work}/a.tar`,
          ".",
        ]);
        const results = await readArchive(`${work}/a.tar`);
        compareWithTree(results, await describeTree(src), { nsec: true });
        const entry = results.find((r) => r.entry.path === "sparse")!.entry;
        equal(entry.size, 8 << 20);
        ok(entry.sparse && entry.storedSize < 1 << 16, `${version}: sparse map`);
      }),
  });
}

Deno.test({
  name: "GNU tar ustar (prefix/name split) and v7",
  ignore: requires(command("tar"), command("python3")),
  fn: () =>
    withTree({}, async (src, work) => {
      // ustar can split a path up to 255 bytes at a "/" into prefix + name.
      const deep = `${"p".repeat(90)}/${"q".repeat(60)}`;
      await Deno.mkdir(`${src}/${deep}`, { recursive: true });
      await Deno.writeTextFile(`${src}/${deep}/${"r".repeat(90)}`, "split");
      await runTool("tar", ["--format=ustar", "-C", src, "-cf", `${work}/u.tar`, "."]);
      compareWithTree(await readArchive(`${work}/u.tar`), await describeTree(src));
      // v7 has no prefix field and no uname; keep its tree within 100-byte names.
      await Deno.remove(`${src}/${"p".repeat(90)}`, { recursive: true });
      await runTool("tar", ["--format=v7", "-C", src, "-cf", `${work}/v.tar`, "."]);
      compareWithTree(await readArchive(`${work}/v.tar`), await describeTree(src));
    }),
});

const PY_TARFILE = `
import sys, tarfile, os
fmt = {"gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}[sys.argv[3]]
with tarfile.open(sys.argv[2], "w", format=fmt) as t:
    def add(info):
        if sys.argv[3] == "pax" and not info.issym():
            for n in os.listxattr(os.path.join(sys.argv[1], info.name), follow_symlinks=False):
                if n.startswith("user."):
                    v = os.getxattr(os.path.join(sys.argv[1], info.name), n)
                    info.pax_headers["SCHILY.xattr." + n] = v.decode("utf-8", "surrogateescape")
        return info
    t.add(sys.argv[1], arcname=".", filter=add)
`;

for (const format of ["gnu", "pax"]) {
  Deno.test({
    name: `Python tarfile ${format} format`,
    ignore: requires(command("python3"), command("setfattr"), root()),
    fn: () =>
      withTree({ devices: true, longNames: true, bigNumbers: true, xattrs: true }, async (
        src,
        work,
      ) => {
        // Only xattrs Python can carry as text through its pax writer.
        await runTool("setfattr", ["-x", "user.bin", `${src}/d/big`]);
        await runTool("python3", ["-c", PY_TARFILE, src, `${work}/a.tar`, format]);
        compareWithTree(await readArchive(`${work}/a.tar`), await describeTree(src), {
          xattrs: format === "pax",
        });
      }),
  });
}

Deno.test({
  name: "busybox tar",
  ignore: requires(command("busybox"), command("python3"), root()),
  fn: () =>
    withTree({ devices: true, longNames: true }, async (src, work) => {
      await runTool("sh", ["-c", `cd '${src}' && busybox tar -cf '${work}/a.tar' .`]);
      compareWithTree(await readArchive(`${work}/a.tar`), await describeTree(src));
    }),
});
