/**
 * Checks that the relative imports of main.ts, lib/ and ffi/ follow the layer order in
 * docs/layering.md: no file cycles, no folder cycles, no import from a lower layer into a higher
 * one. No dependencies, so it runs before anything else is trusted:
 *
 *   deno run --allow-read scripts/check_imports.ts [--graph]
 *
 * Exit 1 when anything is found. `--graph` also prints the folder graph (edge → file imports).
 * Type-only imports count for folders and layers (they tie a module's meaning to the one it
 * names) but not for file cycles, which are about code that runs.
 */

/** A unit is a folder under lib/ (subfolders included), ffi/, a top-level lib file, or main.ts. */
interface Layer {
  name: string;
  units: string[];
}

/**
 * Lowest first. Units may import their own layer or lower ones; a layer listing several units
 * lets them import each other (folder cycles are still reported). Units that do not exist yet
 * (lib/text.ts, lib/log.ts, lib/state, lib/sys) hold the places that the move plan in
 * docs/layering.md fills.
 */
const LAYERS: Layer[] = [
  {
    name: "leaves",
    units: [
      "lib/errors.ts",
      "lib/version.ts",
      "lib/text.ts",
      "lib/bytes.ts",
      "lib/json.ts",
      "lib/timing.ts",
      "lib/timers.ts",
      "lib/test_pause.ts",
      "lib/node_builtins.ts",
      "lib/event_loop.ts",
    ],
  },
  { name: "ffi", units: ["ffi"] },
  { name: "log", units: ["lib/log.ts"] },
  { name: "tar", units: ["lib/tar"] },
  { name: "erofs", units: ["lib/erofs"] },
  { name: "source", units: ["lib/source"] },
  { name: "gzip", units: ["lib/gzip"] },
  { name: "oci", units: ["lib/oci"] },
  { name: "verify", units: ["lib/verify"] },
  { name: "state", units: ["lib/state"] },
  { name: "kernel transports", units: ["lib/sys", "lib/nbd", "lib/fuse"] },
  { name: "trace", units: ["lib/trace"] },
  { name: "metrics", units: ["lib/metrics"] },
  { name: "convert", units: ["lib/convert"] },
  { name: "mount", units: ["lib/mount"] },
  { name: "recovery", units: ["lib/recovery"] },
  { name: "daemon", units: ["lib/daemon"] },
  { name: "cli", units: ["lib/cli"] },
  { name: "entry", units: ["main.ts"] },
];

const ROOTS = ["lib", "ffi"];
const ENTRY = "main.ts";

function repoRoot(): string {
  return decodeURIComponent(new URL("../", import.meta.url).pathname).replace(/\/$/, "");
}

