import assert from "node:assert/strict";
import { OciError } from "../errors.ts";
import { failureDetail } from "./reattach_detail.ts";

Deno.test("reattach's failure detail: rejected credentials say what helps, others as they are", () => {
  const rejected = new OciError("registry r.test rejected the given credentials (401)");
  assert.match(
    failureDetail(rejected),
    /^registry r\.test rejected the given credentials \(401\): give the current ones, e\.g\. `echo "\$TOKEN" \| erofs-oci reattach DIR --username USER --password-stdin`$/,
  );
  assert.equal(failureDetail(new Error("blob not found")), "blob not found");
  assert.equal(failureDetail("plain"), "plain");
});
