/** Tar-index layers need EROFS sub-page blocks (Linux 6.4): older kernels are refused early. */
import assert from "node:assert/strict";
import { checkKernelMountsTarIndex } from "./tar_index_source.ts";
import { MountError } from "../errors.ts";

Deno.test("tar index: kernels before 6.4 are refused in one line, later ones pass", () => {
  for (const old of ["6.1.0-57-amd64", "5.15.0", "6.3.13"]) {
    assert.throws(
      () => checkKernelMountsTarIndex(old),
      (e) => e instanceof MountError && /from Linux 6\.4 on/.test(e.message),
      old,
    );
  }
  for (const fine of ["6.4.0", "6.18.0-1-amd64", "7.0.0", "not-a-version"]) {
    checkKernelMountsTarIndex(fine);
  }
});
