import { deepEqual as assertEq, throws as assertThrows } from "node:assert/strict";
import { FormatError } from "../errors.ts";
import type { TarEntryKind } from "./entry.ts";
import { LayerFlattener, LayerOverlayMapper, overlayFormOf, parseWhiteout } from "./whiteout.ts";

Deno.test("parseWhiteout: plain, opaque, aufs metadata, ordinary", () => {
  assertEq(parseWhiteout("a/b/.wh.c"), { type: "whiteout", target: "a/b/c" });
  assertEq(parseWhiteout(".wh.top"), { type: "whiteout", target: "top" });
  assertEq(parseWhiteout("a/.wh..wh..opq"), { type: "opaque", dir: "a" });
  assertEq(parseWhiteout(".wh..wh..opq"), { type: "opaque", dir: "" });
  assertEq(parseWhiteout("a/.wh..wh.plnk"), { type: "meta" });
  assertEq(parseWhiteout("a/x.wh.c"), undefined);
  assertThrows(() => parseWhiteout("a/.wh."), FormatError);
});

Deno.test("overlayFormOf: 0/0 device and opaque xattr", () => {
  assertEq(overlayFormOf("d/.wh.f"), {
    type: "device",
    path: "d/f",
    kind: "char",
    devMajor: 0,
    devMinor: 0,
  });
  assertEq(overlayFormOf("d/.wh..wh..opq"), { type: "opaque-xattr", dir: "d" });
  assertEq(overlayFormOf("d/f"), undefined);
});

Deno.test("LayerOverlayMapper: same-layer recreate of a directory becomes opaque", () => {
  const m = new LayerOverlayMapper();
  assertEq(m.add("gone", "file"), false);
  assertEq(m.add(".wh.gone", "file"), true);
  assertEq(m.add(".wh.file2", "file"), true);
  assertEq(m.add("file2", "file"), false);
  assertEq(m.add(".wh.dir", "file"), true);
  assertEq(m.add("dir", "dir"), false);
  assertEq(m.add(".wh.other", "file"), true);
  assertEq(m.add("o/.wh..wh..opq", "file"), true);
  assertEq(m.result(), { devices: ["other"], opaqueDirs: ["dir", "o"], replacedDirs: ["dir"] });
});

function flatten(layers: [string, TarEntryKind][][]): string[] {
  const flat = new LayerFlattener<string>();
  for (const [i, layer] of layers.entries()) {
    flat.beginLayer();
    for (const [path, kind] of layer) flat.add(path, kind, `L${i}`);
  }
  return [...flat.entries()].map(([p, k, v]) => `${p}:${k}:${v ?? "-"}`);
}

Deno.test("LayerFlattener: whiteouts hide lower layers only; later wins; dirs merge", () => {
  const result = flatten([
    [["etc", "dir"], ["etc/a", "file"], ["etc/b", "file"], ["var/log/x", "file"], [
      "keep",
      "dir",
    ], ["keep/k", "file"]],
    [
      // whiteout before and after same-layer recreation: the new member survives either way
      ["etc/.wh.a", "file"],
      ["etc/b", "file"],
      ["etc/.wh.b", "file"],
      ["var/.wh..wh..opq", "file"],
      ["var/new", "file"],
      ["keep", "dir"],
      [".wh.nothing", "file"],
    ],
  ]);
  assertEq(result, [
    ":dir:-",
    "etc:dir:L0",
    "etc/b:file:L1",
    "keep:dir:L1",
    "keep/k:file:L0",
    "var:dir:-",
    "var/new:file:L1",
  ]);
});

Deno.test("LayerFlattener: a file replaces a directory tree; whiteout of a dir drops it all", () => {
  const result = flatten([
    [["a/b/c", "file"], ["d/e", "file"], ["s", "symlink"]],
    [["a", "file"], [".wh.d", "file"]],
    [["d/new", "file"]],
  ]);
  assertEq(result, [":dir:-", "a:file:L1", "d:dir:-", "d/new:file:L2", "s:symlink:L0"]);
});

Deno.test("LayerFlattener: a member below a non-directory is a FormatError", () => {
  const flat = new LayerFlattener<string>();
  flat.beginLayer();
  flat.add("lib", "symlink", "x");
  assertThrows(() => flat.add("lib/libc.so", "file", "y"), FormatError);
});

Deno.test("LayerFlattener: a 200,000-level path (one 400 KB pax path) needs no deep recursion", () => {
  const deep = Array.from({ length: 200_000 }, () => "a").join("/");
  const flat = new LayerFlattener<string>();
  flat.beginLayer();
  flat.add(`${deep}/f`, "file", "L1");
  flat.beginLayer();
  flat.add(".wh..wh..opq", "file", "");
  flat.add("a/keep", "file", "L2");
  flat.beginLayer();
  flat.add(`${deep}/g`, "file", "L3");
  flat.add("a/.wh..wh..opq", "file", "");
  let count = 0;
  for (const _ of flat.entries()) count++;
  assertEq(count, 200_002); // root, a/…/a (200,000), g
});

Deno.test("LayerOverlayMapper: a whiteout of a directory this layer only implies keeps its members", () => {
  for (const order of [["w/new", ".wh.w"], [".wh.w", "w/new"]]) {
    const m = new LayerOverlayMapper();
    for (const path of order) m.add(path, "file");
    // w is made afresh (opaque) holding w/new: the lower w is gone, this layer's w/new stays.
    assertEq(m.result(), { devices: [], opaqueDirs: ["w"], replacedDirs: ["w"] }, `${order}`);
  }
});

Deno.test("LayerOverlayMapper: whiteouts under what this layer replaces or deletes are moot", () => {
  const m = new LayerOverlayMapper();
  m.add("dirA", "file"); // umoci: rm -rf dirA && echo x > dirA, then repack
  m.add("dirA/.wh.f1", "file");
  m.add("dirA/.wh..wh..opq", "file");
  m.add("gone/.wh.f", "file");
  m.add(".wh.gone", "file");
  assertEq(m.result(), { devices: ["gone"], opaqueDirs: [], replacedDirs: [] });
});

Deno.test("LayerOverlayMapper: a deep whiteout's ancestors are looked up in one walk, not one each", () => {
  const dir = Array.from({ length: 1900 }, () => "a").join("/");
  const members = new Set(["f"].map((name) => `${dir}/${name}`));
  let walks = 0;
  let steps = 0;
  const m = new LayerOverlayMapper({
    kindsAlong: (parts) => {
      walks++;
      const kinds: ("dir" | "file" | undefined)[] = [];
      for (let i = 0; i < parts.length; i++) {
        steps++;
        const path = parts.slice(0, i + 1).join("/");
        kinds.push(members.has(path) ? "file" : dir.startsWith(path) ? "dir" : undefined);
      }
      return kinds;
    },
  });
  const whiteouts = 20;
  for (let i = 0; i < whiteouts; i++) m.add(`${dir}/.wh.w${i}`, "file");
  m.add(`${dir}/.wh.f`, "file");
  const { devices } = m.result();
  assertEq(devices.length, whiteouts, "the w's are whited out; f is this layer's own");
  // Per whiteout: its ancestors in one walk, itself in another (1,901 steps each at most).
  assertEq(walks <= 2 * (whiteouts + 1), true, `${walks} walks`);
  assertEq(steps <= 2 * (whiteouts + 1) * 1901, true, `${steps} steps`);
});
