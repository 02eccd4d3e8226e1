import type { Command } from "./command.ts";
import { parseCommandArgs } from "./command.ts";
import { controlSocketPath } from "../state/runtime_dirs.ts";
import { readStates, serverOf } from "../state/mount_record.ts";
import { serverAlive } from "../state/server_liveness.ts";
import { controlRequest } from "../daemon/control.ts";
import { fuseRecoveryStatus } from "../daemon/fuse_recovery.ts";
import type { LayerStats } from "../metrics/layer_stats.ts";
import type { PrefetchProgress } from "../trace/prefetch.ts";
import { formatBytes, printTable } from "./table.ts";
import { listedLayers, type ListedMount } from "../metrics/listed_layer.ts";
import { overlayWritableDirs, readMountInfo, recordedMount } from "../sys/mountinfo.ts";
import { orphanedMounts } from "../state/pending_mount.ts";
import { warn } from "../log.ts";
import { printable } from "../text.ts";

/** Every mount with its server's counters (asked over the control socket). */
export async function describeMounts(): Promise<ListedMount[]> {
  const listed: ListedMount[] = [];
  const mounts = readMountInfo();
  for (const state of readStates()) {
    const mounted = recordedMount(state, mounts);
    const entry: ListedMount = {
      target: state.target,
      image: state.image,
      manifestDigest: state.manifestDigest,
      backend: state.backend,
      devices: state.layers.map((l) => l.device ?? l.blockPath),
      options: state.options,
      mounted: mounted !== undefined,
      ...overlayWritableDirs(mounted),
      serverPid: state.serverPid,
      state: "dead",
      reattachedAt: state.reattachedAt,
      ...(state.backend === "fuse" ? fuseRecoveryOf(state.id) : {}),
    };
    if (serverAlive(serverOf(state))) {
      const reply = await controlRequest(controlSocketPath(state.id), { command: "stats" });
      if (reply?.ok && reply.stats) {
        entry.state = "serving";
        if (reply.stats.memory) entry.serverMemory = reply.stats.memory;
        const sum = (key: "bytesRequested" | "bytesFetched" | "fetches" | "hits" | "misses") =>
          reply.stats!.layers.reduce((total, layer) => total + layer[key], 0);
        const layers = reply.stats.layers as (LayerStats & {
          prefetchFetches?: number;
          prefetchBytes?: number;
          tracePrefetch?: PrefetchProgress;
        })[];
        entry.layers = listedLayers(layers).map((listedLayer, i) =>
          layers[i].tracePrefetch
            ? { ...listedLayer, tracePrefetch: layers[i].tracePrefetch }
            : listedLayer
        );
        const traced = layers.flatMap((layer) => layer.tracePrefetch ?? []);
        if (traced.length) {
          entry.tracePrefetch = {
            bytesTotal: traced.reduce((t, p) => t + p.bytesTotal, 0),
            bytesDone: traced.reduce((t, p) => t + p.bytesDone, 0),
            state: traced.find((p) => p.state !== "done")?.state ?? "done",
          };
        }
        // The mount's totals are its layers' (listedLayers says what each counts).
        entry.bytesFetched = entry.layers.reduce((total, layer) => total + layer.bytesFetched, 0);
        if (layers.some((layer) => layer.disk)) {
          entry.diskHitBytes = layers.reduce((t, layer) => t + (layer.disk?.diskHitBytes ?? 0), 0);
        }
        entry.bytesRequested = sum("bytesRequested");
        entry.httpFetches = entry.layers.reduce((total, layer) => total + layer.fetches, 0);
        entry.readErrors = entry.layers.reduce(
          (total, layer) => total + (layer.readErrors ?? 0),
          0,
        );
        // The memory cache's, of layers it serves: over a disk cache it only passes reads on
        // (its "hits" were pinned pages alone: 100% whatever was fetched); DISK HITS says that.
        const memoryOnly = layers.filter((layer) => !layer.disk);
        if (memoryOnly.length) {
          const count = (key: "hits" | "misses") =>
            memoryOnly.reduce((total, layer) => total + layer[key], 0);
          const lookups = count("hits") + count("misses");
          entry.cacheHitRate = lookups ? count("hits") / lookups : 0;
        }
      } else {
        entry.state = "unresponsive";
      }
    }
    listed.push(entry);
  }
  return listed;
}

