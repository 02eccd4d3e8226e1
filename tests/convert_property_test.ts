/**
 * Property: for random layer stacks (files, directories with odd modes, parents left implied,
 * whiteouts, opaque directories, re-creation in later layers), written as tars by Python's
 * tarfile and stacked into an image by umoci, both
 *   - `erofs-oci build IMAGE` (the merged tree, kernel loop mount), and
 *   - `erofs-oci convert` (one EROFS layer per tar layer, mounted with `erofs-oci mount`: FUSE +
 *     overlayfs)
 * equal `umoci unpack` of the image. Directory mtimes are left out: a directory that no layer
 * lists and none below has gets a made-up time in every tool.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { command, path, requires, root } from "./_support/requires.ts";
import { assertSuccess, describe, runCli } from "./_support/cli.ts";
import { runOk, treeListing, withMountedImage } from "./_support/erofs_tree.ts";
import { mountSandbox } from "./_support/mounts.ts";

const ignore = requires(
  root(),
  path("/dev/fuse"),
  command("umoci"),
  command("python3"),
);

type Op =
  | { op: "dir"; path: string; mode: number }
  | { op: "file"; path: string; mode: number; content: string }
  | { op: "wh"; path: string }
  | { op: "opq"; path: string };

/** Names are typed: a, b, c are always directories and x, y always files (no kind clashes). */
const dirPath = fc.array(fc.constantFrom("a", "b", "c"), { minLength: 1, maxLength: 3 })
  .map((parts) => parts.join("/"));
const filePath = fc.tuple(
  fc.array(fc.constantFrom("a", "b", "c"), { maxLength: 2 }),
  fc.constantFrom("x", "y"),
).map(([dirs, name]) => [...dirs, name].join("/"));
const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    op: fc.constant("dir" as const),
    path: dirPath,
    mode: fc.constantFrom(0o755, 0o700, 0o750, 0o1777),
  }),
  fc.record({
    op: fc.constant("file" as const),
    path: filePath,
    mode: fc.constantFrom(0o644, 0o600, 0o755),
    content: fc.string({ maxLength: 12 }),
  }),
  fc.record({ op: fc.constant("wh" as const), path: fc.oneof(dirPath, filePath) }),
  fc.record({ op: fc.constant("opq" as const), path: dirPath }),
);

/**
 * One layer's ops without what the producers themselves disagree on: a path touched twice, a
 * whiteout inside or around an opaque directory. Opaque markers go first, then whiteouts.
 * Members written under a path the same layer whites out stay (the whiteout hides only the
 * layers below), as do whiteouts under another whiteout (moot). Whiteouts before the members:
 * a directory a layer deletes and implies again by a member below it is made afresh by umoci
 * when the whiteout comes first, but keeps the deleted one's mode when it comes after (its
 * unpack applies the archive in order); erofs-oci makes it afresh either way.
 */
function normalizeLayer(ops: Op[]): Op[] {
  const seen = new Set<string>();
  const opaque = ops.filter((o) => o.op === "opq").map((o) => o.path);
  const under = (p: string, q: string) => p === q || p.startsWith(`${q}/`);
  const out: Op[] = [];
  for (const o of ops) {
    const key = `${o.op === "wh" || o.op === "opq" ? o.op : "add"}:${o.path}`;
    if (seen.has(key)) continue;
    seen.add(key);
    if ((o.op === "dir" || o.op === "file") && seen.has(`add-any:${o.path}`)) continue;
    if (o.op === "dir" || o.op === "file") seen.add(`add-any:${o.path}`);
    if (o.op === "wh" && opaque.some((d) => under(o.path, d) || under(d, o.path))) continue;
    out.push(o);
  }
  return [
    ...out.filter((o) => o.op === "opq"),
    ...out.filter((o) => o.op === "wh"),
    ...out.filter((o) => o.op !== "opq" && o.op !== "wh"),
  ];
}

/**
 * Found by review (session 44): a layer that whites out a directory it only implies by a file
 * of its own lost that file (`.wh.a` beside `a/x` with no `a` entry), and a whiteout under
 * another whiteout of the same layer was refused ("is not a directory").
 */
const FOUND_LOCALLY: Op[][] = [
  [
    { op: "dir", path: "c", mode: 0o750 },
  ],
  [
    { op: "wh", path: "c" },
    { op: "file", path: "c/x", mode: 0o755, content: "v" },
  ],
];

const FOUND_IN_REVIEW: Op[][] = [
  [{ op: "file", path: "a/y", mode: 0o644, content: "old" }, {
    op: "file",
    path: "b/c/x",
    mode: 0o644,
    content: "o",
  }],
  [
    { op: "file", path: "a/x", mode: 0o644, content: "new" },
    { op: "wh", path: "a" },
    { op: "wh", path: "b/c/x" },
    { op: "wh", path: "b" },
  ],
];

