/**
 * Start-up cost is module loading: `mount` and its server (every mount runs both) must not
 * load the modules of other commands. Checked on `deno info --json` (static imports only; a
 * command's module is imported dynamically when it runs).
 */
import assert from "node:assert/strict";
import { REPO_ROOT } from "./_support/requires.ts";

interface InfoModule {
  specifier: string;
  dependencies?: { code?: { specifier: string }; isDynamic?: boolean }[];
}

/** Repository-relative paths of the modules `entry` loads before any dynamic import. */
async function staticGraph(entry: string): Promise<Set<string>> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", `${REPO_ROOT}/${entry}`],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert(out.success, new TextDecoder().decode(out.stderr));
  const modules = new Map<string, InfoModule>();
  for (const module of JSON.parse(new TextDecoder().decode(out.stdout)).modules as InfoModule[]) {
    modules.set(module.specifier, module);
  }
  const root = new URL(`file://${REPO_ROOT}/`).href;
  const seen = new Set<string>();
  const todo = [new URL(`file://${REPO_ROOT}/${entry}`).href];
  while (todo.length) {
    const specifier = todo.pop()!;
    if (seen.has(specifier)) continue;
    seen.add(specifier);
    for (const dep of modules.get(specifier)?.dependencies ?? []) {
      if (!dep.isDynamic && dep.code) todo.push(dep.code.specifier);
    }
  }
  return new Set([...seen].filter((s) => s.startsWith(root)).map((s) => s.slice(root.length)));
}

/** Command modules other than mount's own (lib/cli/commands.ts imports them on use). */
const OTHER_COMMANDS = [
  "build",
  "cache",
  "checksums",
  "convert",
  "index",
  "inspect",
  "list",
  "metrics",
  "pull",
  "push",
  "reattach",
  "serve",
  "trace",
  "umount",
].map((name) => `lib/cli/${name}.ts`);

Deno.test("module graph: the CLI entry loads no command until it runs", async () => {
  const graph = await staticGraph("main.ts");
  const loaded = [...graph].filter((path) => OTHER_COMMANDS.includes(path) || /mount/.test(path));
  assert.deepEqual(loaded, []);
});

Deno.test("module graph: mount and its server load no other command, nor build or convert", async () => {
  for (const entry of ["lib/cli/mount.ts", "lib/cli/mount_server.ts"]) {
    const graph = await staticGraph(entry);
    const unrelated = [...graph].filter((path) =>
      OTHER_COMMANDS.includes(path) || path.startsWith("lib/convert/") ||
      path.startsWith("lib/cli/build")
    );
    assert.deepEqual(unrelated, [], `${entry} loads ${unrelated.join(", ")}`);
  }
});

Deno.test("module graph: mount and its server load gzip, tar and the EROFS writer only for tar layers", async () => {
  for (const entry of ["lib/cli/mount.ts", "lib/cli/mount_server.ts"]) {
    const graph = await staticGraph(entry);
    const tarOnly = [...graph].filter((path) =>
      path.startsWith("lib/gzip/") || path.startsWith("lib/tar/") ||
      path.startsWith("lib/erofs/writer/") || path === "lib/mount/tar_index_source.ts" ||
      path === "lib/mount/layer_index_files.ts" || path === "lib/mount/tar_index_artifact.ts" ||
      path === "lib/mount/tar_layout.ts"
    );
    assert.deepEqual(tarOnly, [], `${entry} loads ${tarOnly.join(", ")}`);
  }
});
