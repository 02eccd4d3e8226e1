/**
 * Registry GETs of a lazy mount for images of the same tree (used by scripts/bench-build.sh
 * when docker-registry is installed): each image is pushed to a loopback docker-registry,
 * mounted with `erofs-oci mount --backend fuse`, and the blob GETs in the registry's access log
 * are counted for the mount, a cold `find`, and a cold full read (`tar cf /dev/null`), with the
 * reads of the mount's metadata prefetch walk (from the server log).
 * Writes the same as JSON to .cache/bench/build-latest.json (with the machine, load and commit)
 * for scripts/bench/readme_table.ts.
 * Usage: deno run -A scripts/bench_build_gets.ts NAME=IMAGE...
 */
import { startRegistry } from "../tests/_support/registry.ts";
import { runCli } from "../tests/_support/cli.ts";
import { mountSandbox } from "../tests/_support/mounts.ts";
import { loadNow, runInfo } from "./bench/run_info.ts";

const loadBefore = loadNow();
const images: {
  name: string;
  gets: { mount: number; find: number; fullRead: number };
  seconds: { find: number; fullRead: number };
}[] = [];

await using registry = await startRegistry({ auth: "none" });
const blobGets = async () =>
  (await registry.accessLog()).filter((line) => /"GET \/v2\/[^"]*\/blobs\//.test(line)).length;

async function run(cmd: string, args: string[]): Promise<number> {
  const start = performance.now();
  const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return (performance.now() - start) / 1000;
}

console.log(
  "image\tGETs mount\tGETs find\tGETs full read\tfind s\tfull read s\tmetadata walk reads",
);
for (const arg of Deno.args) {
  const [name, image] = arg.split("=", 2);
  const ref = `${registry.host}/bench/${name}:v1`;
  const pushed = await runCli(["push", ref, image], { timeoutMs: 600_000 });
  if (pushed.code !== 0) throw new Error(pushed.stderr);
  const sandbox = await mountSandbox();
  try {
    const before = await blobGets();
    const mounted = await runCli(["mount", ref, sandbox.target, "--backend", "fuse"], {
      env: sandbox.env,
      timeoutMs: 120_000,
    });
    if (mounted.code !== 0) throw new Error(mounted.stderr);
    const afterMount = await blobGets();
    // The walk's own reads (below the host's disk cache, which merges some into one GET).
    const walkReads = (await sandbox.serverLogMatch(
      /metadata prefetch, directories: .* (\d+) reads of/,
    ).catch(() => undefined))?.[1] ?? "?";
    const findSeconds = await run("find", [sandbox.target]);
    const afterFind = await blobGets();
    const readSeconds = await run("tar", ["-C", sandbox.target, "-cf", "/dev/null", "."]);
    const afterRead = await blobGets();
    console.log(
      [
        name,
        afterMount - before,
        afterFind - afterMount,
        afterRead - afterFind,
        findSeconds.toFixed(2),
        readSeconds.toFixed(2),
        walkReads,
      ].join("\t"),
    );
    images.push({
      name,
      gets: {
        mount: afterMount - before,
        find: afterFind - afterMount,
        fullRead: afterRead - afterFind,
      },
      seconds: { find: findSeconds, fullRead: readSeconds },
    });
  } finally {
    await sandbox.cleanup();
  }
}

const out = `${import.meta.dirname}/../.cache/bench/build-latest.json`;
Deno.mkdirSync(`${import.meta.dirname}/../.cache/bench`, { recursive: true });
Deno.writeTextFileSync(out, JSON.stringify({ ...runInfo(loadBefore), images }, null, 2) + "\n");
