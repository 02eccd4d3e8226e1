/**
 * The open files a mount server needs, checked against the limit before one is started: a
 * server that runs out of descriptors half-way fails in whichever call came first (pipe2,
 * socket, opendir), or inside the runtime (a panic), and says nothing of the limit.
 */
import { openFileLimits } from "../../ffi/process.ts";
import { MountError } from "../errors.ts";

/**
 * Per FUSE layer at ready: its /dev/fuse descriptor and the one handed to the keeper, the
 * source's cache files and registry connection (the process's one reader thread is in the
 * base). Measured 9 (1, 10, 20, 40 layers: 42, 122, 212, 392 descriptors at ready); 18 when
 * each layer had its own reader thread.
 */
const FUSE_DESCRIPTORS_PER_LAYER = 10;
/**
 * Per NBD layer at ready: its /dev/nbdN, 2 sockets, 4 cache files and 4 in-memory ones
 * (/dev/shm), and its own reader thread's runtime (2 epolls, an eventfd, a pipe, /dev/null).
 * Measured 16 (1, 10, 40 layers: 41, 185, 665 descriptors at ready, the same after a read from
 * every layer; tests/vm/nbd_open_files_test.ts); 2 more for the kernel's socket end held while
 * a device attaches and a connection replaced while the old one still closes.
 */
const NBD_DESCRIPTORS_PER_LAYER = 18;
/**
 * The server's own runtime, stdio, control socket and log, and FUSE's one reader thread
 * (measured 33 for FUSE, 25 for NBD).
 */
const SERVER_BASE_DESCRIPTORS = 40;

/** About how many descriptors a FUSE server of `layers` layers holds once ready. */
export function fuseServerDescriptors(layers: number): number {
  return SERVER_BASE_DESCRIPTORS + FUSE_DESCRIPTORS_PER_LAYER * layers;
}

/** About how many descriptors an NBD server of `layers` layers holds once ready. */
export function nbdServerDescriptors(layers: number): number {
  return SERVER_BASE_DESCRIPTORS + NBD_DESCRIPTORS_PER_LAYER * layers;
}

/**
 * Refuses, before a server is started, a mount of `layers` layers that the open-file limit
 * would cut short. `what` names the layers' owner ("this image", "this mount").
 */
export function checkOpenFileLimit(
  backend: "nbd" | "fuse",
  layers: number,
  what: string,
  limit = openFileLimits().hard,
): void {
  const needed = backend === "fuse" ? fuseServerDescriptors(layers) : nbdServerDescriptors(layers);
  if (limit >= needed) return;
  const counted = layers === 1 ? "1 layer needs" : `${layers} layers need`;
  throw new MountError(
    `${what}'s ${counted} about ${needed} open files; the limit is ${limit}`,
    `raise it (ulimit -n ${needed})`,
  );
}
