/**
 * `mount`'s command line read and checked: the options' values, and the refusals of what
 * cannot work (options that do not go together, a size below the least, a metrics address that
 * cannot be taken, IMAGE and DIR swapped, DIR holding one of our mounts) before anything is set
 * up.
 */
import {
  expectPositionals,
  parseBlobDigest,
  parseCommandArgs,
  parseLayerIndex,
} from "./command.ts";
import { MountError, UsageError } from "../errors.ts";
import { parseReference } from "../oci/reference.ts";
import { MOUNT_OPTIONS } from "./mount_option_specs.ts";
import { parseSize } from "./size.ts";
import { checkDiskCacheOptions } from "./disk_cache_options.ts";
import { diskCacheSettings } from "../mount/layer_source.ts";
import {
  DEFAULT_MOUNT_CACHE_BYTES,
  type DiskCacheSettings,
  MIN_LAYER_CACHE_BYTES,
} from "../state/mount_spec.ts";
import { readStates } from "../state/mount_record.ts";
import { recordedMountPresent } from "../sys/mountinfo.ts";
import { RUNTIME_ROOT, RUNTIME_SETTING } from "../state/runtime_dirs.ts";
import { type MountTrust, parseMountTrust } from "../mount/mount_options.ts";
import { claimSocketPath, parseListenAddress, refuseSpecialSocketPath } from "../nbd/address.ts";
import { pathExists } from "../../ffi/files.ts";
import { metricsListenRefusal } from "../metrics/listen_refusal.ts";

function parseMountArgs(argv: string[]) {
  return parseCommandArgs("mount", argv, MOUNT_OPTIONS);
}

export type MountValues = ReturnType<typeof parseMountArgs>["values"];

/** What `mount IMAGE DIR [options]` asks for, its options checked. */
export interface MountArgs {
  image: string;
  dir: string;
  values: MountValues;
  layer?: number;
  cacheBytes: number;
  trust: MountTrust;
  /** The disk cache options over what the environment says (for useDiskCacheSettings). */
  disk: DiskCacheSettings;
}

export function readMountArgs(argv: string[]): MountArgs {
  const { values, positionals } = parseMountArgs(argv);
  const [image, dir] = expectPositionals("mount", positionals, ["IMAGE", "DIR"]);
  const layer = parseLayerIndex("mount", values.layer);
  parseBlobDigest("mount", values.blob);
  if ((values.upper === undefined) !== (values.work === undefined)) {
    throw new UsageError("mount: --upper and --work go together");
  }
  const cacheBytes = values["cache-size"] === undefined
    ? DEFAULT_MOUNT_CACHE_BYTES
    : parseSize(values["cache-size"], "--cache-size");
  if (cacheBytes < MIN_LAYER_CACHE_BYTES) {
    // Each layer's cache holds at least that much whatever was asked (server_layers.ts).
    throw new UsageError(
      `mount: --cache-size ${values["cache-size"]} is below the least a mount uses (` +
        `${MIN_LAYER_CACHE_BYTES >> 20}M)`,
    );
  }
  const trust = parseMountTrust(values, values.options);
  const sizes = checkDiskCacheOptions("mount", values);
  if (values["metrics-listen"] !== undefined) checkMetricsListen(values["metrics-listen"]);
  // The options over what the environment says; the detached server inherits the result.
  const disk = diskCacheSettings();
  if (values["fetch-all"]) disk.fetchAll = true;
  if (sizes.maxBytes !== undefined) disk.maxBytes = sizes.maxBytes;
  if (sizes.keepFreeBytes !== undefined) disk.keepFreeBytes = sizes.keepFreeBytes;
  return { image, dir, values, layer, cacheBytes, trust, disk };
}

/**
 * --metrics-listen checked where the user sees the answer: a bad address is a usage error, and
 * one that cannot be taken (a port in use, a missing directory, a path that is not a socket or
 * is another server's) a refusal before anything starts. Binding and closing leaves the address
 * free for another process meanwhile (a concurrent mount with the same one): the server's own
 * bind then fails the mount before it is ready (startServerMetrics); this is the fast case.
 */
function checkMetricsListen(spec: string): void {
  const addr = parseListenAddress(spec, "--metrics-listen");
  const where = addr.transport === "tcp" ? `${addr.hostname}:${addr.port}` : addr.path;
  try {
    if (addr.transport === "tcp") {
      if (addr.port !== 0) Deno.listen({ hostname: addr.hostname, port: addr.port }).close();
    } else {
      refuseSpecialSocketPath(addr.path);
      const slash = addr.path.lastIndexOf("/");
      const dir = slash < 0 ? "." : slash === 0 ? "/" : addr.path.slice(0, slash);
      // The runtime dir and those below it are made by the mount itself.
      const made = [RUNTIME_ROOT, RUNTIME_SETTING].some((root) =>
        dir === root || dir.startsWith(`${root}/`)
      );
      if (!made && !Deno.statSync(dir).isDirectory) throw new Error(`${dir} is not a directory`);
      // A file or directory there, or another server's socket (a leftover one goes); in a
      // runtime dir the mount has yet to make, nothing is there to claim.
      if (!made || pathExists(dir)) claimSocketPath(addr.path);
    }
  } catch (error) {
    // claimSocketPath's refusals say "cannot listen on PATH" themselves: not twice.
    const said = `cannot listen on ${where}: `;
    const message = (error as Error).message;
    throw metricsListenRefusal(spec, message.startsWith(said) ? message : said + message);
  }
}

/**
 * `mount DIR IMAGE`, the order swapped: said so, instead of "DIR does not exist: mkdir -p" (a
 * directory named like the reference, then "a directory, not an image").
 */
export function refuseSwappedArguments(image: string, dir: string): void {
  try {
    Deno.statSync(dir);
    return; // DIR exists: whatever it is, checkMountTarget judges it
  } catch { /* missing: maybe a reference */ }
  try {
    if (!Deno.statSync(image).isDirectory) return;
    parseReference(dir);
  } catch {
    return;
  }
  throw new UsageError(
    `mount: ${image} is a directory and ${dir} an image reference: IMAGE comes first`,
    `erofs-oci mount ${dir} ${image}`,
  );
}

/** DIR holding one of our mounts: said so (it was "not empty", which hid why). */
export function refuseOurMountPoint(dir: string): void {
  let real: string;
  try {
    real = Deno.realPathSync(dir);
  } catch {
    return; // checkMountTarget says what is wrong with it
  }
  const ours = readStates().find((state) => state.target === real);
  if (ours && !recordedMountPresent(ours)) {
    // Its mount gone (an umount killed half-way, another tool's umount): only the record
    // stays, which `umount DIR` clears (with the server and runtime files, if any are left).
    throw new MountError(
      `a record of an earlier mount at ${dir} remains (not mounted; ${ours.image})`,
      `run \`erofs-oci umount ${dir}\` to clear it`,
    );
  }
  if (ours) {
    throw new MountError(
      `${dir} is already mounted by erofs-oci (${ours.image})`,
      `unmount it first: erofs-oci umount ${dir}`,
    );
  }
}
