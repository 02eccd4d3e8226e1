/**
 * Exports one layer's source to the kernel as something EROFS can be mounted from: an NBD
 * block device (served over several connections) or a file in a private FUSE mount.
 */
import type { Source } from "../source/source.ts";
import { startFuseBlob } from "../fuse/blob.ts";
import {
  closeKernelFds,
  disconnectNbd,
  openKernelConnections,
  reconfigureNbd,
} from "../nbd/kernel.ts";
import { attachNbd } from "../nbd/attach.ts";
import { PageCacheWarmer, type PinnedPages } from "../nbd/page_cache_warm.ts";
import { removeRecoveryFile } from "../state/recovery_store.ts";
import { checkErofsSuperblock, EROFS_SUPER_END } from "../erofs/superblock.ts";
import { serveTransmission } from "../nbd/transmission.ts";
import type { NbdConn } from "../nbd/conn_io.ts";
import {
  DirectNbdConn,
  type DirectNbdConns,
  openDirectKernelConnections,
} from "../nbd/direct_conns.ts";
import { isDirectReadable } from "../source/direct_reads.ts";
import { DEFAULT_QUEUE_TUNING, nbdDevicePath, nbdIndexOfBlockDevice } from "../nbd/sysfs.ts";
import { readMountInfo } from "../sys/mountinfo.ts";

/**
 * The NBD block size for an image: EROFS refuses a filesystem block smaller than the device's
 * logical block (EINVAL), and tar-index images (`mkfs.erofs --tar=i`, `erofs-oci index`) use
 * 512-byte blocks, so such an image gets 512-byte device blocks; others the 4096 default.
 */
async function nbdBlockSizeFor(source: Source): Promise<number | undefined> {
  if (source.size < EROFS_SUPER_END) return undefined;
  try {
    return nbdBlockSizeOf(
      checkErofsSuperblock(await source.read(0, EROFS_SUPER_END)).blockSizeBytes,
    );
  } catch {
    return undefined;
  }
}

function nbdBlockSizeOf(erofsBlockBytes: number): number | undefined {
  return erofsBlockBytes < 4096 ? Math.max(512, erofsBlockBytes) : undefined;
}

export interface LayerExport {
  /** Path EROFS is mounted from (/dev/nbdN or the FUSE file). */
  blockPath: string;
  /** Kernel device name for `list` (nbdN; fuse:N, its FUSE connection). */
  device: string;
  /** Recovery file of an NBD device (its backend identifier). */
  recoveryFile?: string;
  /** FUSE: the /dev/fuse descriptor and file mtime, for the keeper (lib/fuse/keeper.ts). */
  fuse?: { fd: number; mtimeSec: number };
  /** READs a reader thread answered by itself from the disk cache or the pinned pages. */
  directReads(): number;
  close(): Promise<void>;
  /** NBD: true while a file system is mounted from the device (in this mount namespace). */
  mounted?(): boolean;
  /**
   * NBD: stops serving as a crash would: our sockets closed, the device left connected (its
   * readers wait for a new server up to the dead-connection timeout) and its recovery file
   * kept, so `reattach` serves it again.
   */
  abandon?(): Promise<void>;
}

export interface ExportContext {
  runDir: string;
  layerIndex: number;
  /** Writes the device's recovery file and returns its path (new NBD devices only). */
  writeRecovery(): string;
  /** Take over this connected device (RECONFIGURE) instead of connecting a new one. */
  reattach?: { index: number; backendId: string };
  /** FUSE: serve the existing mount through this copy of its descriptor (server crashed). */
  fuseTakeover?: { fd: number; mtimeSec: number };
  /**
   * The EROFS block size `mount` read in the layer's superblock, if it did: a new NBD device
   * then needs no read of the layer before CONNECT (under TCG a registry GET, ~1 s).
   */
  erofsBlockBytes?: number;
  /** FUSE: let the kernel cache and read ahead on the file (tar layers; see lib/fuse/blob.ts). */
  fusePageCache?: boolean;
  /**
   * New NBD device: settles when the layer's head (the partition scan's pages, in its metadata
   * list) is pinned. The scan then waits for it instead of reading the head from the layer.
   */
  headPinned?: Promise<unknown>;
  /** NBD: the layer's pinned metadata pages, read into the device's page cache on a walk. */
  pinnedPages?: PinnedPages;
}

/**
 * Connections per NBD device (the kernel runs one queue per connection): one, as mount.erofs.
 * With several, a request could wait for the 10 s timeout although we had answered it: the
 * kernel reads each socket's replies in a work item of the device's WQ_MEM_RECLAIM workqueue
 * (nbdN-recv), one that runs as long as the socket lives. When the pool is slow to start
 * workers at CONNECT (the first mount after boot in the TCG guest), the workqueue's rescuer
 * takes every pending work item into its own list and runs them one after the other
 * (Linux 6.1 rescuer_thread): the first never returns, so the other sockets' replies were
 * never read. VM sched trace (docs/benchmarks.md, session 34): every reply read by the
 * rescuer `nbd0-recv`, the first READ submitted from the second CPU completed only after the
 * timeout dropped its socket. One reader thread serves all sockets anyway, and one socket
 * carries up to 128 requests at a time.
 */
