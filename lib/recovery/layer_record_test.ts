import { deepEqual, equal, ok } from "node:assert/strict";
import {
  EROFS_UTILS_DEVICE_BYTES,
  layerForRecord,
  recordForLayer,
  sizeFitsDevice,
} from "./layer_record.ts";

Deno.test("a device of mount.erofs 1.9.3 (fixed huge size) fits any blob", () => {
  // /sys/block/nbdN/size of a device mount.erofs connected, as nbdSizeBytes turns it to bytes.
  equal(Number("18014398509481983") * 512, EROFS_UTILS_DEVICE_BYTES);
  ok(sizeFitsDevice(1400832, EROFS_UTILS_DEVICE_BYTES));
  ok(sizeFitsDevice(0, EROFS_UTILS_DEVICE_BYTES));
});

Deno.test("a device of erofs-oci fits only its source rounded up to 4 KiB", () => {
  ok(sizeFitsDevice(1400832, 1400832));
  ok(sizeFitsDevice(1400833, 1404928));
  ok(!sizeFitsDevice(1400832, 1404928 + 4096));
  ok(!sizeFitsDevice(1404929, 1404928));
});

Deno.test("an OCI layout layer keeps its digest across a recovery record", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-record-" });
  try {
    const path = `${dir}/blob`;
    await Deno.writeFile(path, new Uint8Array(8192));
    const digest = `sha256:${"a".repeat(64)}`;
    const { record, extra } = recordForLayer(
      { kind: "local", path, sizeBytes: 8192, digest },
      undefined,
      "mount-1",
      0,
    );
    equal(extra.digest, digest);
    // Through JSON, as the companion file stores it; no device check (nothing is mounted).
    const stored = JSON.parse(JSON.stringify(extra));
    const { layer } = await layerForRecord(record, stored, 8192);
    deepEqual(layer, { kind: "local", path, sizeBytes: 8192, digest });
    const bad = await layerForRecord(record, { ...stored, digest: "sha256:../x" }, 8192);
    equal(bad.layer.kind === "local" && bad.layer.digest, undefined);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
