/**
 * A FUSE mount made with `--metrics-listen unix:PATH --log-format json`, on this host with a
 * real docker-registry: after `kill -9` of its server and `reattach` (run in the default text
 * format), the new server answers scrapes at the same socket again (read back by Python's
 * prometheus_client parser), and every line of the server log, both servers' and the forced
 * read-failure warnings included, is one JSON object.
 */
import assert from "node:assert/strict";
import { command, path, requires, root } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { startFaultProxy } from "./_support/fault_proxy.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE, loadFixture } from "./_support/oci_fixtures.ts";
import { expectedManifest, manifestOf, mountSandbox, pidAlive } from "./_support/mounts.ts";
import { keeperPids, killKeepers, killServer } from "./_support/kill_mid_read.ts";
import { parsePrometheus, sampleOf, scrape, SYSTEM_PYTHON } from "./_support/prometheus.ts";

/** One GET /metrics without waiting: rejects when nobody answers at the socket. */
async function scrapeOnce(socket: string): Promise<string> {
  const client = Deno.createHttpClient({ proxy: { transport: "unix", path: socket } });
  try {
    return await (await fetch("http://metrics/metrics", { client })).text();
  } finally {
    client.close();
  }
}

/** Reads every regular file below `dir`; returns how many reads failed. */
async function readAllFiles(dir: string): Promise<number> {
  let failed = 0;
  for (const entry of Deno.readDirSync(dir)) {
    const full = `${dir}/${entry.name}`;
    if (entry.isDirectory) failed += await readAllFiles(full);
    else if (entry.isFile) {
      try {
        await Deno.readFile(full);
      } catch {
        failed++;
      }
    }
  }
  return failed;
}

Deno.test({
  name: "metrics reattach: the new server listens again; a json log stays JSON lines",
  ignore: requires(root(), path("/dev/fuse"), command("docker-registry"), path(SYSTEM_PYTHON)),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const { bytes } = await loadFixture("basic.erofs");
    const pushed = await pushImage(registry, "metrics/again", "v1", [
      { bytes, mediaType: EROFS_MEDIA_TYPE },
    ]);
    const digest = pushed.layers[0].digest;
    // Once set, the layer's blob is gone from the registry: data reads fail and are logged.
    let blobMissing = false;
    await using proxy = await startFaultProxy(registry.host, [{
      name: "blob-missing",
      match: (r) => blobMissing && r.method === "GET" && r.path.endsWith(`/blobs/${digest}`),
      fault: { kind: "status", status: 404 },
    }]);
    const sandbox = await mountSandbox();
    const env = sandbox.env;
    const socketDir = await Deno.makeTempDir({ prefix: "erofs-oci-metrics-" });
    const socket = `${socketDir}/server.sock`;
    let keepers: number[] = [];
    try {
      assertSuccess(
        await runCli(
          [
            "--log-format",
            "json",
            "mount",
            `${proxy.host}/metrics/again:v1`,
            sandbox.target,
            "--plain-http",
            "--backend",
            "fuse",
            "--no-disk-cache",
            "--metrics-listen",
            `unix:${socket}`,
          ],
          { env, timeoutMs: 60_000 },
        ),
      );
      keepers = keeperPids(sandbox.runtimeDir);
      blobMissing = true;
      const failedReads = await readAllFiles(sandbox.target);
      blobMissing = false;
      assert(failedReads > 0, "some data reads failed while the blob was missing");
      const labels = { mount: sandbox.target, layer: "0", digest };
      const before = await parsePrometheus(await scrape(socket));
      assert(sampleOf(before, "erofs_oci_layer_fetched_bytes_total", labels) > 0);

      const killedPid = await killServer(sandbox.runtimeDir);
      await assert.rejects(scrapeOnce(socket), "nobody answers at the dead server's socket");
      const reattached = await runCli(["reattach", sandbox.target], { env, timeoutMs: 60_000 });
      assertSuccess(reattached);
      assert.match(reattached.stdout, /reattached/, sandbox.serverLogs());

      // The new server serves the mount (all of it now: the blob is back) and the scrapes.
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      const after = await parsePrometheus(await scrape(socket));
      assert.equal(sampleOf(after, "erofs_oci_mount_info", { mount: sandbox.target }), 1);
      assert(sampleOf(after, "erofs_oci_layer_fetched_bytes_total", labels) > 0);
      assert(sampleOf(after, "erofs_oci_layer_registry_get_seconds_count", labels) > 0);

      const log = sandbox.serverLogs();
      const records = log.trimEnd().split("\n").map((line) => {
        try {
          return JSON.parse(line) as { time: string; level: string; msg: string };
        } catch {
          throw new assert.AssertionError({ message: `not a JSON line: ${line}\n${log}` });
        }
      });
      for (const record of records) {
        assert(!Number.isNaN(Date.parse(record.time)), JSON.stringify(record));
        assert.equal(typeof record.level, "string");
        assert.equal(typeof record.msg, "string");
      }
      const starts = records.filter((r) => /^server \d+ starting/.test(r.msg));
      assert.equal(starts.length, 2, "the first server and the one reattach started");
      assert(records.some((r) => r.msg.includes(`server ${killedPid} starting`)));
      assert.equal(
        records.filter((r) => r.msg.startsWith(`metrics at unix:${socket} (GET /metrics`)).length,
        2,
        "both servers listened",
      );
      assert(
        records.some((r) => r.level === "warning" && /FUSE read .* failed/.test(r.msg)),
        "the failed reads were warned about",
      );

      assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 30_000 }));
      assert.throws(() => Deno.lstatSync(socket), "the new server removed its socket");
      const deadline = Date.now() + 10_000;
      while (keepers.some(pidAlive) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
      }
    } finally {
      await sandbox.cleanup();
      killKeepers(keepers);
      await Deno.remove(socketDir, { recursive: true });
    }
  },
});
