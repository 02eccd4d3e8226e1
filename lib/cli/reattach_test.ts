import assert from "node:assert/strict";
import { reportOutcomes } from "./reattach.ts";
import type { ReattachOutcome } from "../daemon/reattach.ts";

/** What reportOutcomes prints: stdout's and stderr's lines, and the exit code. */
function report(outcomes: ReattachOutcome[], json = false) {
  const stdout: string[] = [], stderr: string[] = [];
  const { log, error } = console;
  console.log = (...parts: unknown[]) => stdout.push(parts.join(" "));
  console.error = (...parts: unknown[]) => stderr.push(parts.join(" "));
  try {
    return { code: reportOutcomes(outcomes, json), stdout, stderr };
  } finally {
    Object.assign(console, { log, error });
  }
}

const LIMIT = "this mount's 3 layers need about 40 open files; the limit is 39: raise it " +
  "(ulimit -n 40)";

Deno.test("reattach output: an NBD mount refused for one reason says it once, naming its devices", () => {
  const { code, stdout, stderr } = report([
    { device: "nbd0", result: "failed", detail: LIMIT, mount: "/mnt/app" },
    { device: "nbd1", result: "failed", detail: LIMIT, mount: "/mnt/app" },
    { device: "nbd2", result: "failed", detail: LIMIT, mount: "/mnt/app" },
    { device: "nbd3", result: "reattached", detail: "new server pid 7", mount: "/mnt/db" },
  ]);
  assert.equal(code, 1);
  // The reason and its hint once, on stderr only (it was in the table and on stderr, per device).
  assert.deepEqual(stderr, [`erofs-oci: /mnt/app (nbd0, nbd1, nbd2): ${LIMIT}`]);
  assert.deepEqual(stdout, [
    "DEVICE  RESULT      DETAIL",
    "nbd0    failed      see below",
    "nbd1    failed      see below",
    "nbd2    failed      see below",
    "nbd3    reattached  new server pid 7",
  ]);
});

Deno.test("reattach output: a FUSE mount's refusal once, by its directory; none exits 0", () => {
  const gone = "its FUSE connection is gone (no keeper): unmount it and mount again";
  const refused = report([{ device: "/mnt/fuse", result: "failed", detail: gone }]);
  assert.equal(refused.code, 1);
  assert.deepEqual(refused.stderr, [`erofs-oci: /mnt/fuse: ${gone}`]);
  assert.equal(refused.stdout.join("\n").includes("no keeper"), false, refused.stdout.join("\n"));

  const fine = report([{ device: "nbd0", result: "alive", detail: "served by pid 9, left alone" }]);
  assert.deepEqual([fine.code, fine.stderr], [0, []]);
  // JSON keeps each device's detail (for scripts); the refusal is still one line on stderr.
  const json = report([
    { device: "nbd0", result: "failed", detail: LIMIT, mount: "/mnt/app" },
    { device: "nbd1", result: "failed", detail: LIMIT, mount: "/mnt/app" },
  ], true);
  assert.equal(JSON.parse(json.stdout.join("\n")).length, 2);
  assert.deepEqual(json.stderr, [`erofs-oci: /mnt/app (nbd0, nbd1): ${LIMIT}`]);
});
