import type { Command } from "./command.ts";
import { onInterrupt } from "./interrupt.ts";
import { parseCommandArgs } from "./command.ts";
import { describeMounts } from "./list.ts";
import { type DiskCacheGauges, renderPrometheus } from "../metrics/prometheus.ts";
import { DiskCache } from "../source/disk_cache.ts";
import { diskCacheDir } from "../source/disk_cache_dir.ts";
import { blobTotals } from "../source/disk_cache_contents.ts";
import { metricsWhere, serveMetrics } from "../metrics/endpoint.ts";
import { parseListenAddress } from "../nbd/address.ts";
import { info } from "../log.ts";

export const metricsCommand: Command = {
  name: "metrics",
  summary: "print every mount's counters in Prometheus text format, or serve them",
  help: `Usage: erofs-oci metrics [--listen ADDR]

Prints the counters of every mount made by erofs-oci (as \`list --json\` has them) in the
Prometheus text exposition format: per layer bytes requested and fetched, fetches, memory
cache hits and misses, disk cache hit bytes, prefetch bytes and a histogram of registry GET
times (erofs_oci_layer_registry_get_seconds), whether the layer failed its digest check
(erofs_oci_layer_digest_mismatch) and whether the mount is still in place
(erofs_oci_mount_mounted); for the host, the disk cache's bytes on disk and blobs (in use),
as \`erofs-oci cache\` shows them.

Options:
  --listen ADDR   serve them instead, at GET /metrics: unix:PATH or tcp:HOST:PORT
                  (e.g. tcp:127.0.0.1:9464); runs until SIGTERM, SIGINT or SIGHUP
  -h, --help`,
  async run(argv) {
    const { values } = parseCommandArgs("metrics", argv, { listen: { type: "string" } }, false);
    if (values.listen === undefined) {
      const text = renderPrometheus(await describeMounts(), diskCacheGauges());
      await Deno.stdout.write(new TextEncoder().encode(text));
      return 0;
    }
    const addr = parseListenAddress(values.listen);
    const endpoint = serveMetrics(
      addr,
      async () => renderPrometheus(await describeMounts(), diskCacheGauges()),
    );
    const { address } = endpoint;
    info(`serving metrics at ${metricsWhere(address)}`);
    const stop = () => endpoint.shutdown();
    onInterrupt(stop);
    await endpoint.finished;
    endpoint.removeSocket(); // shutdown does too, after this resolves
    return 0;
  },
};

/** The host's disk cache summed up; none when there is none or it is unusable (no mount uses it). */
function diskCacheGauges(): DiskCacheGauges | undefined {
  try {
    return blobTotals(DiskCache.openExisting(diskCacheDir())?.blobs() ?? []);
  } catch {
    return undefined;
  }
}
