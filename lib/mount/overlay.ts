/**
 * overlayfs composition of layer mounts. `lowerDirsTopFirst` is in overlayfs order (leftmost
 * = top layer), the reverse of an OCI manifest's layer list.
 */
import { MountError } from "../errors.ts";
import { closeFd, cstr, libc, O_RDONLY, SysError, unwrap } from "../../ffi/libc.ts";
import { openFile } from "../../ffi/files.ts";
import { mount, MS_NODEV, MS_NOSUID, MS_RDONLY } from "../../ffi/mount.ts";
import { mountOffThread } from "../sys/mount_task.ts";

export interface OverlayOptions {
  /** Writable overlay: upper and work dir (same file system). Read-only without them. */
  upper?: string;
  work?: string;
  /** mount(2) flags besides read-only (MS_NOSUID, MS_NODEV; see mount_options.ts). */
  flags?: number;
  /** What mount(2) is given instead of `target` (a pinned /proc/self/fd path). */
  mountAt?: string;
  /**
   * The mount's source as mountinfo shows it (default "erofs-oci"): `erofs-oci:ID` names the
   * mount it belongs to, whatever its lower dirs look like (relative ones name no directory).
   */
  source?: string;
}

/**
 * What every overlay here is mounted with, after its dirs. Layers are hostile, and without
 * these the kernel's module defaults decide: with `redirect_always_follow=Y` (this host, and
 * CONFIG_OVERLAY_FS_REDIRECT_ALWAYS_FOLLOW's default) a lower directory carrying
 * `trusted.overlay.redirect` showed, in its place, what another path of the layers below holds
 * (even one an OCI whiteout deleted), and a host with `metacopy=Y` would honour
 * `trusted.overlay.metacopy` (one file's metadata over another's data). `nofollow` neither
 * follows nor creates redirects (a writable mount's rename of a lower directory fails with
 * EXDEV, as with the usual defaults); `metacopy=off` refuses a metacopy file (EPERM).
 * Whiteouts and opaque directories are untouched. Both exist since Linux 4.19 (the guest runs
 * 6.1). They change only what overlayfs reads, so mounts made before them are still found by
 * their lowerdir (newMountOn) and unmounted by their id.
 */
export const OVERLAY_HARDENING = ",redirect_dir=nofollow,metacopy=off";

/** The most of mount(2)'s option string the kernel copies: one page, its NUL included. */
const MOUNT_DATA_MAX_BYTES = 4095;
/** overlayfs's most lower layers (OVL_MAX_STACK). */
export const OVERLAY_MAX_LAYERS = 500;

/** The directory (in the mount's runtime dir) layer `index` of an overlay is mounted on. */
export function layerDirName(index: number): string {
  return `layer-${index}`;
}

/**
 * The layers an image may have for one overlay here: overlayfs's limit, and what fits in
 * mount(2)'s option string with the lower dirs named relative to their directory
 * (layerDirName), beside `upperWorkBytes` of upperdir and workdir and OVERLAY_HARDENING.
 */
export function overlayLayerLimit(upperWorkBytes = 0): number {
  let bytes = "lowerdir=".length + upperWorkBytes + OVERLAY_HARDENING.length;
  for (let count = 0; count < OVERLAY_MAX_LAYERS; count++) {
    bytes += layerDirName(count).length + (count ? 1 : 0);
    if (bytes > MOUNT_DATA_MAX_BYTES) return count;
  }
  return OVERLAY_MAX_LAYERS;
}

/**
 * The overlay mounted with its lower dirs named relative to their common directory, which
 * this process enters for the call: an image of 100+ layers under the runtime dir makes an
 * option string longer than the page mount(2) copies (the kernel then saw a cut path, ENOENT).
 * Synchronous, so no other code of this process runs while its working directory is moved.
 */
