/**
 * Recorded prefetch on a memory-only cache (`--no-disk-cache`), through a real mount (FUSE
 * backend, real docker-registry behind a counting proxy, an image made by mkfs.erofs 1.9.3):
 * the trace touches six 2 MiB chunks, more than an 8 MiB cache holds next to the mount's own
 * reads. The prefetch pins the traced pages (lib/trace/pinned_target.ts), so the application's
 * reads make zero layer GETs and the mount fetches far less than the chunks. Through the cache
 * (before) the first traced chunks were evicted by the later ones and fetched again. The
 * prefetch asks for the traced pages in one multi-range GET (RegistryBlob.readRanges).
 */
import assert from "node:assert/strict";
import { command, path, PEER_BIN, requires, root } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { startFaultProxy } from "./_support/fault_proxy.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE } from "./_support/oci_fixtures.ts";
import { mountSandbox } from "./_support/mounts.ts";
import { randomFilesImage } from "./_support/erofs_tree.ts";

const ignore = requires(
  root(),
  path("/dev/fuse"),
  command("docker-registry"),
  path(`${PEER_BIN}/mkfs.erofs`),
);

const MIB = 1 << 20;
const FILES = 6;
const FILE_BYTES = 2 * MIB;
const CACHE_SIZE = "8M";

/** The first page of each file: six reads in six different cache chunks. */
const readHeads = (root: string) =>
  Array.from({ length: FILES }, (_, i) => `head -c 4096 ${root}/file${i} > /dev/null`).join(
    " && ",
  );

Deno.test({
  name:
    "trace prefetch on a memory-only cache: traced pages pinned, the app's reads make no GET, no whole chunks fetched",
  ignore,
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-trace-mem-" });
    const registry = await startRegistry({ auth: "none" });
    const proxy = await startFaultProxy(registry.host, []);
    const sandbox = await mountSandbox();
    try {
      const { image } = await randomFilesImage(work, FILES, FILE_BYTES);
      const pushed = await pushImage(registry, "trace/mem", "v1", [
        { bytes: image, mediaType: EROFS_MEDIA_TYPE },
      ]);
      const digest = pushed.layers[0].digest;
      const ref = `${proxy.host}/trace/mem:v1`;
      const env = sandbox.env;
      const layerGets = () =>
        proxy.requests.filter((r) => r.method === "GET" && r.path.endsWith(`/blobs/${digest}`));

      const traced = await runCli(
        [
          "trace",
          ref,
          "--plain-http",
          "--backend",
          "fuse",
          "--push",
          "--",
          "sh",
          "-c",
          readHeads("{}"),
        ],
        { env, timeoutMs: 60_000 },
      );
      assertSuccess(traced);
      // trace exits 0 when its command fails, with what was read until then: a trace cut
      // short shows only later, as GETs of the app (CI: its mount vanished after file0).
      assert(!/exited with/.test(traced.stderr), traced.stderr);

      const firstRequest = proxy.requests.length;
      assertSuccess(
        await runCli(
          [
            "mount",
            ref,
            sandbox.target,
            "--plain-http",
            "--backend",
            "fuse",
            "--no-disk-cache",
            "--cache-size",
            CACHE_SIZE,
          ],
          { env, timeoutMs: 60_000 },
        ),
      );
      try {
        let layer: {
          tracePrefetch?: { state: string; bytesTotal: number; bytesDone: number };
          pinnedBytes?: number;
        } = {};
        for (let i = 0; i < 100; i++) {
          const list = await runCli(["list", "--json"], { env });
          assertSuccess(list);
          layer = JSON.parse(list.stdout)[0].layers[0];
          if (!layer.tracePrefetch || layer.tracePrefetch.state !== "running") break;
          await new Promise((r) => setTimeout(r, 100));
        }
        assert.equal(layer.tracePrefetch?.state, "done", JSON.stringify(layer));
        await new Promise((r) => setTimeout(r, 500));
        const before = layerGets().length;
        const app = await new Deno.Command("sh", {
          args: ["-c", readHeads(sandbox.target)],
        }).output();
        assert(app.success, new TextDecoder().decode(app.stderr));
        assert.equal(layerGets().length - before, 0, sandbox.serverLogs());

        const mountGets = proxy.requests.slice(firstRequest)
          .filter((r) => r.method === "GET" && r.path.endsWith(`/blobs/${digest}`) && r.range);
        const spans = (range: string) =>
          range.slice(6).split(",").map((span) => span.split("-").map(Number));
        const fetched = mountGets.reduce(
          (sum, r) => sum + spans(r.range!).reduce((s, [from, to]) => s + to - from + 1, 0),
          0,
        );
        // The six traced pages (far apart) in one multi-range GET, not one GET each.
        const batched = mountGets.filter((r) => {
          const asked = spans(r.range!);
          return asked.length >= FILES && asked.every(([from, to]) => to - from + 1 <= 64 << 10);
        });
        assert.equal(batched.length, 1, JSON.stringify(mountGets.map((r) => r.range)));
        // Through the cache the six traced chunks alone were 12 MiB; pinned, the traced pages
        // plus what the mount reads itself (metadata, the kernel's first reads).
        assert(fetched < 6 * MIB, `${fetched} bytes fetched by the mount`);
      } finally {
        assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 30_000 }));
      }
    } finally {
      await sandbox.cleanup();
      await proxy[Symbol.asyncDispose]();
      await registry[Symbol.asyncDispose]();
      await Deno.remove(work, { recursive: true });
    }
  },
});