async function listSources(root: string): Promise<string[]> {
  const found: string[] = [];
  async function walk(rel: string): Promise<void> {
    const entries: Deno.DirEntry[] = [];
    try {
      for await (const entry of Deno.readDir(`${root}/${rel}`)) entries.push(entry);
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return;
      throw error;
    }
    for (const entry of entries) {
      const path = `${rel}/${entry.name}`;
      if (entry.isDirectory) await walk(path);
      else if (entry.isFile && isChecked(path)) found.push(path);
    }
  }
  for (const dir of ROOTS) await walk(dir);
  try {
    if ((await Deno.stat(`${root}/${ENTRY}`)).isFile) found.push(ENTRY);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  return found.sort();
}

function isChecked(path: string): boolean {
  return path.endsWith(".ts") && !path.endsWith("_test.ts") && !path.endsWith(".d.ts");
}

/**
 * Static `import … from`, `export … from` and bare `import "…"` at the start of a line. The clause
 * may span lines but not cross `;`, `=`, `(` or a quote, so declarations are never mistaken for
 * imports; comments (` * …`) and code in template strings do not start a line with `import`.
 */
const STATIC_IMPORT = /^[ \t]*(?:import|export)\b([^;"'`()=]*?)(?:\bfrom)?\s*(["'])([^"'\n]+)\2/gm;
const DYNAMIC_IMPORT = /\bimport\(\s*(["'])([^"'\n]+)\1\s*\)/g;

interface ImportRef {
  spec: string;
  /** `import type …`, or every name in the braces marked `type`: erased before the code runs. */
  typeOnly: boolean;
}

function isTypeOnly(clause: string): boolean {
  const text = clause.trim();
  if (/^type\b/.test(text) && !/^type\s*,/.test(text)) return true;
  const braces = /^\{([^}]*)\}$/.exec(text);
  if (!braces) return false;
  const names = braces[1].split(",").map((n) => n.trim()).filter((n) => n !== "");
  return names.length > 0 && names.every((n) => /^type\s/.test(n));
}

function relativeImports(text: string): ImportRef[] {
  const refs: ImportRef[] = [];
  for (const match of text.matchAll(STATIC_IMPORT)) {
    refs.push({ spec: match[3], typeOnly: isTypeOnly(match[1]) });
  }
  for (const match of text.matchAll(DYNAMIC_IMPORT)) refs.push({ spec: match[2], typeOnly: false });
  return refs.filter((r) => r.spec.startsWith("./") || r.spec.startsWith("../"));
}

/** Joins a relative specifier onto the importing file's folder, both relative to the root. */
function resolve(from: string, spec: string): string {
  const parts = from.split("/").slice(0, -1);
  for (const part of spec.split("/")) {
    if (part === "..") parts.pop();
    else if (part !== ".") parts.push(part);
  }
  return parts.join("/");
}

function unitOf(file: string): string {
  const parts = file.split("/");
  if (parts[0] === "lib") return parts.length === 2 ? file : `lib/${parts[1]}`;
  if (parts.length > 1) return parts[0];
  return file;
}

/** Strongly connected components with more than one node or a self-edge (Tarjan, iterative). */
function cycles(graph: Map<string, Set<string>>): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const onStack = new Set<string>();
  const stack: string[] = [];
  const result: string[][] = [];
  let next = 0;
  for (const start of [...graph.keys()].sort()) {
    if (index.has(start)) continue;
    const work: { node: string; edges: string[]; at: number }[] = [];
    const enter = (node: string) => {
      index.set(node, next);
      low.set(node, next);
      next++;
      stack.push(node);
      onStack.add(node);
      work.push({ node, edges: [...(graph.get(node) ?? [])].sort(), at: 0 });
    };
    enter(start);
    while (work.length > 0) {
      const frame = work[work.length - 1];
      if (frame.at < frame.edges.length) {
        const to = frame.edges[frame.at++];
        if (!index.has(to)) enter(to);
        else if (onStack.has(to)) {
          low.set(frame.node, Math.min(low.get(frame.node)!, index.get(to)!));
        }
        continue;
      }
      work.pop();
      if (work.length > 0) {
        const parent = work[work.length - 1].node;
        low.set(parent, Math.min(low.get(parent)!, low.get(frame.node)!));
      }
      if (low.get(frame.node) !== index.get(frame.node)) continue;
      const component: string[] = [];
      let member: string;
      do {
        member = stack.pop()!;
        onStack.delete(member);
        component.push(member);
      } while (member !== frame.node);
      const selfEdge = graph.get(frame.node)?.has(frame.node) ?? false;
      if (component.length > 1 || selfEdge) result.push(component.sort());
    }
  }
  return result;
}

function addEdge(graph: Map<string, Set<string>>, from: string, to: string): void {
  if (!graph.has(from)) graph.set(from, new Set());
  if (!graph.has(to)) graph.set(to, new Set());
  graph.get(from)!.add(to);
}

interface Violation {
  kind: "file cycle" | "folder cycle" | "upward import" | "unplaced unit" | "missing file";
  from: string;
  to: string;
  reason: string;
}

async function main(): Promise<number> {
  const root = repoRoot();
  const files = await listSources(root);
  const known = new Set(files);
  const rank = new Map<string, number>();
  LAYERS.forEach((layer, i) => layer.units.forEach((unit) => rank.set(unit, i)));

  const fileGraph = new Map<string, Set<string>>();
  const folderGraph = new Map<string, Set<string>>();
  /** `fromUnit → toUnit` → the file imports behind that folder edge. */
  const folderEdgeFiles = new Map<string, [string, string][]>();
  const violations: Violation[] = [];

  for (const file of files) {
    fileGraph.set(file, fileGraph.get(file) ?? new Set());
    const text = await Deno.readTextFile(`${root}/${file}`);
    for (const { spec, typeOnly } of relativeImports(text)) {
      const target = resolve(file, spec);
      if (!known.has(target)) {
        // Test helpers and scripts are outside the layers; anything else is a broken path.
        if (!target.endsWith("_test.ts") && ROOTS.some((r) => target.startsWith(`${r}/`))) {
          violations.push({ kind: "missing file", from: file, to: target, reason: "not found" });
        }
        continue;
      }
      // A file and the helpers that name its types may refer to each other; only imports that
      // run make a file cycle (load order, tangled state).
      if (!typeOnly) addEdge(fileGraph, file, target);
      const [fromUnit, toUnit] = [unitOf(file), unitOf(target)];
      if (fromUnit === toUnit) continue;
      addEdge(folderGraph, fromUnit, toUnit);
      const key = `${fromUnit}\0${toUnit}`;
      const pairs = folderEdgeFiles.get(key) ?? [];
      // The same file pair can appear twice (`import type` beside `import`): count it once.
      if (!pairs.some(([f, t]) => f === file && t === target)) pairs.push([file, target]);
      folderEdgeFiles.set(key, pairs);
    }
  }

  for (const unit of [...folderGraph.keys()].sort()) {
    if (!rank.has(unit)) {
      violations.push({
        kind: "unplaced unit",
        from: unit,
        to: "LAYERS",
        reason: "add it to LAYERS in scripts/check_imports.ts and docs/layering.md",
      });
    }
  }

  const fileCycles = cycles(fileGraph);
  fileCycles.forEach((component, i) => {
    const members = new Set(component);
    for (const from of component) {
      for (const to of [...fileGraph.get(from)!].sort()) {
        if (!members.has(to)) continue;
        violations.push({
          kind: "file cycle",
          from,
          to,
          reason: `file cycle ${i + 1}: ${component.length} files`,
        });
      }
    }
  });

  // A folder cycle is printed as the folder edges inside it that the layer order does not allow
  // (upward, or between units of one layer): cutting those breaks it. When none of its units is
  // placed yet, every edge inside it is printed.
  const folderCycles = cycles(folderGraph);
  folderCycles.forEach((component, i) => {
    const members = new Set(component);
    const edges: [string, string][] = [];
    for (const fromUnit of component) {
      for (const toUnit of [...folderGraph.get(fromUnit)!].sort()) {
        if (members.has(toUnit)) edges.push([fromUnit, toUnit]);
      }
    }
    const against = edges.filter(([a, b]) => (rank.get(b) ?? -1) >= (rank.get(a) ?? Infinity));
    for (const [fromUnit, toUnit] of against.length > 0 ? against : edges) {
      const pairs = folderEdgeFiles.get(`${fromUnit}\0${toUnit}`)!;
      const files = pairs.map(([from, to]) => `${from} → ${to}`).join(", ");
      const imports = pairs.length === 1 ? "1 import" : `${pairs.length} imports`;
      violations.push({
        kind: "folder cycle",
        from: fromUnit,
        to: toUnit,
        reason: `folder cycle ${i + 1} of ${component.length} folders; ${imports}: ${files}`,
      });
    }
  });

  for (const [key, pairs] of [...folderEdgeFiles].sort(([a], [b]) => a < b ? -1 : 1)) {
    const [fromUnit, toUnit] = key.split("\0");
    const [fromRank, toRank] = [rank.get(fromUnit), rank.get(toUnit)];
    if (fromRank === undefined || toRank === undefined || toRank <= fromRank) continue;
    const reason = `upward: ${fromUnit} (${LAYERS[fromRank].name}) imports ${toUnit} (${
      LAYERS[toRank].name
    })`;
    for (const [from, to] of pairs) violations.push({ kind: "upward import", from, to, reason });
  }

  if (Deno.args.includes("--graph")) {
    console.log("folder graph (importer → imported: file imports):");
    for (const [key, pairs] of [...folderEdgeFiles].sort(([a], [b]) => a < b ? -1 : 1)) {
      console.log(`  ${key.replace("\0", " → ")}: ${pairs.length}`);
    }
    console.log("");
  }

  for (const v of violations) console.log(`${v.from} → ${v.to} (${v.reason})`);
  const count = (kind: Violation["kind"]) => violations.filter((v) => v.kind === kind).length;
  console.log("");
  console.log(`checked ${files.length} files, ${folderGraph.size} units`);
  console.log(`file cycles: ${fileCycles.length} (${count("file cycle")} imports inside them)`);
  const cutCount = count("folder cycle");
  console.log(`folder cycles: ${folderCycles.length} (${cutCount} folder edges to cut)`);
  folderCycles.forEach((component, i) => {
    console.log(`  folder cycle ${i + 1}: ${component.join(", ")}`);
  });
  console.log(`upward imports: ${count("upward import")}`);
  console.log(`unplaced units: ${count("unplaced unit")}`);
  console.log(`missing files: ${count("missing file")}`);
  return violations.length > 0 ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main());