/**
 * Found by CI: a directory implied under a directory made opaque (c/b for c/b/a under opaque c)
 * got the hidden lower c/b's 0700 in the per-layer image instead of umoci's fresh 0755.
 */
const FOUND_IN_CI: Op[][] = [
  [{ op: "file", path: "c/y", mode: 0o644, content: "XV" }, { op: "wh", path: "b" }],
  [{ op: "dir", path: "c/b", mode: 0o700 }, { op: "dir", path: "a/c", mode: 0o1777 }],
  [{ op: "opq", path: "c" }, { op: "dir", path: "c/b/a", mode: 0o755 }],
];

const TARS_PY = String.raw`
import io, json, sys, tarfile
layers = json.loads(sys.argv[1])
for n, ops in enumerate(layers):
    with tarfile.open(f"{sys.argv[2]}/layer{n}.tar", "w", format=tarfile.PAX_FORMAT) as t:
        for i, o in enumerate(ops):
            mtime = 1_000_000 + n * 1000 + i
            path = o["path"]
            if o["op"] in ("wh", "opq"):
                head, _, name = path.rpartition("/")
                marker = ".wh..wh..opq" if o["op"] == "opq" else ".wh." + name
                target = path if o["op"] == "opq" else head
                info = tarfile.TarInfo((target + "/" if target else "") + marker)
                info.mtime = mtime
                t.addfile(info, io.BytesIO(b""))
                continue
            info = tarfile.TarInfo(path)
            info.mtime = mtime
            info.mode = o["mode"]
            if o["op"] == "dir":
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            else:
                data = o["content"].encode()
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
`;

/** Listing lines comparable across tools: no root line, no directory mtime or link count. */
function comparable(listing: string[]): string[] {
  return listing.filter((line) => !line.startsWith(".\t")).map((line) => {
    const f = line.split("\t");
    if (f[1] === "d") {
      f[4] = "-";
      f[5] = "-";
    }
    return f.join("\t");
  });
}

Deno.test({
  name: "convert/build IMAGE property: random layer stacks equal umoci unpack",
  ignore,
  fn: async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.array(op, { minLength: 1, maxLength: 8 }), { minLength: 1, maxLength: 4 }),
        async (raw) => {
          const layers = raw.map(normalizeLayer);
          const work = await Deno.makeTempDir({ prefix: "erofs-oci-convert-prop-" });
          const sandbox = await mountSandbox();
          try {
            await runOk("python3", ["-c", TARS_PY, JSON.stringify(layers), work]);
            const layout = `${work}/layout`;
            await runOk("umoci", ["init", "--layout", layout]);
            await runOk("umoci", ["new", "--image", `${layout}:t`]);
            for (let n = 0; n < layers.length; n++) {
              await runOk("umoci", [
                "raw",
                "add-layer",
                "--image",
                `${layout}:t`,
                `${work}/layer${n}.tar`,
              ]);
            }
            await runOk("umoci", ["unpack", "--image", `${layout}:t`, `${work}/bundle`]);
            const expected = comparable(await treeListing(`${work}/bundle/rootfs`));
            const context = JSON.stringify(layers);

            const image = `${work}/merged.erofs`;
            const built = await runCli([
              "build",
              `oci:${layout}:t`,
              "-o",
              image,
              "--timestamp",
              "0",
            ]);
            assertSuccess(built);
            const merged = await withMountedImage(image, (dir) => treeListing(dir));
            assert.deepEqual(comparable(merged), expected, `build IMAGE of ${context}`);

            const converted = await runCli(["convert", `oci:${layout}:t`, `oci:${work}/out:t`]);
            assertSuccess(converted);
            const mounted = await runCli(
              ["mount", "--backend", "fuse", `oci:${work}/out:t`, sandbox.target],
              { env: sandbox.env, timeoutMs: 60_000 },
            );
            assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
            const stacked = await treeListing(sandbox.target);
            assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
            assert.deepEqual(comparable(stacked), expected, `convert of ${context}`);
          } finally {
            await sandbox.cleanup();
            await Deno.remove(work, { recursive: true }).catch(() => {});
          }
        },
      ),
      {
        numRuns: Number(Deno.env.get("CONVERT_PROPERTY_RUNS") ?? 12),
        endOnFailure: true,
        examples: [[FOUND_LOCALLY], [FOUND_IN_CI], [FOUND_IN_REVIEW]],
      },
    );
  },
});
