import assert from "node:assert/strict";

/**
 * Runs prepareTracePrefetch in a process of its own whose runtime dir is `runtime` (the module
 * takes it at load) with a one-range trace of a one-layer image; prints the file it made.
 */
async function prepareIn(runtime: string): Promise<string> {
  const lib = (path: string) => JSON.stringify(new URL(path, import.meta.url).href);
  const script = `
    const { prepareTracePrefetch } = await import(${lib("./mount_lookup.ts")});
    const { buildTrace, encodeTrace } = await import(${lib("./format.ts")});
    const layer = { digest: "sha256:" + "a".repeat(64), size: 1 << 20 };
    const bytes = encodeTrace(buildTrace([{ layer, accesses: [{ offset: 0, length: 4096, seq: 0 }] }]));
    const spec = [{ kind: "registry", digest: layer.digest, sizeBytes: layer.size }];
    const lookup = Promise.resolve({ digest: "sha256:" + "b".repeat(64), bytes });
    console.log(await prepareTracePrefetch(undefined, "r", "sha256:" + "c".repeat(64), spec, { lookup }));`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-check", script],
    env: { EROFS_OCI_RUNTIME_DIR: runtime },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout).trim();
}

Deno.test("trace prefetch file: made in the runtime dir; what killed mounts left is removed after 10 minutes", async () => {
  const runtime = await Deno.makeTempDir({ prefix: "erofs-oci-prefetch-" });
  try {
    const left = (name: string, ageMs: number) => {
      Deno.writeTextFileSync(`${runtime}/${name}`, "{}");
      const at = new Date(Date.now() - ageMs);
      Deno.utimeSync(`${runtime}/${name}`, at, at);
    };
    left("prefetch-0123abcd.json", 11 * 60_000);
    left("prefetch-4567abcd.json", 60_000); // a mount still starting may hand it over
    left("prefetch-notours.json", 60 * 60_000);
    const made = await prepareIn(runtime);
    assert.match(made, new RegExp(`^${runtime}/prefetch-[0-9a-f]{8}\\.json$`));
    const names = [...Deno.readDirSync(runtime)].map((e) => e.name).sort();
    assert.deepEqual(
      names,
      [made.slice(runtime.length + 1), "prefetch-4567abcd.json", "prefetch-notours.json"].sort(),
    );
  } finally {
    await Deno.remove(runtime, { recursive: true });
  }
});
