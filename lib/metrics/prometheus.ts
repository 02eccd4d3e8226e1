/**
 * Mounts' counters in the Prometheus text exposition format (version 0.0.4:
 * https://prometheus.io/docs/instrumenting/exposition_formats/). Label values come from image
 * references and paths, so they are escaped (backslash, double quote, line feed) as the format
 * requires; everything else is numbers.
 */
import type { ListedLayer, ListedMount } from "./listed_layer.ts";

export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

type Labels = Record<string, string>;

function escapeLabel(value: string): string {
  return value.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n");
}

function labelText(labels: Labels): string {
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`);
  return parts.length ? `{${parts.join(",")}}` : "";
}

function numberText(n: number): string {
  if (Number.isNaN(n)) return "NaN";
  if (n === Infinity) return "+Inf";
  if (n === -Infinity) return "-Inf";
  return String(n);
}

interface Family {
  help: string;
  type: "counter" | "gauge" | "histogram";
  samples: string[];
}

class Exposition {
  readonly #families = new Map<string, Family>();

  #family(name: string, help: string, type: Family["type"]): Family {
    let family = this.#families.get(name);
    if (!family) {
      family = { help, type, samples: [] };
      this.#families.set(name, family);
    }
    return family;
  }

  sample(name: string, help: string, type: Family["type"], labels: Labels, value: number): void {
    this.#family(name, help, type).samples.push(`${name}${labelText(labels)} ${numberText(value)}`);
  }

  histogram(
    name: string,
    help: string,
    labels: Labels,
    h: { boundsSeconds: number[]; counts: number[]; count: number; sumSeconds: number },
  ): void {
    const family = this.#family(name, help, "histogram");
    h.boundsSeconds.forEach((bound, i) => {
      family.samples.push(
        `${name}_bucket${labelText({ ...labels, le: String(bound) })} ${h.counts[i]}`,
      );
    });
    family.samples.push(`${name}_bucket${labelText({ ...labels, le: "+Inf" })} ${h.count}`);
    family.samples.push(`${name}_sum${labelText(labels)} ${numberText(h.sumSeconds)}`);
    family.samples.push(`${name}_count${labelText(labels)} ${h.count}`);
  }

  text(): string {
    let out = "";
    for (const [name, family] of this.#families) {
      out += `# HELP ${name} ${family.help}\n# TYPE ${name} ${family.type}\n`;
      out += family.samples.map((s) => s + "\n").join("");
    }
    return out;
  }
}

const LAYER_COUNTERS: [keyof ListedLayer, string, string][] = [
  ["bytesRequested", "erofs_oci_layer_requested_bytes_total", "Bytes read from the layer"],
  ["bytesFetched", "erofs_oci_layer_fetched_bytes_total", "Bytes fetched from the registry"],
  ["fetches", "erofs_oci_layer_fetches_total", "Reads of the source (ranged GETs)"],
  ["memoryHits", "erofs_oci_layer_memory_cache_hits_total", "Chunk lookups answered from memory"],
  ["memoryMisses", "erofs_oci_layer_memory_cache_misses_total", "Chunk lookups that fetched"],
  ["diskHitBytes", "erofs_oci_layer_disk_cache_hit_bytes_total", "Bytes answered by disk cache"],
  ["prefetchBytes", "erofs_oci_layer_prefetch_bytes_total", "Bytes fetched by the prefetch"],
  ["prefetchFetches", "erofs_oci_layer_prefetch_fetches_total", "Reads made by the prefetch"],
  [
    "directReads",
    "erofs_oci_layer_direct_reads_total",
    "Reads the reader thread answered by itself (disk cache, pinned pages, local file)",
  ],
  ["readErrors", "erofs_oci_layer_read_errors_total", "Reads that failed (EIO to the reader)"],
  [
    "verifyFailures",
    "erofs_oci_layer_verify_failures_total",
    "Chunks that did not match the layer's chunk-digest table",
  ],
];

/** The host's disk cache as `erofs-oci metrics` reports it (DiskCache.blobs summed up). */
export interface DiskCacheGauges {
  bytesOnDisk: number;
  blobs: number;
  blobsInUse: number;
}

/** The text a scraper gets for `mounts` (and the host's disk cache, when given). */
export function renderPrometheus(mounts: ListedMount[], diskCache?: DiskCacheGauges): string {
  const out = new Exposition();
  out.sample("erofs_oci_mounts", "Mounts made by erofs-oci", "gauge", {}, mounts.length);
  if (diskCache) {
    const gauges: [keyof DiskCacheGauges, string, string][] = [
      ["bytesOnDisk", "erofs_oci_disk_cache_bytes", "Bytes on disk in the host's disk cache"],
      ["blobs", "erofs_oci_disk_cache_blobs", "Layer blobs in the host's disk cache"],
      ["blobsInUse", "erofs_oci_disk_cache_blobs_in_use", "Cached blobs a mount or serve has open"],
    ];
    for (const [key, name, help] of gauges) out.sample(name, help, "gauge", {}, diskCache[key]);
  }
  for (const mount of mounts) {
    const base = { mount: mount.target };
    out.sample(
      "erofs_oci_mount_info",
      "One per mount: image, backend and server state",
      "gauge",
      { ...base, image: mount.image, backend: mount.backend, state: mount.state },
      1,
    );
    // A gauge, not a label of mount_info: a label that flips would start a new series.
    if (mount.mounted !== undefined) {
      out.sample(
        "erofs_oci_mount_mounted",
        "1 while the mount is in place; 0 when another tool unmounted it (umount DIR clears it)",
        "gauge",
        base,
        mount.mounted ? 1 : 0,
      );
    }
    if (mount.serverMemory) {
      out.sample(
        "erofs_oci_server_resident_bytes",
        "Resident memory of the mount's server (VmRSS)",
        "gauge",
        base,
        mount.serverMemory.residentBytes,
      );
      out.sample(
        "erofs_oci_server_peak_resident_bytes",
        "Peak resident memory of the mount's server since it started (VmHWM)",
        "gauge",
        base,
        mount.serverMemory.peakResidentBytes,
      );
    }
    for (const layer of mount.layers ?? []) {
      const labels = { ...base, layer: String(layer.index), digest: layer.digest ?? "" };
      for (const [key, name, help] of LAYER_COUNTERS) {
        const value = layer[key];
        if (typeof value === "number") out.sample(name, help, "counter", labels, value);
      }
      out.sample(
        "erofs_oci_layer_digest_mismatch",
        "1 when --fetch-all fetched the whole layer and it did not hash to its digest (reads fail)",
        "gauge",
        labels,
        layer.digestMismatch ? 1 : 0,
      );
      if (layer.getLatency) {
        out.histogram(
          "erofs_oci_layer_registry_get_seconds",
          "Time to complete one ranged registry read (with retries)",
          labels,
          layer.getLatency,
        );
      }
      // `erofs-oci list` adds how far the prefetch of the image's trace got (lib/trace).
      const traced = (layer as { tracePrefetch?: { bytesTotal: number; bytesDone: number } })
        .tracePrefetch;
      if (traced) {
        out.sample(
          "erofs_oci_layer_trace_prefetch_bytes",
          "Bytes of the layer the image's trace lists for prefetch",
          "gauge",
          labels,
          traced.bytesTotal,
        );
        out.sample(
          "erofs_oci_layer_trace_prefetch_done_bytes",
          "Traced bytes prefetched, or read by the application first",
          "gauge",
          labels,
          traced.bytesDone,
        );
      }
    }
  }
  return out.text();
}
