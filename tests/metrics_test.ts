/**
 * Metrics of a real FUSE mount from a real docker-registry, read back by a real Prometheus
 * text parser (Python's prometheus_client, Debian python3-prometheus-client): `list --json`
 * per-layer counters, `erofs-oci metrics` on stdout and served by `metrics --listen`, and the
 * mount server's own endpoint (`mount --metrics-listen`), removed at umount; `serve
 * --metrics-listen` for the one layer it exports.
 */
import assert from "node:assert/strict";
import { command, path, REPO_ROOT, requires, root } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { startFaultProxy } from "./_support/fault_proxy.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { digestOf } from "../lib/oci/digest.ts";
import { EROFS_MEDIA_TYPE, loadFixture } from "./_support/oci_fixtures.ts";
import { expectedManifest, manifestOf, mountSandbox } from "./_support/mounts.ts";
import type { ListedMount } from "../lib/metrics/listed_layer.ts";
import { serve } from "./_support/serve_process.ts";
import { renderPrometheus } from "../lib/metrics/prometheus.ts";
import { parsePrometheus, sampleOf, scrape, SYSTEM_PYTHON } from "./_support/prometheus.ts";

const ignore = requires(
  root(),
  path("/dev/fuse"),
  command("docker-registry"),
  path(SYSTEM_PYTHON),
);

Deno.test({
  name: "metrics: a mount's per-layer counters, in list --json and parsed as Prometheus text",
  ignore,
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const { bytes } = await loadFixture("basic.erofs");
    const pushed = await pushImage(registry, "metrics/app", "v1", [
      { bytes, mediaType: EROFS_MEDIA_TYPE },
    ]);
    const digest = pushed.layers[0].digest;
    await using proxy = await startFaultProxy(registry.host, []);
    const sandbox = await mountSandbox();
    const env = sandbox.env;
    const socketDir = await Deno.makeTempDir({ prefix: "erofs-oci-metrics-" });
    const serverSocket = `${socketDir}/server.sock`;
    let listener: Deno.ChildProcess | undefined;
    try {
      assertSuccess(
        await runCli(
          [
            "mount",
            `${proxy.host}/metrics/app:v1`,
            sandbox.target,
            "--plain-http",
            "--backend",
            "fuse",
            "--no-disk-cache",
            "--metrics-listen",
            `unix:${serverSocket}`,
          ],
          { env, timeoutMs: 60_000 },
        ),
      );
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      const layerGets = proxy.requests.filter((r) =>
        r.method === "GET" && r.path.endsWith(`/blobs/${digest}`)
      ).length;

      const list = await runCli(["list", "--json"], { env });
      assertSuccess(list);
      const [mount] = JSON.parse(list.stdout) as ListedMount[];
      const layer = mount.layers![0];
      assert.equal(layer.digest, digest);
      assert(layer.bytesFetched > 0 && layer.bytesRequested > 0, JSON.stringify(layer));
      assert(layer.memoryHits + layer.memoryMisses > 0);
      // Every completed ranged read was timed, and each took at least one GET.
      assert(layer.getLatency!.count > 0 && layer.getLatency!.count <= layerGets, list.stdout);
      // The server's memory, as /proc says it (an operator's view of the bound).
      const rss = (field: string) =>
        Number(
          new RegExp(`^${field}:\\s+(\\d+) kB$`, "m")
            .exec(Deno.readTextFileSync(`/proc/${mount.serverPid}/status`))![1],
        ) * 1024;
      const memory = mount.serverMemory!;
      assert(memory && memory.peakResidentBytes >= memory.residentBytes, list.stdout);
      assert(memory.residentBytes > 20 << 20 && memory.peakResidentBytes <= rss("VmHWM"));

      const printed = await runCli(["metrics"], { env });
      assertSuccess(printed);
      const families = await parsePrometheus(printed.stdout);
      const labels = { mount: sandbox.target, layer: "0", digest };
      assert.equal(sampleOf(families, "erofs_oci_mounts", {}), 1);
      assert.equal(
        sampleOf(families, "erofs_oci_mount_info", { mount: sandbox.target, state: "serving" }),
        1,
      );
      assert(
        sampleOf(families, "erofs_oci_layer_fetched_bytes_total", labels) >= layer.bytesFetched,
      );
      assert(sampleOf(families, "erofs_oci_layer_memory_cache_hits_total", labels) >= 0);
      const mountLabels = { mount: sandbox.target };
      assert(sampleOf(families, "erofs_oci_server_resident_bytes", mountLabels) > 20 << 20);
      assert(
        sampleOf(families, "erofs_oci_server_peak_resident_bytes", mountLabels) >=
          memory.peakResidentBytes,
      );
      // Every counter of list --json is in the exposition (the reader thread's direct reads
      // and the prefetch's reads were left out).
      assert(typeof layer.directReads === "number", list.stdout);
      assert(
        sampleOf(families, "erofs_oci_layer_direct_reads_total", labels) >= layer.directReads!,
      );
      assert(typeof layer.prefetchFetches === "number", list.stdout);
      assert(
        sampleOf(families, "erofs_oci_layer_prefetch_fetches_total", labels) >=
          layer.prefetchFetches!,
      );
      const histogram = families.find((f) => f.name === "erofs_oci_layer_registry_get_seconds")!;
      assert.equal(histogram.type, "histogram");
      const count = sampleOf(families, "erofs_oci_layer_registry_get_seconds_count", labels);
      assert(count >= layer.getLatency!.count, `${count}`);
      assert.equal(
        sampleOf(families, "erofs_oci_layer_registry_get_seconds_bucket", {
          ...labels,
          le: "+Inf",
        }),
        count,
      );

      // The mount server answers scrapes itself (mount --metrics-listen).
      const fromServer = await parsePrometheus(await scrape(serverSocket));
      assert(sampleOf(fromServer, "erofs_oci_layer_fetched_bytes_total", labels) > 0);
      assert(sampleOf(fromServer, "erofs_oci_layer_registry_get_seconds_count", labels) > 0);
      assert(sampleOf(fromServer, "erofs_oci_server_resident_bytes", mountLabels) > 20 << 20);

      // The same text served for a scraper on a unix socket.
      const socket = `${socketDir}/metrics.sock`;
      listener = new Deno.Command(`${REPO_ROOT}/scripts/erofs-oci-dev`, {
        args: ["metrics", "--listen", `unix:${socket}`],
        env: { ...env },
        stdout: "null",
        stderr: "piped",
      }).spawn();
      const served = await parsePrometheus(await scrape(socket));
      assert(sampleOf(served, "erofs_oci_layer_fetched_bytes_total", labels) > 0);
      listener.kill("SIGTERM");
      const status = await listener.status;
      listener = undefined;
      assert.equal(status.code, 0);
      assert.throws(() => Deno.lstatSync(socket), "the socket is removed on exit");
      assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 30_000 }));
      assert.throws(() => Deno.lstatSync(serverSocket), "the server removed its socket");
    } finally {
      if (listener) {
        listener.kill("SIGKILL");
        await listener.status;
      }
      await sandbox.cleanup();
      await Deno.remove(socketDir, { recursive: true });
    }
  },
});

