import assert from "node:assert/strict";
import { MountError, OciError } from "../errors.ts";
import { failureDetail } from "./reattach_detail.ts";
import { serverLogHint } from "./server_process.ts";

Deno.test("reattach's failure detail: rejected credentials say what helps, others as they are", () => {
  const rejected = new OciError("registry r.test rejected the given credentials (401)");
  assert.match(
    failureDetail(rejected),
    /^registry r\.test rejected the given credentials \(401\): give the current ones, e\.g\. `echo "\$TOKEN" \| erofs-oci reattach DIR --username USER --password-stdin`$/,
  );
  const unreadable = new OciError(
    "layer 0 cannot be read (registry r.test rejected the given credentials (401))",
    "reattach again once the registry answers",
  );
  assert.match(failureDetail(unreadable), /\(401\)\): give the current ones/);
  assert.equal(failureDetail(new Error("blob not found")), "blob not found");
  assert.equal(failureDetail("plain"), "plain");
});

Deno.test("reattach's failure detail: an error's hint (where the server's log was kept) is kept", () => {
  const failed = new MountError(
    "the mount server exited (code 1) before it was ready",
    "see its log (kept at /run/erofs-oci/failed/x.server.log)",
  );
  assert.equal(
    failureDetail(failed),
    "the mount server exited (code 1) before it was ready: see its log (kept at " +
      "/run/erofs-oci/failed/x.server.log)",
  );
});

Deno.test("a failed server start's hint: --foreground suggested to a mount only", () => {
  const kept = "/run/erofs-oci/failed/x.server.log";
  assert.equal(
    serverLogHint(kept, false, false),
    `see its log (kept at ${kept}) or mount with --foreground`,
  );
  assert.equal(serverLogHint(kept, true, false), `see its log (kept at ${kept})`);
  assert.equal(serverLogHint(kept, false, true), `see its log (kept at ${kept})`);
  assert.equal(serverLogHint(undefined, false, false), "mount with --foreground to see its output");
  assert.equal(serverLogHint(undefined, true, false), "see its output above");
  assert.doesNotMatch(serverLogHint(undefined, false, true), /foreground/);
});
