import assert from "node:assert/strict";
import { MountError, OciError } from "../errors.ts";
import { failureDetail, groupOutcomes, groupSubject } from "./reattach_detail.ts";
import type { ReattachOutcome } from "./reattach.ts";
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

Deno.test("reattach outcomes: a mount's layers refused for one reason are said once, naming them", () => {
  const limit = "this mount's 3 layers need about 40 open files; the limit is 39: raise it";
  const outcomes: ReattachOutcome[] = [
    { device: "nbd0", result: "failed", detail: limit, mount: "/mnt/app" },
    { device: "nbd1", result: "failed", detail: limit, mount: "/mnt/app" },
    { device: "nbd2", result: "failed", detail: limit, mount: "/mnt/app" },
    { device: "nbd3", result: "reattached", detail: "new server pid 7", mount: "/mnt/db" },
    { device: "nbd4", result: "reattached", detail: "new server pid 7", mount: "/mnt/db" },
    // Another mount refused for the same reason: its own line.
    { device: "nbd5", result: "failed", detail: limit, mount: "/mnt/other" },
    // Devices of no mount of ours (erofs-utils), and a FUSE mount (named by its directory).
    { device: "nbd6", result: "failed", detail: "corrupt (left untouched)" },
    { device: "/mnt/fuse", result: "failed", detail: "its FUSE connection is gone" },
  ];
  const lines = groupOutcomes(outcomes).map((g) => `${g.result} ${groupSubject(g)}: ${g.detail}`);
  assert.deepEqual(lines, [
    `failed /mnt/app (nbd0, nbd1, nbd2): ${limit}`,
    "reattached /mnt/db (nbd3, nbd4): new server pid 7",
    `failed /mnt/other (nbd5): ${limit}`,
    "failed nbd6: corrupt (left untouched)",
    "failed /mnt/fuse: its FUSE connection is gone",
  ]);
  // Different reasons within one mount stay apart.
  const mixed = groupOutcomes([
    { device: "nbd0", result: "failed", detail: "a", mount: "/m" },
    { device: "nbd1", result: "failed", detail: "b", mount: "/m" },
  ]);
  assert.deepEqual(mixed.map(groupSubject), ["/m (nbd0)", "/m (nbd1)"]);
});
