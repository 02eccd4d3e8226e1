/**
 * The one translation between a mount's LayerSpec and a recovery record (+ companion facts),
 * used by `mount` to write the file and by `reattach` to rebuild the same source, so the two
 * cannot drift apart.
 */
import { FormatError, OciError } from "../errors.ts";
import { RegistryClient } from "../oci/client.ts";
import { DIGEST_PATTERN, parseReference } from "../oci/reference.ts";
import { selectLayers } from "../oci/layers.ts";
import { REGISTRY_CONFIG_DIR_ENV } from "../oci/hosts_config.ts";
import type { LayerSpec } from "../state/mount_spec.ts";
import type { ChunkTableSpec } from "../verify/layer_tables.ts";
import type { Credentials } from "../oci/docker_config.ts";
import type { RecoveryRecord } from "../state/recovery_record.ts";
import type { RecoveryExtra } from "../state/recovery_store.ts";
import { EROFS_SUPER_END } from "../erofs/superblock.ts";
import { sharedDiskCache } from "../mount/layer_source.ts";
import { registryOrigin } from "../source/disk_cache_names.ts";
import {
  localTarIndexLayerForRecord,
  tarIndexLayerForRecord,
  tarIndexRecordForLayer,
} from "./tarindex_record.ts";
import { headBlobSize, registryLayer } from "./registry_layer.ts";
import { identityDifferences, mountedIdentity, readImageIdentity } from "./erofs_identity.ts";

const VERIFY_DEADLINE_MS = 10_000;

/**
 * Size of every NBD device erofs-utils 1.9 connects, whatever the image: INT64_MAX >> 9 blocks
 * of 512 bytes (its /sys/block/nbdN/size reads 18014398509481983). Past 2^53, so written the
 * way nbdSizeBytes computes it to compare equal. Such a size says nothing about the content.
 */
export const EROFS_UTILS_DEVICE_BYTES = Number((2n ** 63n - 1n) >> 9n) * 512;

/** True when a source of `sizeBytes` can be the content of a device of `deviceSizeBytes`. */
export function sizeFitsDevice(sizeBytes: number, deviceSizeBytes: number): boolean {
  if (deviceSizeBytes === EROFS_UTILS_DEVICE_BYTES) return sizeBytes <= deviceSizeBytes;
  // erofs-oci's devices: the source size rounded up to the block size.
  return sizeBytes <= deviceSizeBytes && deviceSizeBytes - sizeBytes < 4096;
}

/** True when the registry could not be asked at all (down, unreachable, 5xx): worth waiting. */
export function registryUnreachable(error: unknown): boolean {
  if (!(error instanceof OciError)) return false;
  if (error.status !== undefined) return error.status >= 500;
  // The registry, where it redirected a GET (its storage), or its token server.
  return error.message.startsWith("cannot reach ");
}

/**
 * The LayerSpec of a digest-pinned record built without asking the registry, for a server
 * that waits until the registry is back and verifies then. Undefined when the record needs
 * the registry to be understood (a layer index).
 */
export function unverifiedLayer(
  record: RecoveryRecord,
  extra: RecoveryExtra,
  deviceSizeBytes: number,
): { layer: LayerSpec; credentials?: Credentials } | undefined {
  if (record.kind !== "OCI_NATIVE_BLOB") return undefined;
  // A device of erofs-utils has no size of its own: without ours, only the registry knows.
  const sizeBytes = extra.sizeBytes ??
    (deviceSizeBytes === EROFS_UTILS_DEVICE_BYTES ? undefined : deviceSizeBytes);
  if (sizeBytes === undefined) return undefined;
  const ref = parseReference(record.reference);
  return registryLayer(record, {
    layerIndex: extra.layerIndex ?? 0,
    digest: record.digest,
    mediaType: "application/vnd.erofs",
    sizeBytes,
    plainHttp: extra.plainHttp ?? new RegistryClient(ref.registry).plainHttp,
    ...recordedChunkTable(extra),
  });
}

/**
 * A mount made with EROFS_OCI_REGISTRY_CONFIG_DIR keeps its mirrors after reattach even when
 * reattach (a shell, a systemd unit) runs without it: the recorded directory is taken into this
 * process's environment, where the clients made here and the server started next read it. An
 * explicit setting of the reattach process wins.
 */