Deno.test({
  name: "metrics: serve --metrics-listen exposes the served layer's counters",
  ignore: requires(command("docker-registry"), command("nbdcopy"), path(SYSTEM_PYTHON)),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const { bytes } = await loadFixture("basic.erofs");
    await pushImage(registry, "metrics/served", "v1", [{ bytes, mediaType: EROFS_MEDIA_TYPE }]);
    const dir = await Deno.makeTempDir({ prefix: "erofs-oci-metrics-" });
    try {
      const socket = `${dir}/metrics.sock`;
      await using s = await serve(`${registry.host}/metrics/served:v1`, [
        "--plain-http",
        "--no-disk-cache",
        "--metrics-listen",
        `unix:${socket}`,
      ]);
      const out = await new Deno.Command("nbdcopy", { args: [s.uri, `${dir}/out.img`] }).output();
      assert(out.success, new TextDecoder().decode(out.stderr) + s.stderr());
      assert.deepEqual(Deno.readFileSync(`${dir}/out.img`), bytes);
      const families = await parsePrometheus(await scrape(socket));
      // Labelled by the export's URI and the layer's digest (were the --listen text and "").
      const labels = { layer: "0", mount: s.uri, digest: digestOf(bytes) };
      assert(sampleOf(families, "erofs_oci_layer_fetched_bytes_total", labels) >= bytes.length);
      assert(sampleOf(families, "erofs_oci_layer_registry_get_seconds_count", labels) > 0);
      assert.equal(await s.stop(), 0, s.stderr());
      assert.throws(() => Deno.lstatSync(socket), "serve removed its metrics socket");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "metrics: hostile label values (quotes, backslashes, line breaks) stay inside their label",
  ignore: requires(path(SYSTEM_PYTHON)),
  async fn() {
    const target = '/mnt/a"b\\c\nd';
    const image = 'reg/x:y"} evil_metric 1\n#';
    const text = renderPrometheus([{
      target,
      image,
      backend: "fuse",
      devices: [],
      serverPid: 1,
      state: "serving",
      layers: [{
        index: 0,
        digest: "sha256:" + "a".repeat(64),
        bytesRequested: 10,
        bytesFetched: 7,
        fetches: 1,
        memoryHits: 2,
        memoryMisses: 1,
      }],
    }]);
    const families = await parsePrometheus(text);
    assert(!families.some((f) => f.name.startsWith("evil")), text);
    assert.equal(sampleOf(families, "erofs_oci_mount_info", { mount: target, image }), 1);
    assert.equal(sampleOf(families, "erofs_oci_layer_fetched_bytes_total", { mount: target }), 7);
  },
});
