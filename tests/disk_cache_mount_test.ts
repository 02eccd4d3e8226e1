/**
 * The disk cache through real mounts (FUSE backend, real docker-registry behind a counting
 * proxy): a remount and a second image sharing the layer read it with zero layer GETs;
 * `--no-disk-cache` keeps fetching (today's memory-only behaviour).
 */
import assert from "node:assert/strict";
import { command, path, PEER_BIN, requires, root } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { startFaultProxy } from "./_support/fault_proxy.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE, loadFixture } from "./_support/oci_fixtures.ts";
import { expectedManifest, manifestOf, mountSandbox } from "./_support/mounts.ts";
import { serve } from "./_support/serve_process.ts";
import { controlRequest } from "../lib/daemon/control.ts";

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
    const layerGets = () => proxy.blobGets(layerDigest).length;
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
      let listed: {
        bytesFetched?: number;
        diskHitBytes?: number;
        layers?: { directReads?: number }[];
      } = {};
      let disk: { readsWaitedForSync?: number } | undefined;
      try {
        assert.equal(
          await manifestOf(sandbox.target),
          expectedManifest("basic.txt"),
          sandbox.serverLogs(),
        );
        const list = await runCli(["list", "--json"], { env });
        assertSuccess(list);
        listed = JSON.parse(list.stdout)[0];
        // The server's own counters: did any read (the metadata prefetch, the kernel's) wait
        // for an fdatasync of the disk cache?
        const [id] = [...Deno.readDirSync(`${sandbox.runtimeDir}/mounts`)].map((e) => e.name);
        const reply = await controlRequest(`${sandbox.runtimeDir}/mounts/${id}/control.sock`, {
          command: "stats",
        });
        disk = (reply as { stats?: { layers: { disk?: typeof disk }[] } })?.stats?.layers[0]?.disk;
      } finally {
        assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 30_000 }));
      }
      return { gets: layerGets() - before, listed, disk };
    };
    try {
      const first = await mountAndRead("dc/first");
      assert(first.gets > 0, "the first mount fetched the layer");
      assert((first.listed.bytesFetched ?? 0) > 0, JSON.stringify(first.listed));
      // No read waited for a sync (the mount's critical path); the unmount synced the fills:
      // every chunk the map holds is marked durable (1), none left written-only (2).
      assert.equal(first.disk?.readsWaitedForSync, 0, JSON.stringify(first.disk));
      const maps = [...Deno.readDirSync(`${cacheDir}/blobs`)]
        .filter((e) => e.name.startsWith(layerDigest.replace(":", "-")) && e.name.endsWith(".map"))
        .map((e) => Deno.readFileSync(`${cacheDir}/blobs/${e.name}`));
      assert(maps.length > 0 && maps.every((m) => m.includes(1) && !m.includes(2)), `${maps}`);
      const again = await mountAndRead("dc/first");
      assert.equal(again.gets, 0, "remount: zero layer GETs");
      assert.equal(again.listed.bytesFetched, 0, JSON.stringify(again.listed));
      assert((again.listed.diskHitBytes ?? 0) > 0, "list shows the disk-cache hits");
      // Answered by the FUSE reader thread from the cache file, as list shows.
      assert((again.listed.layers?.[0]?.directReads ?? 0) > 0, JSON.stringify(again.listed));
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
    const layerGets = () => proxy.blobGets(layerDigest).length;
    const serveAndCopy = async (extra: string[] = []) => {
      const before = layerGets();
      await using s = await serve(
        `${proxy.host}/dc/served:v1`,
        ["--plain-http", ...extra],
        [],
        cacheDir,
      );
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
      await Deno.remove(cacheDir, { recursive: true });
    }
  },
});

Deno.test({
  name: "disk cache: mount --fetch-all of a layer larger than --disk-cache-size says so and stops",
  ignore: ignore || requires(path(`${PEER_BIN}/mkfs.erofs`)),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-fetch-all-small-" });
    await using registry = await startRegistry({ auth: "none" });
    const image = await randomImage(work); // 12 MiB of file data
    const pushed = await pushImage(registry, "dc/big", "v1", [
      { bytes: image, mediaType: EROFS_MEDIA_TYPE },
    ]);
    await using proxy = await startFaultProxy(registry.host, []);
    const sandbox = await mountSandbox();
    const layerGets = () => proxy.blobGets(pushed.layers[0].digest).length;
    try {
      assertSuccess(
        await runCli(
          ["mount", `${proxy.host}/dc/big:v1`, sandbox.target, "--plain-http"].concat(
            ["--backend", "fuse", "--fetch-all", "--disk-cache-size", "4M"],
          ),
          { env: { ...sandbox.env, EROFS_OCI_CACHE_DIR: `${work}/cache` }, timeoutMs: 60_000 },
        ),
      );
      // It used to fetch the layer over and over, evicting what it had fetched.
      await new Promise((r) => setTimeout(r, 2000));
      const gets = layerGets();
      await new Promise((r) => setTimeout(r, 2000));
      assert.equal(layerGets(), gets, "no layer GET while nothing reads");
      assert.match(
        sandbox.serverLogs(),
        /--fetch-all: sha256:[0-9a-f]+ \(12\.\d MiB\) is larger than the disk cache \(4\.0 MiB\)/,
      );
      const read = await new Deno.Command("sh", {
        args: ["-c", `cat ${sandbox.target}/file* | wc -c`],
        stdout: "piped",
      }).output();
      assert.equal(new TextDecoder().decode(read.stdout).trim(), `${3 * (4 << 20)}`);
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    } finally {
      await sandbox.cleanup();
      await Deno.remove(work, { recursive: true });
    }
  },
});