function adoptRegistryConfigDir(extra: RecoveryExtra): void {
  const dir = extra.registryConfigDir;
  if (typeof dir !== "string" || !dir.startsWith("/") || Deno.env.get(REGISTRY_CONFIG_DIR_ENV)) {
    return;
  }
  Deno.env.set(REGISTRY_CONFIG_DIR_ENV, dir);
}

/** Record for a layer: the resolved digest, never a layer index (a tag may move). */
export function recordForLayer(
  layer: LayerSpec,
  credentials: Credentials | undefined,
  mountId: string,
  layerIndex: number,
): { record: RecoveryRecord; extra: RecoveryExtra } {
  const extra: RecoveryExtra = { mountId, layerIndex, sizeBytes: layer.sizeBytes };
  const configDir = Deno.env.get(REGISTRY_CONFIG_DIR_ENV);
  if (configDir && layer.kind === "registry") extra.registryConfigDir = configDir;
  if (layer.tarIndex) {
    return tarIndexRecordForLayer({ ...layer, tarIndex: layer.tarIndex }, credentials, extra);
  }
  if (layer.kind === "local") {
    const local = layer.digest ? { ...extra, digest: layer.digest } : extra;
    return { record: { kind: "LOCAL", path: layer.path }, extra: local };
  }
  return {
    record: {
      kind: "OCI_NATIVE_BLOB",
      reference: layer.reference,
      platform: layer.platform,
      digest: layer.digest,
      credentials,
    },
    extra: {
      ...extra,
      plainHttp: layer.plainHttp,
      ...(layer.chunkTable ? { chunkTable: layer.chunkTable } : {}),
    },
  };
}

/** A recorded chunk-digest table, if well-formed: a reattached server keeps verifying. */
function recordedChunkTable(extra: RecoveryExtra): { chunkTable?: ChunkTableSpec } {
  const t = extra.chunkTable;
  if (
    typeof t !== "object" || t === null || typeof t.digest !== "string" ||
    !DIGEST_PATTERN.test(t.digest) || typeof t.path !== "string" || !t.path.startsWith("/")
  ) return {};
  return { chunkTable: { digest: t.digest, path: t.path, bound: t.bound === true } };
}

/** How layerForRecord compares the new source with what the device served. */
export interface DeviceCheck {
  /** N of /dev/nbdN: its mounted EROFS (if any) is what the new source must equal. */
  deviceIndex: number;
  /** Serve the record's image even when it differs from the mounted one (explicit override). */
  acceptChangedImage?: boolean;
}

/**
 * Rebuilds the LayerSpec of a recorded device and checks it still matches: the local file
 * exists with the device's size, or the registry still has the blob with that size (a digest
 * names its content, so the same digest is the same bytes). A registry layer must also have the
 * superblock identity of the EROFS mounted from the device (see erofs_identity.ts): erofs-utils'
 * OCI_LAYER records name a tag and a layer index, and its devices are 2^63 bytes whatever the
 * image, so without this a moved tag would slip a different image under a mounted file system.
 */
