/**
 * `erofs-oci build --push` against a real docker-registry, then a lazy FUSE mount of the
 * pushed image: the tree is the source tree, a cold `find` after the mount costs at most 2 blob
 * GETs and mount + find a handful, because all metadata sits in one prefix of the image. The
 * same tree made by mkfs.erofs 1.9.3 (metadata spread between file data) costs many times
 * more; both counts are printed.
 */
import assert from "node:assert/strict";
import { startRegistry, type TestRegistry } from "./_support/registry.ts";
import { command, FIXTURES, requires } from "./_support/requires.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { mountSandbox } from "./_support/mounts.ts";
import { runOk, treeListing } from "./_support/erofs_tree.ts";
import {
  blobGets,
  ignoreWithoutScatteredImageTools as ignore,
  makeScatteredTree,
  pushMkfsErofsImage,
} from "./_support/scattered_tree.ts";

/** Mounts `image` lazily (FUSE), runs a cold find; returns the GETs made and the listing. */
async function mountAndFind(registry: TestRegistry, image: string) {
  const sandbox = await mountSandbox();
  try {
    const before = await blobGets(registry);
    assertSuccess(
      await runCli(["mount", image, sandbox.target, "--backend", "fuse"], {
        env: sandbox.env,
        timeoutMs: 60_000,
      }),
    );
    const mounted = await blobGets(registry);
    const found = await runOk("find", [sandbox.target]);
    const findGets = (await blobGets(registry)) - mounted;
    const listing = await treeListing(sandbox.target);
    // The server logs its metadata walk: "... N reads of B bytes" (each read one ranged GET
    // below the disk cache).
    const walk = await sandbox.serverLogMatch(/metadata prefetch, directories: .* (\d+) reads of/);
    // The chunk table pushed with the image lists where the directory metadata lies, merged
    // into ranges: "list of N ranges".
    const list = sandbox.serverLogs().match(/list of (\d+) ranges/);
    assert.ok(list, sandbox.serverLogs());
    return {
      prefetchReads: Number(walk[1]),
      listedRanges: Number(list[1]),
      mountGets: mounted - before,
      findGets,
      entries: found.trim().split("\n").length,
      listing,
    };
  } finally {
    await sandbox.cleanup();
  }
}

Deno.test({
  name:
    "build --push: lazy mount + cold find of a built image take <= 2 GETs (mkfs.erofs: scattered metadata)",
  ignore,
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-build-push-" });
    try {
      const src = `${work}/src`;
      await makeScatteredTree(src);
      const ours = `${registry.host}/build/ours:v1`;
      const built = await runCli(["build", src, "-o", `${work}/ours.erofs`, "--push", ours], {
        timeoutMs: 120_000,
      });
      assertSuccess(built);
      assert.match(built.stdout, new RegExp(`^${ours}@sha256:[0-9a-f]{64}\\n$`));

      const peer = await pushMkfsErofsImage(
        src,
        `${work}/peer.erofs`,
        `${registry.host}/build/peer:v1`,
      );

      const expected = await treeListing(src);
      const a = await mountAndFind(registry, ours);
      const b = await mountAndFind(registry, peer);
      console.log(
        `blob GETs mount + cold find: build ${a.mountGets} + ${a.findGets}, ` +
          `mkfs.erofs ${b.mountGets} + ${b.findGets}; metadata walk reads: build ` +
          `${a.prefetchReads}, mkfs.erofs ${b.prefetchReads}; listed metadata ranges: build ` +
          `${a.listedRanges}, mkfs.erofs ${b.listedRanges}`,
      );
      // Both tables list every directory page: the walk reads nothing of its own.
      assert.equal(a.prefetchReads, 0, `build image: ${a.prefetchReads} metadata walk reads`);
      assert.equal(b.prefetchReads, 0, `mkfs.erofs image: ${b.prefetchReads} metadata walk reads`);
      // The packed prefix is one range, not one per directory block (15 levels, 150+ dirs).
      assert.ok(a.listedRanges <= 2, `build image: ${a.listedRanges} metadata ranges`);
      // The mount point itself differs in mode/owner/mtime from the source root: compare below it.
      assert.deepEqual(a.listing.slice(1), expected.slice(1));
      assert.equal(a.entries, expected.length);
      assert.ok(a.findGets <= 2, `build image: find made ${a.findGets} GETs`);
      // Mount: config, superblock check, then the metadata prefetch (one read of the packed
      // prefix); the peer's image needs a read per scattered block.
      const total = (r: typeof a) => r.mountGets + r.findGets;
      assert.ok(total(a) <= 6, `build image: ${total(a)} GETs in all`);
      // The peer's metadata lies between file data: a range per block or so.
      assert.ok(
        b.listedRanges > 20 * a.listedRanges,
        `listed metadata ranges: mkfs.erofs image ${b.listedRanges}, build ${a.listedRanges}`,
      );
      // GETs no longer tell the two apart: the listed ranges of both come in one multi-range
      // GET (docker-registry), so the scattered layout costs bytes and ranges, not requests.
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});

/** A name /etc/hosts gives 127.0.0.1 that is not "localhost": plain HTTP is not its default. */
function loopbackAlias(): string | undefined {
  try {
    for (const line of Deno.readTextFileSync("/etc/hosts").split("\n")) {
      const [address, ...names] = line.replace(/#.*/, "").trim().split(/\s+/);
      if (address !== "127.0.0.1") continue;
      const name = names.find((n) => n && n !== "localhost" && /^[a-z0-9-]+$/.test(n));
      if (name) return name;
    }
  } catch { /* no hosts file */ }
  return undefined;
}

Deno.test({
  name: "build IMAGE --push REF --plain-http: the source image is read over plain HTTP too",
  ignore: requires({
    missing: () => loopbackAlias() ? undefined : "no name for 127.0.0.1 in /etc/hosts",
  }, command("docker-registry")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-build-plain-" });
    try {
      const host = `${loopbackAlias()}:${registry.host.split(":").pop()}`;
      await pushImage(registry, "src/app", "v1", [{
        bytes: await Deno.readFile(`${FIXTURES}/layer.tar.gz`),
        mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
      }]);
      const built = await runCli([
        "build",
        `${host}/src/app:v1`,
        "-o",
        `${work}/out.erofs`,
        "--plain-http",
        "--push",
        `${host}/built/app:v1`,
      ], { timeoutMs: 60_000 });
      assertSuccess(built);
      assertSuccess(await runCli(["inspect", `${host}/built/app:v1`, "--plain-http"]));
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});
