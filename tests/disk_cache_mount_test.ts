/**
 * The disk cache through real mounts (FUSE backend, real docker-registry behind a counting
 * proxy): a remount and a second image sharing the layer read it with zero layer GETs;
 * `--no-disk-cache` keeps fetching (today's memory-only behaviour).
 */
import assert from "node:assert/strict";
import { command, path, requires, root } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { startFaultProxy } from "./_support/fault_proxy.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE, loadFixture } from "./_support/oci_fixtures.ts";
import { expectedManifest, manifestOf, mountSandbox } from "./_support/mounts.ts";
import { serve } from "./_support/serve_process.ts";

const ignore = requires(root(), path("/dev/fuse"), command("docker-registry"), command("python3"));

Deno.test({
  name: "disk cache: remount and a second image sharing the layer fetch zero layer bytes",
  ignore,
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const fixture = await loadFixture("basic.erofs");
    const pushed = await pushImage(registry, "dc/first", "v1", [
      { bytes: fixture.bytes, mediaType: EROFS_MEDIA_TYPE },
    ]);
    await pushImage(registry, "dc/second", "v1", [
      { bytes: fixture.bytes, mediaType: EROFS_MEDIA_TYPE },
    ]);
    const layerDigest = pushed.layers[0].digest;
    await using proxy = await startFaultProxy(registry.host, []);
    const sandbox = await mountSandbox();
    const cacheDir = await Deno.makeTempDir({ prefix: "erofs-oci-disk-cache-" });
    const env = { ...sandbox.env, EROFS_OCI_CACHE_DIR: cacheDir };
    const layerGets = () =>
      proxy.requests.filter((r) => r.method === "GET" && r.path.endsWith(`/blobs/${layerDigest}`))
        .length;
    const mountAndRead = async (repo: string, extra: string[] = []) => {
      const before = layerGets();
      assertSuccess(
        await runCli(
          [
            "mount",
            `${proxy.host}/${repo}:v1`,
            sandbox.target,
            "--plain-http",
            "--backend",
            "fuse",
            ...extra,
          ],
          { env, timeoutMs: 60_000 },
        ),
      );
      let listed: { bytesFetched?: number; diskHitBytes?: number } = {};
      try {
        assert.equal(
          await manifestOf(sandbox.target),
          expectedManifest("basic.txt"),
          sandbox.serverLogs(),
        );
        const list = await runCli(["list", "--json"], { env });
        assertSuccess(list);
        listed = JSON.parse(list.stdout)[0];
      } finally {
        assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 30_000 }));
      }
      return { gets: layerGets() - before, listed };
    };
    try {
      const first = await mountAndRead("dc/first");
      assert(first.gets > 0, "the first mount fetched the layer");
      assert((first.listed.bytesFetched ?? 0) > 0, JSON.stringify(first.listed));
      const again = await mountAndRead("dc/first");
      assert.equal(again.gets, 0, "remount: zero layer GETs");
      assert.equal(again.listed.bytesFetched, 0, JSON.stringify(again.listed));
      assert((again.listed.diskHitBytes ?? 0) > 0, "list shows the disk-cache hits");
      assert.equal((await mountAndRead("dc/second")).gets, 0, "second image, same layer");
      const memoryOnly = await mountAndRead("dc/first", ["--no-disk-cache"]);
      assert(memoryOnly.gets > 0, "--no-disk-cache fetches");
      assert.equal(memoryOnly.listed.diskHitBytes, undefined);
      const files = [...Deno.readDirSync(`${cacheDir}/blobs`)].map((e) => e.name);
      assert(files.some((n) => n.startsWith(layerDigest.replace(":", "-"))), files.join(" "));
      assert.equal(Deno.statSync(cacheDir).mode! & 0o777, 0o700);
    } finally {
      await sandbox.cleanup();
      await Deno.remove(cacheDir, { recursive: true });
    }
  },
});

Deno.test({
  name: "disk cache: serve again reads the layer with zero GETs; --no-disk-cache fetches",
  ignore: requires(command("docker-registry"), command("nbdcopy")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const fixture = await loadFixture("basic.erofs");
    const pushed = await pushImage(registry, "dc/served", "v1", [
      { bytes: fixture.bytes, mediaType: EROFS_MEDIA_TYPE },
    ]);
    const layerDigest = pushed.layers[0].digest;
    await using proxy = await startFaultProxy(registry.host, []);
    const cacheDir = await Deno.makeTempDir({ prefix: "erofs-oci-disk-cache-" });
    const previous = Deno.env.get("EROFS_OCI_CACHE_DIR");
    Deno.env.set("EROFS_OCI_CACHE_DIR", cacheDir);
    const layerGets = () =>
      proxy.requests.filter((r) => r.method === "GET" && r.path.endsWith(`/blobs/${layerDigest}`))
        .length;
    const serveAndCopy = async (extra: string[] = []) => {
      const before = layerGets();
      await using s = await serve(`${proxy.host}/dc/served:v1`, ["--plain-http", ...extra]);
      const out = await new Deno.Command("nbdcopy", { args: [s.uri, `${s.dir}/out.img`] })
        .output();
      assert(out.success, new TextDecoder().decode(out.stderr) + s.stderr());
      assert.deepEqual(Deno.readFileSync(`${s.dir}/out.img`), fixture.bytes);
      assert.equal(await s.stop(), 0, s.stderr());
      return layerGets() - before;
    };
    try {
      assert(await serveAndCopy() > 0, "the first serve fetched the layer");
      assert.equal(await serveAndCopy(), 0, "serve again: zero layer GETs");
      assert(await serveAndCopy(["--no-disk-cache"]) > 0, "--no-disk-cache fetches");
    } finally {
      if (previous === undefined) Deno.env.delete("EROFS_OCI_CACHE_DIR");
      else Deno.env.set("EROFS_OCI_CACHE_DIR", previous);
      await Deno.remove(cacheDir, { recursive: true });
    }
  },
});