const NBD_CONNECTIONS = 1;
/**
 * Kernel request timeout. It also decides how soon requests in flight when a server died are
 * resent after `reattach` (the kernel waits 30 s when it is 0). A reply later than this makes
 * the kernel drop the socket and requeue its requests, which wait for a new one (up to the
 * dead-connection timeout); the export then replaces the socket (see heal below), so a slow
 * registry costs a reconnect, never an I/O error.
 */
const NBD_TIMEOUT_S = Number(Deno.env.get("EROFS_OCI_NBD_TIMEOUT_S") ?? 10);
/**
 * Largest READ the reader thread answers itself: the request size the queue is tuned to
 * (lib/nbd/sysfs.ts); a larger one (a device tuned by hand) goes through the main thread.
 */
const NBD_DIRECT_MAX_READ_BYTES = DEFAULT_QUEUE_TUNING.maxSectorsKb * 1024;
/**
 * `EROFS_OCI_METADATA_READAHEAD=0`: metadata walks read the pinned pages one READ at a time, as
 * before lib/nbd/page_cache_warm.ts (for A/B benchmarks and its test's control).
 */
const METADATA_READAHEAD = Deno.env.get("EROFS_OCI_METADATA_READAHEAD") !== "0";
/** How long I/O waits for a replacement server after ours died (reattach window). */
const NBD_DEAD_CONN_TIMEOUT_S = 30 * 24 * 3600;

