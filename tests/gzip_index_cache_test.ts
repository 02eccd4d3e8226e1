/**
 * The durable index copies (EROFS_OCI_STATE_DIR/index/<layer>/): `umount` removes those no
 * recovery file or mount runtime file names and nothing wrote for 10 minutes; ones a live
 * device's recovery line or a FUSE mount's record names, or freshly written ones, stay.
 */
import assert from "node:assert/strict";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";
import { startRegistry, type TestRegistry } from "./_support/registry.ts";
import { assertSuccess, describe, runCli } from "./_support/cli.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { mountSandbox } from "./_support/mounts.ts";
import { PRUNE_AFTER_MS, pruneIndexCache } from "../lib/mount/index_cache.ts";

function layerDir(base: string, name: string, ageMs: number): string {
  const dir = `${base}/${name}`;
  Deno.mkdirSync(dir, { recursive: true });
  Deno.writeTextFileSync(`${dir}/index.json`, "{}");
  const when = new Date(Date.now() - ageMs);
  Deno.utimeSync(`${dir}/index.json`, when, when);
  return dir;
}

Deno.test("index cache: only unreferenced, long-unwritten layer dirs are pruned", () => {
  const work = Deno.makeTempDirSync({ prefix: "erofs-oci-index-cache-" });
  try {
    const cache = `${work}/index`, recovery = `${work}/recovery`, runtime = `${work}/run`;
    const old = PRUNE_AFTER_MS + 60_000;
    layerDir(cache, "sha256-aaaa", old);
    const byDevice = layerDir(cache, "sha256-bbbb", old);
    layerDir(cache, "sha256-cccc", 1_000);
    const byFuse = layerDir(cache, "sha256-dddd", old);
    Deno.mkdirSync(recovery);
    Deno.writeTextFileSync(
      `${recovery}/mountnbd_x`,
      `TARINDEX_OCI_BLOB r linux/amd64 sha256:b  ${byDevice}/sha256-meta ${byDevice}/sha256-z\n`,
    );
    Deno.mkdirSync(`${runtime}/mounts/m1`, { recursive: true });
    Deno.writeTextFileSync(
      `${runtime}/mounts/m1/fuse-recovery.json`,
      JSON.stringify({ spec: { layers: [{ tarIndex: { meta: `${byFuse}/sha256-m` } }] } }),
    );
    const removed = pruneIndexCache({
      cacheDir: cache,
      recoveryDir: recovery,
      runtimeRoot: runtime,
    });
    assert.deepEqual(removed, ["sha256-aaaa"]);
    assert.deepEqual([...Deno.readDirSync(cache)].map((e) => e.name).sort(), [
      "sha256-bbbb",
      "sha256-cccc",
      "sha256-dddd",
    ]);
  } finally {
    Deno.removeSync(work, { recursive: true });
  }
});

/** layer.tar.gz pushed as `repository:v1` with its index (`index --push`); the reference. */
async function pushIndexedTarGz(registry: TestRegistry, repository: string): Promise<string> {
  const gz = await Deno.readFile(`${FIXTURES}/layer.tar.gz`);
  await pushImage(registry, repository, "v1", [
    { bytes: gz, mediaType: "application/vnd.oci.image.layer.v1.tar+gzip" },
  ]);
  const ref = `${registry.host}/${repository}:v1`;
  assertSuccess(await runCli(["index", ref, "--push"], { timeoutMs: 60_000 }));
  return ref;
}

/** An index copy's files as if its mount had been up for an hour (past PRUNE_AFTER_MS). */
function writtenAnHourAgo(copy: string): void {
  const hourAgo = new Date(Date.now() - 3600_000);
  for (const entry of Deno.readDirSync(copy)) {
    Deno.utimeSync(`${copy}/${entry.name}`, hourAgo, hourAgo);
  }
}

Deno.test({
  name: "umount of a tar.gz mount removes its index copy once nothing names it",
  ignore: requires(root(), path("/dev/fuse"), command("docker-registry"), path(FIXTURES)),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-index-cache-" });
    try {
      await using registry = await startRegistry({ auth: "none" });
      const ref = await pushIndexedTarGz(registry, "gz/prune");
      const sandbox = await mountSandbox();
      const env = { ...sandbox.env, EROFS_OCI_STATE_DIR: `${work}/state` };
      try {
        const mounted = await runCli(["mount", "--backend", "fuse", ref, sandbox.target], {
          env,
          timeoutMs: 60_000,
        });
        assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
        const cache = `${work}/state/index`;
        const [layer] = [...Deno.readDirSync(cache)].map((e) => e.name);
        writtenAnHourAgo(`${cache}/${layer}`);
        assertSuccess(await runCli(["umount", sandbox.target], { env }));
        assert.deepEqual([...Deno.readDirSync(cache)], [], "the index copy is gone");
      } finally {
        await sandbox.cleanup();
      }
    } finally {
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name:
    "an umount in another runtime dir sharing the state dir keeps the index copy a mount there needs",
  ignore: requires(root(), path("/dev/fuse"), command("docker-registry"), path(FIXTURES)),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-index-cache-" });
    try {
      await using registry = await startRegistry({ auth: "none" });
      const ref = await pushIndexedTarGz(registry, "gz/shared");
      // Two instances with runtime dirs of their own and the one (default-like) state dir.
      const holder = await mountSandbox();
      const other = await mountSandbox();
      const holderEnv = { ...holder.env, EROFS_OCI_STATE_DIR: `${work}/state` };
      const otherEnv = { ...other.env, EROFS_OCI_STATE_DIR: `${work}/state` };
      try {
        const mounted = await runCli(["mount", "--backend", "fuse", ref, holder.target], {
          env: holderEnv,
          timeoutMs: 60_000,
        });
        assert.equal(mounted.code, 0, `${describe(mounted)}\n${holder.serverLogs()}`);
        const cache = `${work}/state/index`;
        const copies = () => [...Deno.readDirSync(cache)].map((e) => e.name);
        const [layer] = copies();
        writtenAnHourAgo(`${cache}/${layer}`);
        assertSuccess(
          await runCli(["mount", "--backend", "fuse", `${FIXTURES}/basic.erofs`, other.target], {
            env: otherEnv,
            timeoutMs: 60_000,
          }),
        );
        assertSuccess(await runCli(["umount", other.target], { env: otherEnv }));
        assert.deepEqual(copies(), [layer], "the other instance's umount kept the copy");

        assertSuccess(await runCli(["umount", holder.target], { env: holderEnv }));
        assert.deepEqual(copies(), [], "gone once its own mount is unmounted");
      } finally {
        await other.cleanup();
        await holder.cleanup();
      }
    } finally {
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});
