import assert from "node:assert/strict";
import { foreignIndexNotices } from "./tar_indexes.ts";

Deno.test("foreignIndexNotices: an index without piece digests is not said to check reads", () => {
  const notices = foreignIndexNotices([
    { layerIndex: 0, tarIndex: { meta: "m0", pieces: "p0", origin: "registry" } },
    { layerIndex: 1, tarIndex: { meta: "m1", origin: "registry" } },
    { layerIndex: 2, tarIndex: { meta: "m2", origin: "files" } },
    { layerIndex: 3, tarIndex: { meta: "m3", pieces: "p3", origin: "here" } },
    { layerIndex: 4, tarIndex: { meta: "m4", pieces: "p4", origin: "registry" } },
  ]);
  assert.equal(notices.length, 3, notices.join("\n"));
  const checked = notices.find((n) => n.includes("checked only against the index's own piece"));
  assert.match(checked!, /^layers 0, 4: tar index from the registry/);
  const unchecked = notices.filter((n) => n.includes("has no piece digests"));
  assert.deepEqual(unchecked.map((n) => n.split(":")[0]).sort(), ["layer 1", "layer 2"]);
  assert.ok(notices.every((n) => !n.startsWith("layer 3")), "an index made here is not noted");
});
