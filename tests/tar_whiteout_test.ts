/**
 * Whiteouts checked against the kernel: two layer tars (made by GNU tar, with `.wh.` markers as
 * a container runtime writes them) are unpacked in overlayfs form with `LayerOverlayMapper`
 * and stacked with a real overlay mount; the merged view must equal what `LayerFlattener`
 * computes from the same tars.
 */
import { deepEqual } from "node:assert/strict";
import type { TarEntryKind } from "../lib/tar/entry.ts";
import { readTar } from "../lib/tar/reader.ts";
import { LayerFlattener, LayerOverlayMapper, OVERLAY_OPAQUE_XATTR } from "../lib/tar/whiteout.ts";
import { OVERLAY_HARDENING } from "../lib/mount/overlay.ts";
import { command, path, requires, root } from "./_support/requires.ts";
import { describeTree } from "./_support/tar_tree.ts";
import { runTool } from "./_support/tool.ts";

const sh = (script: string, cwd: string) => runTool("sh", ["-ec", `cd '${cwd}'\n${script}`]);

const LOWER = `
mkdir -p etc var/log keep d/e lib/inner same
echo a > etc/a; echo b > etc/b; echo x > var/log/x; echo k > keep/k; echo f > d/e/f
echo l > lib/inner/l; ln -s etc/a s; echo old > same/old
`;
// What a runtime's diff looks like: markers are empty regular files.
const UPPER = `
mkdir -p etc var keep d same
: > etc/.wh.a; : > var/.wh..wh..opq; echo new > var/new; echo k2 > keep/k2
: > .wh.d; mkdir -p d; echo g > d/g
: > .wh.lib; echo now-a-file > lib
: > .wh.s
: > same/.wh..wh..opq; echo fresh > same/fresh; : > same/.wh.fresh
: > .wh.never-existed
`;

interface Unpacked {
  kind: TarEntryKind;
  data: Uint8Array;
}

async function readLayer(tarPath: string) {
  const members: { path: string; kind: TarEntryKind; linkname: string; data: Uint8Array }[] = [];
  using f = await Deno.open(tarPath);
  for await (const e of readTar(f.readable)) {
    members.push({
      path: e.path,
      kind: e.kind,
      linkname: e.linkname,
      data: new Uint8Array(await new Response(e.body).arrayBuffer()),
    });
  }
  return members;
}

Deno.test({
  name: "whiteouts: LayerFlattener equals a real overlayfs stack of LayerOverlayMapper output",
  ignore: requires(
    root(),
    command("tar"),
    command("mknod"),
    command("setfattr"),
    command("python3"),
    path("/sys/module/overlay", "overlay module"),
  ),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "tar-whiteout-" });
    let mounted = false;
    try {
      const layers: Awaited<ReturnType<typeof readLayer>>[] = [];
      for (const [i, script] of [LOWER, UPPER].entries()) {
        await Deno.mkdir(`${work}/src${i}`);
        await sh(script, `${work}/src${i}`);
        await runTool("tar", ["-C", `${work}/src${i}`, "-cf", `${work}/l${i}.tar`, "."]);
        layers.push(await readLayer(`${work}/l${i}.tar`));
      }

      // Flattened by us.
      const flat = new LayerFlattener<Unpacked>();
      for (const layer of layers) {
        flat.beginLayer();
        for (const m of layer) flat.add(m.path, m.kind, { kind: m.kind, data: m.data });
      }
      const ours = [...flat.entries()].map(([p, k, v]) => [p, k, v ? v.data.length : 0]);

      // Each layer unpacked in overlayfs form, stacked by the kernel.
      for (const [i, layer] of layers.entries()) {
        const dir = `${work}/u${i}`;
        await Deno.mkdir(dir);
        const mapper = new LayerOverlayMapper();
        for (const m of layer) {
          if (mapper.add(m.path, m.kind)) continue;
          const target = `${dir}/${m.path}`;
          if (m.kind === "dir") await Deno.mkdir(target, { recursive: true });
          else if (m.kind === "symlink") await Deno.symlink(m.linkname, target);
          else await Deno.writeFile(target, m.data);
        }
        const { devices, opaqueDirs } = mapper.result();
        for (const d of devices) await runTool("mknod", [`${dir}/${d}`, "c", "0", "0"]);
        for (const d of opaqueDirs) {
          await Deno.mkdir(`${dir}/${d}`, { recursive: true });
          await runTool("setfattr", ["-n", OVERLAY_OPAQUE_XATTR, "-v", "y", `${dir}/${d}`]);
        }
      }
      await Deno.mkdir(`${work}/merged`);
      await runTool("mount", [
        "-t",
        "overlay",
        "overlay",
        "-o",
        `lowerdir=${work}/u1:${work}/u0${OVERLAY_HARDENING}`,
        `${work}/merged`,
      ]);
      mounted = true;
      const kernel = [...(await describeTree(`${work}/merged`))]
        .sort(([a], [b]) => (a < b ? -1 : 1))
        .map(([p, n]) => [p, n.kind, n.size]);
      const sortedOurs = [...ours].sort(([a], [b]) => ((a as string) < (b as string) ? -1 : 1));
      deepEqual(sortedOurs, kernel);
    } finally {
      if (mounted) await runTool("umount", [`${work}/merged`]);
      await Deno.remove(work, { recursive: true });
    }
  },
});
