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
/** The server's own runtime, stdio, control socket, log and reader thread (measured 33). */
const SERVER_BASE_DESCRIPTORS = 40;

/** About how many descriptors a FUSE server of `layers` layers holds once ready. */
export function fuseServerDescriptors(layers: number): number {
  return SERVER_BASE_DESCRIPTORS + FUSE_DESCRIPTORS_PER_LAYER * layers;
}

/**
 * Refuses, before a server is started, a FUSE mount of `layers` layers that the open-file
 * limit would cut short. `what` names the layers' owner ("this image", "this mount"). NBD
 * servers hold a different set per layer, not measured here: they are left to fail with
 * their own error.
 */
export function checkOpenFileLimit(
  backend: "nbd" | "fuse",
  layers: number,
  what: string,
  limit = openFileLimits().hard,
): void {
  if (backend !== "fuse") return;
  const needed = fuseServerDescriptors(layers);
  if (limit >= needed) return;
  const counted = layers === 1 ? "1 layer needs" : `${layers} layers need`;
  throw new MountError(
    `${what}'s ${counted} about ${needed} open files; the limit is ${limit}`,
    `raise it (ulimit -n ${needed})`,
  );
}