export const listCommand: Command = {
  name: "list",
  summary: "show active mounts with their server state and cache statistics",
  help: `Usage: erofs-oci list [--json]

Shows every mount made by erofs-oci: directory, image reference (with --json also its
manifest digest), devices (nbdN; fuse:N, N the FUSE connection in
/sys/fs/fuse/connections), mount options (nosuid,nodev unless mounted with --suid/--dev;
a writable mount's upper=DIR, with --json "upper" and "work"),
server pid and state (serving; dead = server gone and readers waiting for
\`erofs-oci reattach\`; "no keeper": the process holding a FUSE mount's connection is
gone, so the mount cannot be reattached after a server crash; "not mounted": DIR was
unmounted by another tool, \`erofs-oci umount DIR\` stops its server and clears it;
--json: "mounted": false), bytes fetched from the
source (FETCHED; with the metadata \`mount\` fetched for its server), bytes the host's disk
cache answered without fetching (DISK HITS; "-" without a disk cache), the memory cache's hit rate
for layers without a disk cache (HIT RATE: of the lookups that reached it; "-" when every layer has
one, whose reads it only passes on), and how far the
prefetch of the image's trace got (PREFETCH; "-" without a trace).

Options:
  --json   print a JSON array instead of a table
  -h, --help`,
  async run(argv) {
    const { values } = parseCommandArgs("list", argv, { json: { type: "boolean" } }, false);
    const mounts = await describeMounts();
    for (const orphan of orphanedMounts()) {
      warn(
        `${printable(orphan.target)}: left by a mount killed with its server before it recorded ` +
          "the mount (layers may be mounted there): `erofs-oci umount DIR` clears it",
      );
    }
    if (values.json) {
      console.log(JSON.stringify(mounts, null, 2));
      return 0;
    }
    if (mounts.length === 0) {
      console.log("no active erofs-oci mounts");
      return 0;
    }
    printTable(
      [
        "DIR",
        "IMAGE",
        "BACKEND",
        "DEVICES",
        "OPTIONS",
        "PID",
        "STATE",
        "FETCHED",
        "DISK HITS",
        "HIT RATE",
        "PREFETCH",
      ],
      mounts.map((m) => [
        m.target,
        m.image,
        m.backend,
        m.devices.join(","),
        [...m.options ?? ["-"], ...m.upper === undefined ? [] : [`upper=${m.upper}`]].join(","),
        String(m.serverPid),
        m.mounted === false
          ? "not mounted: umount DIR clears it"
          : m.crashRecovery === false
          ? (m.crashRecoveryProblem === "record damaged"
            ? `${m.state}, recovery record damaged: see reattach`
            : m.state === "dead"
            ? "dead, no keeper: umount it"
            : `${m.state}, no keeper`)
          : m.state === "dead"
          ? "dead, awaiting reattach"
          : m.reattachedAt
          ? `${m.state} (reattached ${m.reattachedAt.slice(0, 19)}Z)`
          : m.readErrors
          ? `${m.state}, ${m.readErrors} read(s) failed`
          : m.state,
        m.bytesFetched === undefined ? "-" : formatBytes(m.bytesFetched),
        m.diskHitBytes === undefined ? "-" : formatBytes(m.diskHitBytes),
        m.cacheHitRate === undefined ? "-" : `${(m.cacheHitRate * 100).toFixed(1)}%`,
        m.tracePrefetch === undefined
          ? "-"
          : `${
            Math.floor(m.tracePrefetch.bytesDone * 100 / m.tracePrefetch.bytesTotal)
          }% ${m.tracePrefetch.state}`,
      ]),
    );
    return 0;
  },
};

/** `list`'s crash-recovery fields of a FUSE mount. */
function fuseRecoveryOf(id: string): Pick<ListedMount, "crashRecovery" | "crashRecoveryProblem"> {
  const status = fuseRecoveryStatus(id);
  return status === "ok"
    ? { crashRecovery: true }
    : { crashRecovery: false, crashRecoveryProblem: status };
}
