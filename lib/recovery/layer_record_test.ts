import { equal, ok } from "node:assert/strict";
import { EROFS_UTILS_DEVICE_BYTES, sizeFitsDevice } from "./layer_record.ts";

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