function mountWithRelativeLowers(
  target: string,
  lowerDirsTopFirst: string[],
  upperWork: string,
  flags: number,
  mountAt: string | undefined,
  source: string,
): void {
  const parent = lowerDirsTopFirst[0].slice(0, lowerDirsTopFirst[0].lastIndexOf("/"));
  const names = lowerDirsTopFirst.map((dir) => dir.slice(parent.length + 1));
  const data = `lowerdir=${names.join(":")}${upperWork}${OVERLAY_HARDENING}`;
  const special = names.find((name) => OVERLAY_SPECIAL.test(name));
  if (special !== undefined) {
    throw new MountError(`cannot use a path containing ',', ':' or '\\': ${parent}/${special}`);
  }
  if (
    !parent.startsWith("/") || names.some((name) => name.includes("/")) ||
    byteLength(data) > MOUNT_DATA_MAX_BYTES
  ) {
    throw new MountError(
      `cannot mount the overlay on ${target}: ${lowerDirsTopFirst.length} layers make an ` +
        `option string longer than mount(2) takes (${MOUNT_DATA_MAX_BYTES} bytes)`,
      "flatten the image (`erofs-oci convert IMAGE DEST --flatten`) or mount one layer (--layer N)",
    );
  }
  const here = openFile(".", O_RDONLY);
  try {
    unwrap(libc().chdir(cstr(parent)), "chdir", parent);
    try {
      mount(source, mountAt ?? target, "overlay", flags, data);
    } catch (error) {
      throw new MountError(
        `cannot mount the overlay on ${target}: ${(error as Error).message}`,
        undefined,
        { cause: error },
      );
    } finally {
      unwrap(libc().fchdir(here), "fchdir");
    }
  } finally {
    closeFd(here);
  }
}

/**
 * The lower dirs an overlay shows, top first. overlayfs merges the layers' roots whatever they
 * say, but an image whose layer has `.wh..wh..opq` at its root (an opaque root:
 * `trusted.overlay.opaque` "y" on the layer's root) means nothing below it shows through, as
 * `umoci unpack` and flattening agree: the layers under the topmost such layer are left out.
 */
export function visibleLowerDirs(lowerDirsTopFirst: string[]): string[] {
  const opaque = lowerDirsTopFirst.findIndex(hasOpaqueRoot);
  return opaque < 0 ? lowerDirsTopFirst : lowerDirsTopFirst.slice(0, opaque + 1);
}

function hasOpaqueRoot(dir: string): boolean {
  const value = new Uint8Array(2);
  const n = Number(
    libc().lgetxattr(cstr(dir), cstr("trusted.overlay.opaque"), value, BigInt(value.length)),
  );
  return n === 1 && value[0] === 0x79; // "y"
}

export { overlaySourceOf } from "../sys/mountinfo.ts";

/** What overlayfs's option parser treats specially in a path: ',' ':' and the escape '\\'. */
export const OVERLAY_SPECIAL = /[,:\\]/;

export async function mountOverlay(
  target: string,
  lowerDirsTopFirst: string[],
  options: OverlayOptions = {},
): Promise<void> {
  for (const dir of [options.upper ?? "", options.work ?? ""]) {
    // overlayfs options are separated by "," and lowerdir entries by ":", and '\' escapes the
    // next character: a path with any of them names another directory than the one given.
    if (OVERLAY_SPECIAL.test(dir)) {
      throw new MountError(`cannot use a path containing ',', ':' or '\\': ${dir}`);
    }
  }
  const writable = options.upper !== undefined && options.work !== undefined;
  if (lowerDirsTopFirst.length < (writable ? 1 : 2)) {
    throw new MountError("a read-only overlay needs at least two layers");
  }
  const upperWork = writable ? `,upperdir=${options.upper},workdir=${options.work}` : "";
  const data = `lowerdir=${lowerDirsTopFirst.join(":")}${upperWork}${OVERLAY_HARDENING}`;
  const flags = (options.flags ?? MS_NOSUID | MS_NODEV) | (writable ? 0 : MS_RDONLY);
  // The lower dirs are ours (the mount's runtime dir): one whose path holds a character
  // overlayfs reads specially (an EROFS_OCI_RUNTIME_DIR with a comma) goes by its name only,
  // as a long list does.
  if (
    byteLength(data) > MOUNT_DATA_MAX_BYTES ||
    lowerDirsTopFirst.some((d) => OVERLAY_SPECIAL.test(d))
  ) {
    mountWithRelativeLowers(
      target,
      lowerDirsTopFirst,
      upperWork,
      flags,
      options.mountAt,
      options.source ?? "erofs-oci",
    );
    return;
  }
  const result = await mountOffThread({
    source: options.source ?? "erofs-oci",
    target: options.mountAt ?? target,
    fsType: "overlay",
    flags,
    data,
  });
  if (result.errno !== 0) {
    const cause = new SysError("mount", result.errno, `overlay on ${target}`);
    throw new MountError(`cannot mount the overlay on ${target}: ${cause.message}`, undefined, {
      cause,
    });
  }
}

/** What the kernel copies of a string: its UTF-8 bytes. */
function byteLength(text: string): number {
  return new TextEncoder().encode(text).length;
}

/** The `,upperdir=…,workdir=…` part of a writable overlay's option string, in bytes. */
export function upperWorkBytes(upper: string | undefined, work: string | undefined): number {
  return upper === undefined || work === undefined
    ? 0
    : byteLength(`,upperdir=${upper},workdir=${work}`);
}
