/** Which layout a tar layer's device gets: [meta][tar] from Linux 6.4 on, 4 KiB before. */
import assert from "node:assert/strict";
import { chooseTarDeviceLayout } from "./tar_layout.ts";
import { MountError, UsageError } from "../errors.ts";

Deno.test("tar layout: 512 from 6.4 on, 4k before; EROFS_OCI_TAR_LAYOUT forces or is refused", () => {
  for (const old of ["6.1.0-57-amd64", "5.15.0", "6.3.13"]) {
    assert.equal(chooseTarDeviceLayout(old, "auto"), "4k", old);
    assert.equal(chooseTarDeviceLayout(old, ""), "4k", old);
    assert.equal(chooseTarDeviceLayout(old, "4k"), "4k", old);
    assert.throws(
      () => chooseTarDeviceLayout(old, "512"),
      (e) => e instanceof MountError && /EROFS_OCI_TAR_LAYOUT=512/.test(e.message),
    );
  }
  for (const fine of ["6.4.0", "6.18.0-1-amd64", "7.0.0", "not-a-version"]) {
    assert.equal(chooseTarDeviceLayout(fine, "auto"), "512", fine);
    assert.equal(chooseTarDeviceLayout(fine, "512"), "512", fine);
    assert.equal(chooseTarDeviceLayout(fine, "4k"), "4k", fine);
  }
  assert.throws(() => chooseTarDeviceLayout("6.1.0", "4096"), UsageError);
});
