/**
 * tar.gz made by other tools — GNU tar (-z, gnu and posix formats) and Python's tarfile (whose
 * gzip header carries FNAME and an mtime) — indexed with `erofs-oci index`, mounted lazily
 * (kernel EROFS over FUSE, [meta][tar] from the tar.gz through the zinfo) and compared with
 * what GNU tar extracts from the same archive.
 */
import assert from "node:assert/strict";
import { runCli } from "./_support/cli.ts";
import { manifest } from "./_support/fuse_stack.ts";
import { withIndexFilesMounted } from "./_support/index_mounts.ts";
import { patternBytes } from "./_support/memory_source.ts";
import { command, path, requires, root } from "./_support/requires.ts";

const ignore = requires(
  root(),
  path("/dev/fuse"),
  command("python3"),
  command("tar"),
  command("mount"),
);

async function run(program: string, args: string[], cwd?: string): Promise<void> {
  const out = await new Deno.Command(program, { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`${program} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/** A tree with the shapes tar encodes differently: long names, links, empty and big files. */
async function makeTree(dir: string): Promise<void> {
  await Deno.mkdir(`${dir}/a/b/c`, { recursive: true });
  await Deno.mkdir(`${dir}/empty`);
  await Deno.writeFile(`${dir}/zero.bin`, new Uint8Array());
  await Deno.writeFile(`${dir}/small.txt`, new TextEncoder().encode("hello\n"));
  await Deno.writeFile(`${dir}/a/random.bin`, patternBytes(3_000_001, 5));
  await Deno.writeFile(
    `${dir}/a/b/text.txt`,
    new TextEncoder().encode("lorem ipsum ".repeat(400_000)),
  );
  const long = "n".repeat(120);
  await Deno.writeFile(`${dir}/a/b/c/${long}.dat`, patternBytes(70_000, 9));
  await Deno.symlink("../small.txt", `${dir}/a/link`);
  await Deno.link(`${dir}/small.txt`, `${dir}/a/b/hard.txt`);
  await Deno.chmod(`${dir}/a/random.bin`, 0o600);
  for (const p of ["", "/a", "/a/b", "/a/b/c", "/empty"]) await Deno.chmod(`${dir}${p}`, 0o755);
  await run("touch", ["-h", "-d", "@1700000000", ...await allPaths(dir)]);
}

async function allPaths(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    const p = `${dir}/${entry.name}`;
    out.push(p);
    if (entry.isDirectory) out.push(...await allPaths(p));
  }
  return out;
}

const PRODUCERS: [string, (tree: string, out: string) => Promise<void>][] = [
  [
    "GNU tar -z (gnu format)",
    (tree, out) =>
      run("tar", ["-C", tree, "--format=gnu", "--sort=name", "--numeric-owner", "-czf", out, "."]),
  ],
  [
    "GNU tar -z (posix format)",
    (tree, out) =>
      run("tar", [
        "-C",
        tree,
        "--format=posix",
        "--sort=name",
        "--numeric-owner",
        "-czf",
        out,
        ".",
      ]),
  ],
  ["Python tarfile w:gz", (tree, out) =>
    run("python3", [
      "-c",
      "import sys,tarfile\nwith tarfile.open(sys.argv[2],'w:gz') as t:\n t.add(sys.argv[1],arcname='.')",
      tree,
      out,
    ])],
];

for (const [producer, make] of PRODUCERS) {
  Deno.test({
    name: `index + lazy mount equals extraction: ${producer}`,
    ignore,
    async fn() {
      const work = await Deno.makeTempDir({ prefix: "erofs-oci-producers-" });
      try {
        await Deno.mkdir(`${work}/tree`);
        await makeTree(`${work}/tree`);
        const layer = `${work}/layer.tar.gz`;
        await make(`${work}/tree`, layer);
        await Deno.mkdir(`${work}/x`);
        await run("tar", ["-C", `${work}/x`, "--numeric-owner", "-xzf", layer]);
        const indexed = await runCli(
          ["index", layer, "-o", `${work}/idx`, "--timestamp", "1700000000", "--span", "262144"],
          { timeoutMs: 60_000 },
        );
        assert.equal(indexed.code, 0, indexed.stderr);
        // The root's own attributes come from the extraction directory, not the tar.
        const withoutRoot = (text: string) => text.split("\n").filter((l) => !l.startsWith(".\t"));
        const listed = await withIndexFilesMounted(layer, `${work}/idx`, "layer", manifest);
        assert.deepEqual(withoutRoot(listed), withoutRoot(await manifest(`${work}/x`)));
      } finally {
        await Deno.remove(work, { recursive: true });
      }
    },
  });
}