export async function layerForRecord(
  record: RecoveryRecord,
  extra: RecoveryExtra,
  deviceSizeBytes: number,
  check?: DeviceCheck,
): Promise<{ layer: LayerSpec; credentials?: Credentials }> {
  const sizeMatches = (size: number) => sizeFitsDevice(size, deviceSizeBytes);
  adoptRegistryConfigDir(extra);
  if (record.kind === "LOCAL") {
    let size: number;
    try {
      size = Deno.statSync(record.path).size;
    } catch (error) {
      throw new FormatError(`image ${record.path} is gone: ${(error as Error).message}`);
    }
    if (!sizeMatches(size)) {
      throw new FormatError(
        `image ${record.path} changed size (${size} bytes, device has ${deviceSizeBytes})`,
      );
    }
    if (check && !check.acceptChangedImage && size >= EROFS_SUPER_END) {
      const path = record.path;
      await checkSameImage(
        { name: `image ${path}`, sizeBytes: size, byTag: false },
        (offset, length) => readLocal(path, offset, length),
        check.deviceIndex,
      );
    }
    const digest = typeof extra.digest === "string" && DIGEST_PATTERN.test(extra.digest)
      ? extra.digest
      : undefined;
    return { layer: { kind: "local", path: record.path, sizeBytes: size, digest } };
  }
  if (record.kind === "TARINDEX_OCI_BLOB") {
    return await tarIndexLayerForRecord(record, extra, sizeMatches, VERIFY_DEADLINE_MS);
  }
  if (record.kind === "TARINDEX_LOCAL") {
    return await localTarIndexLayerForRecord(record, extra, sizeMatches);
  }
  const ref = parseReference(record.reference);
  const client = new RegistryClient(ref.registry, {
    plainHttp: extra.plainHttp,
    credentials: record.credentials,
    // reattach decides quickly whether to wait for an unreachable registry (see below).
    deadlineMs: VERIFY_DEADLINE_MS,
  });
  let digest: string;
  let layerIndex = extra.layerIndex ?? 0;
  let mediaType = "application/vnd.erofs";
  if (record.kind === "OCI_LAYER") {
    // erofs-utils records an index: resolve it again (the best that record allows).
    const image = await client.resolveImage(ref, record.platform || undefined);
    const [layer] = selectLayers(image, { layer: record.layerIndex, anyMediaType: true });
    digest = layer.digest;
    layerIndex = layer.index;
    mediaType = layer.mediaType;
  } else {
    digest = record.digest;
  }
  const size = await headBlobSize(
    client,
    ref.repository,
    digest,
    `${ref.registry}/${ref.repository}`,
  );
  if (!sizeMatches(size)) {
    throw new OciError(
      `blob ${digest} has ${size} bytes but the device has ${deviceSizeBytes}: not the mounted data`,
    );
  }
  if (check && !check.acceptChangedImage) {
    const image = { name: record.reference, sizeBytes: size, byTag: record.kind === "OCI_LAYER" };
    const fromRegistry = (offset: number, length: number) =>
      client.readBlobRange(ref.repository, digest, offset, length);
    let cacheRead = false;
    try {
      // Bytes the disk cache holds for this digest and registry came from it: no GET for them.
      await checkSameImage(image, (offset, length) => {
        const kept = sharedDiskCache()?.readIfPresent(
          { digest, origin: registryOrigin(ref.registry, client.plainHttp) },
          size,
          offset,
          length,
        );
        if (!kept) return fromRegistry(offset, length);
        cacheRead = true;
        return Promise.resolve(kept);
      }, check.deviceIndex);
    } catch (error) {
      // ...unless they are what differs: the cache file may be damaged, the registry decides,
      // and kept bytes unlike its are dropped (a table-less layer's are served unchecked).
      if (!cacheRead) throw error;
      await checkSameImage(image, async (offset, length) => {
        const bytes = await fromRegistry(offset, length);
        sharedDiskCache()?.dropIfUnlike(
          { digest, origin: registryOrigin(ref.registry, client.plainHttp) },
          size,
          offset,
          bytes,
        );
        return bytes;
      }, check.deviceIndex);
    }
  }
  return registryLayer(record, {
    layerIndex,
    digest,
    mediaType,
    sizeBytes: size,
    plainHttp: client.plainHttp,
    ...recordedChunkTable(extra),
  });
}

/**
 * Refuses an image whose superblock differs from the EROFS mounted from nbdN. A record that
 * names a tag (OCI_LAYER) is refused as well when no mount shows what the device served; other
 * records are then still pinned by their digest (or, for a local file, by its size).
 */
async function checkSameImage(
  image: { name: string; sizeBytes: number; byTag: boolean },
  read: (offset: number, length: number) => Promise<Uint8Array>,
  deviceIndex: number,
): Promise<void> {
  const override = "pass --accept-changed-image to serve it anyway, or unmount and mount again";
  const mounted = mountedIdentity(`/dev/nbd${deviceIndex}`);
  if (!mounted) {
    if (!image.byTag) return;
    throw new OciError(
      `${image.name} is recorded by tag and nbd${deviceIndex} has no EROFS mount here ` +
        `to compare the image with: ${override}`,
    );
  }
  const differences = identityDifferences(
    mounted.identity,
    await readImageIdentity(read, image.sizeBytes, image.name),
  );
  if (differences.length === 0) return;
  throw new OciError(
    `${image.name} now ${image.byTag ? "resolves to" : "is"} a different image than the one ` +
      `mounted at ${mounted.mountPoint} (${differences.join(", ")}): ${override}`,
  );
}

/** Exactly `length` bytes at `offset` of a local image file. */
async function readLocal(path: string, offset: number, length: number): Promise<Uint8Array> {
  const file = await Deno.open(path, { read: true });
  try {
    await file.seek(offset, Deno.SeekMode.Start);
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const n = await file.read(out.subarray(done));
      if (n === null) throw new FormatError(`image ${path} ends before byte ${offset + length}`);
      done += n;
    }
    return out;
  } finally {
    file.close();
  }
}