/** An uncompressed EROFS image of a few MiB of random file data (mkfs.erofs 1.9.3). */
async function randomImage(dir: string): Promise<Uint8Array<ArrayBuffer>> {
  const tree = `${dir}/tree`;
  Deno.mkdirSync(tree);
  for (let i = 0; i < 3; i++) {
    const bytes = new Uint8Array(4 << 20);
    for (let off = 0; off < bytes.length; off += 65536) {
      crypto.getRandomValues(bytes.subarray(off, off + 65536));
    }
    Deno.writeFileSync(`${tree}/file${i}`, bytes);
  }
  const out = await new Deno.Command(`${PEER_BIN}/mkfs.erofs`, {
    args: ["--quiet", `${dir}/image.erofs`, tree],
  }).output();
  assert(out.success, new TextDecoder().decode(out.stderr));
  return Deno.readFileSync(`${dir}/image.erofs`);
}

Deno.test({
  name:
    "disk cache: mount --fetch-all completes the layer unread; a remount then reads it with zero GETs",
  ignore: ignore || requires(path(`${PEER_BIN}/mkfs.erofs`)),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-fetch-all-" });
    await using registry = await startRegistry({ auth: "none" });
    const image = await randomImage(work);
    const pushed = await pushImage(registry, "dc/random", "v1", [
      { bytes: image, mediaType: EROFS_MEDIA_TYPE },
    ]);
    const digest = pushed.layers[0].digest;
    await using proxy = await startFaultProxy(registry.host, []);
    const sandbox = await mountSandbox();
    const layerGets = () => proxy.blobGets(digest).length;
    const presentShare = (cacheDir: string) => {
      const name = [...Deno.readDirSync(`${cacheDir}/blobs`)].map((e) => e.name)
        .find((n) => n.startsWith(digest.replace(":", "-")) && n.endsWith(".map"))!;
      const map = Deno.readFileSync(`${cacheDir}/blobs/${name}`);
      return map.filter((b) => b === 1).length / map.length;
    };
    const mount = async (cacheDir: string, extra: string[]) =>
      assertSuccess(
        await runCli(
          [
            "mount",
            `${proxy.host}/dc/random:v1`,
            sandbox.target,
            "--plain-http",
            "--backend",
            "fuse",
            ...extra,
          ],
          { env: { ...sandbox.env, EROFS_OCI_CACHE_DIR: cacheDir }, timeoutMs: 60_000 },
        ),
      );
    const umount = async () =>
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    const waitMs = 3000;
    try {
      // Without --fetch-all the unread file data stays remote.
      await mount(`${work}/plain`, []);
      await new Promise((r) => setTimeout(r, waitMs));
      const plainShare = presentShare(`${work}/plain`);
      await umount();
      assert(plainShare < 0.5, `only metadata fetched: ${plainShare}`);

      await mount(`${work}/all`, ["--fetch-all"]);
      let share = 0;
      const done = () => share === 1 && /bytes local/.test(sandbox.serverLogs());
      for (let waited = 0; waited < 30_000 && !done(); waited += 200) {
        await new Promise((r) => setTimeout(r, 200));
        share = presentShare(`${work}/all`);
      }
      const logs = sandbox.serverLogs();
      await umount();
      assert.equal(share, 1, `the whole layer is local (${share}); ${logs}`);
      assert.match(logs, /bytes local|all \d+ bytes/, logs);

      const before = layerGets();
      await mount(`${work}/all`, []);
      try {
        const read = await new Deno.Command("sh", {
          args: ["-c", `cat ${sandbox.target}/file* | wc -c`],
          stdout: "piped",
        }).output();
        assert.equal(new TextDecoder().decode(read.stdout).trim(), `${3 * (4 << 20)}`);
      } finally {
        await umount();
      }
      assert.equal(layerGets() - before, 0, "everything came from the disk cache");
    } finally {
      await sandbox.cleanup();
      await Deno.remove(work, { recursive: true });
    }
  },
});
