/**
 * `mount --metrics-listen ADDR`: the mount server itself answers scrapes for its mount while it
 * runs. The address travels in the MountSpec and is recorded in the mount's state, so a server
 * started by `reattach` (or `reattach --watch`) listens at the same address again.
 */
import type { LayerStats } from "./layer_stats.ts";
import type { MountSpec } from "../state/mount_spec.ts";
import type { PrefetchProgress } from "../trace/prefetch.ts";
import { type ListenAddress, parseListenAddress } from "../nbd/address.ts";
import { info, warn } from "../log.ts";
import { allBlobGetLatency, allChunkMismatches } from "../source/fetch_metrics.ts";
import { listedLayers } from "./listed_layer.ts";
import { renderPrometheus } from "./prometheus.ts";
import { ownMemory } from "./server_memory.ts";
import { type MetricsEndpoint, metricsWhere, serveMetrics } from "./endpoint.ts";
import { UsageError } from "../errors.ts";
import { metricsListenRefusal } from "./listen_refusal.ts";

/**
 * Starts answering scrapes at `spec.metricsListen`, if set. A new mount's server that cannot
 * take the address throws (the mount then fails before it is ready: the CLI's early check
 * leaves the address free for a concurrent mount to take before this bind). A reattached
 * server warns in its log and serves the mount without metrics: failing the reattach over a
 * taken port would leave the mount's readers with no server at all.
 */
export function startServerMetrics(
  spec: MountSpec,
  layers: () => (LayerStats & { tracePrefetch?: PrefetchProgress })[],
): void {
  const listen = spec.metricsListen;
  if (!listen) return;
  try {
    const addr = parseListenAddress(listen, "--metrics-listen");
    const endpoint = serveMetrics(addr, () => {
      const stats = layers();
      return Promise.resolve(renderPrometheus([{
        target: spec.target,
        image: spec.image,
        manifestDigest: spec.manifestDigest,
        backend: spec.backend,
        devices: [],
        serverPid: Deno.pid,
        state: "serving",
        serverMemory: ownMemory(),
        layers: listedLayers(stats).map((layer, i) =>
          stats[i].tracePrefetch ? { ...layer, tracePrefetch: stats[i].tracePrefetch } : layer
        ),
      }]));
    });
    console.log(`metrics at ${metricsWhere(endpoint.address)}`);
    globalThis.addEventListener("unload", () => endpoint.removeSocket());
  } catch (error) {
    if (!spec.reattach) throw metricsListenRefusal(listen, (error as Error).message);
    warn(`--metrics-listen ${listen}: ${(error as Error).message}; serving no metrics`);
  }
}

/**
 * `serve --metrics-listen ADDR`: the one layer a serve process exports, listed under its NBD
 * URI. Returns a function that stops the endpoint and removes its socket.
 */
export function startServeMetrics(
  addr: ListenAddress,
  image: string,
  uri: () => string,
  stats: () => LayerStats,
): () => Promise<void> {
  let endpoint: MetricsEndpoint;
  try {
    endpoint = serveMetrics(addr, () =>
      Promise.resolve(renderPrometheus([{
        target: uri(),
        image,
        backend: "serve",
        devices: [],
        serverPid: Deno.pid,
        state: "serving",
        serverMemory: ownMemory(),
        layers: listedLayers([{
          ...stats(),
          getLatency: allBlobGetLatency(),
          verifyFailures: allChunkMismatches(),
        }]),
      }])));
  } catch (error) {
    throw new UsageError(`--metrics-listen: cannot listen: ${(error as Error).message}`);
  }
  info(`metrics at ${metricsWhere(endpoint.address)}`);
  return () => endpoint.shutdown();
}
