import assert from "node:assert/strict";
import { indexFileLimit } from "./tar_index_artifact.ts";
import { maxCheckpointsFor, ZINFO_CHECKPOINT_BYTES, ZINFO_HEADER_BYTES } from "../gzip/zinfo.ts";
import { MAX_INDEX_FILE_BYTES } from "../gzip/index_record.ts";

Deno.test("index artifact: a zinfo is refused before its download only beyond what its check allows", () => {
  for (const layerBytes of [0, 1000, 1 << 20, 100 << 20, 1 << 30, 64 << 30]) {
    const limit = indexFileLimit("zinfo", layerBytes);
    // Exactly the largest zinfo Zinfo.open accepts for the layer: its most checkpoints.
    assert.equal(
      limit,
      ZINFO_HEADER_BYTES + maxCheckpointsFor(layerBytes) * ZINFO_CHECKPOINT_BYTES,
    );
    assert.ok(limit <= MAX_INDEX_FILE_BYTES, `${layerBytes}: ${limit}`);
  }
  // A small layer's zinfo cannot be the 1 GiB other index files may be.
  assert.ok(indexFileLimit("zinfo", 1 << 20) < 150 << 20);
  assert.equal(indexFileLimit("other", 1 << 20), MAX_INDEX_FILE_BYTES);
});