export async function exportLayer(
  backend: "nbd" | "fuse",
  source: Source,
  context: ExportContext,
): Promise<LayerExport> {
  if (backend === "fuse") {
    const dir = `${context.runDir}/fuse-${context.layerIndex}`;
    if (!context.fuseTakeover) Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const blob = await startFuseBlob(source, dir, {
      name: "layer.erofs",
      takeover: context.fuseTakeover,
      pageCache: context.fusePageCache,
    });
    return {
      blockPath: blob.filePath,
      // The connection an administrator can abort (/sys/fs/fuse/connections/N/abort).
      device: blob.connectionNumber === undefined
        ? `fuse-${context.layerIndex}`
        : `fuse:${blob.connectionNumber}`,
      fuse: { fd: blob.fd, mtimeSec: blob.fileMtimeSec },
      directReads: () => blob.stats().directReads,
      close: async () => {
        await blob.close();
        try {
          Deno.removeSync(dir);
        } catch { /* already gone */ }
      },
    };
  }

  // Phases of the attach, logged once it is done: the benchmark's mount timeline reads them.
  const startedMs = performance.now();
  const phaseMs: string[] = [];
  const phase = (name: string, sinceMs: number) =>
    phaseMs.push(`${name} ${Math.round(performance.now() - sinceMs)} ms`);
  // A new device's block size comes from the superblock `mount` checked, else from a read of
  // it, asked for now while the sockets and the recovery file are made (a registry read took
  // ~1 s of a 1.5-1.8 s attach in the TCG guest). The read also starts when the head is not
  // pinned by the partition scan's time: the scan after CONNECT (scanPartitionsNow) reads the
  // layer's first pages and then joins it. Never rejects.
  const knownBlockBytes = context.reattach ? undefined : context.erofsBlockBytes;
  const headBlockSize = context.reattach || (knownBlockBytes !== undefined && context.headPinned)
    ? undefined
    : nbdBlockSizeFor(source);
  // With a disk cache a reader thread answers the reads of bytes it holds (direct_conns.ts).
  const readable = isDirectReadable(source) ? source : undefined;
  const files = readable?.openDirectReads();
  let direct: DirectNbdConns | undefined;
  let kernelFds: number[];
  let conns: NbdConn[];
  if (readable && files) {
    ({ kernelFds, direct } = openDirectKernelConnections(
      NBD_CONNECTIONS,
      files,
      (ranges) => readable.noteDirectReads(ranges),
      { maxReadBytes: NBD_DIRECT_MAX_READ_BYTES },
    ));
    conns = direct.conns;
  } else {
    ({ kernelFds, conns } = await openKernelConnections(NBD_CONNECTIONS, context.runDir));
  }
  phase("sockets", startedMs);
  const serving = new Set<Promise<void>>();
  /** Sockets that replaced dropped ones (`heal`). */
  const healed: NbdConn[] = [];
  let closing = false;
  // Set once the device exists; a connection the kernel drops before that is a failed attach.
  // Assigned once the device exists, but read by connections started before that.
  // deno-lint-ignore prefer-const
  let heal: ((reason: string) => Promise<void>) | undefined;
  const serve = (conn: NbdConn) => {
    const done = serveTransmission(conn, source, { readOnly: true }).then(async (end) => {
      serving.delete(done);
      const replacement = healed.indexOf(conn);
      if (replacement >= 0) healed.splice(replacement, 1);
      if (closing || end.reason === "disconnect") return;
      // Closed before any request: the kernel did not take this socket. RECONFIGURE uses only
      // the device's dead slots and drops the other sockets (a device of mount.erofs has one
      // slot, we offer NBD_CONNECTIONS); replacing them would loop forever at full CPU.
      if (end.requests === 0 && !(conn instanceof DirectNbdConn && conn.servedDirectly > 0)) {
        console.log(`nbd connection of layer ${context.layerIndex} closed unused (${end.reason})`);
        return;
      }
      console.warn(`nbd connection of layer ${context.layerIndex} ended: ${end.reason}`);
      await heal?.(end.reason);
    });
    serving.add(done);
  };
  conns.forEach(serve);
  let index: number;
  let backendId: string;
  let detach: () => Promise<void>;
  try {
    if (context.reattach) {
      ({ index, backendId } = context.reattach);
      await reconfigureNbd(index, kernelFds, backendId, NBD_TIMEOUT_S);
      // No queue tuning: the device keeps the settings of its first attach (they persist
      // across connects), and from Linux 6.12 a queue write waits for the requests in flight,
      // which a reader's requeued request makes slow here (tuning is async since, see
      // tuneNbdQueue, but there is nothing to change).
      const reattached = index;
      detach = () => disconnectNbd(reattached);
    } else {
      // The recovery file exists before the device does: a crash right after CONNECT must
      // still be recoverable. Its path is the device's backend identifier.
      let sinceMs = performance.now();
      backendId = context.writeRecovery();
      phase("recovery file", sinceMs);
      try {
        sinceMs = performance.now();
        const blockSizeBytes = knownBlockBytes !== undefined
          ? nbdBlockSizeOf(knownBlockBytes)
          : await headBlockSize;
        phase("superblock", sinceMs);
        sinceMs = performance.now();
        const attachment = await attachNbd({
          sizeBytes: source.size,
          blockSizeBytes,
          socketFds: kernelFds,
          timeoutS: NBD_TIMEOUT_S,
          deadConnTimeoutS: NBD_DEAD_CONN_TIMEOUT_S,
          backendId,
          readOnly: true,
          headPinned: context.headPinned,
          onStep: (step) => {
            phase(step, sinceMs);
            sinceMs = performance.now();
          },
        });
        ({ index, detach } = attachment);
      } catch (error) {
        removeRecoveryFile(backendId);
        throw error;
      }
    }
  } catch (error) {
    for (const conn of conns) conn.close();
    await direct?.close();
    throw error;
  } finally {
    closeKernelFds(kernelFds);
  }
  const deviceIndex = index;
  const deviceBackendId = backendId;
  console.log(
    `nbd${deviceIndex}: ${context.reattach ? "reattached" : "attached"} in ${
      Math.round(performance.now() - startedMs)
    } ms (${phaseMs.join(", ")})`,
  );
  // The kernel shuts a connection whose reply came later than the request timeout (a slow
  // registry) and requeues its requests on the others; replace it with a fresh socket so the
  // device never runs out of connections.
  heal = async (reason) => {
    try {
      const fresh = await openKernelConnections(1, context.runDir);
      // Closed with the others: `abandon` (a signal while DIR is mounted) sends no DISCONNECT,
      // so a replacement left open kept its server waiting for requests for good.
      healed.push(...fresh.conns);
      fresh.conns.forEach(serve);
      try {
        await reconfigureNbd(deviceIndex, fresh.kernelFds, deviceBackendId, NBD_TIMEOUT_S);
      } finally {
        closeKernelFds(fresh.kernelFds);
      }
      console.log(`nbd${deviceIndex}: replaced a connection that ended (${reason})`);
    } catch (error) {
      console.error(`nbd${deviceIndex}: could not replace a dropped connection:`, error);
    }
  };
  const blockPath = nbdDevicePath(index);
  const warmer = context.pinnedPages && METADATA_READAHEAD
    ? PageCacheWarmer.onWalks(blockPath, context.pinnedPages)
    : undefined;
  return {
    blockPath,
    device: `nbd${index}`,
    recoveryFile: backendId,
    directReads: () => direct?.conns.reduce((sum, conn) => sum + conn.servedDirectly, 0) ?? 0,
    close: async () => {
      closing = true;
      warmer?.stop();
      await detach();
      removeRecoveryFile(deviceBackendId);
      await closeConns();
    },
    mounted: () => nbdDeviceMounted(deviceIndex),
    abandon: async () => {
      closing = true; // no heal: a dropped connection is what we want here
      warmer?.stop();
      await closeConns();
    },
  };

  async function closeConns(): Promise<void> {
    for (const conn of [...conns, ...healed]) {
      try {
        conn.close();
      } catch { /* closed by the kernel */ }
    }
    await Promise.allSettled([...serving]);
    await direct?.close();
  }
}

/**
 * True when mountinfo lists a file system on nbdN (an EROFS layer): found by device number,
 * not by the source path mount(2) was given. Reading mountinfo never touches the device.
 */
function nbdDeviceMounted(index: number): boolean {
  return readMountInfo().some((entry) => nbdIndexOfBlockDevice(entry.major, entry.minor) === index);
}
