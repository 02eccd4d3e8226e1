import assert from "node:assert/strict";
import { OciError } from "../errors.ts";
import { type LayerDescriptor, selectLayers } from "./layers.ts";

const TAR = "application/vnd.oci.image.layer.v1.tar";
const layer = (index: number, mediaType = "application/vnd.erofs"): LayerDescriptor => ({
  index,
  digest: `sha256:${String(index).repeat(64).slice(0, 64)}`,
  sizeBytes: 4096,
  mediaType,
});
const image = { layers: [layer(0), layer(1, TAR), layer(2)] };

function rejects(fn: () => unknown, why: RegExp) {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof OciError, String(e));
    assert.match(e.message, why);
    return true;
  });
}

Deno.test("selectLayers: by index, by digest, all EROFS layers", () => {
  assert.deepEqual(selectLayers(image, { layer: 2 }), [layer(2)]);
  assert.deepEqual(selectLayers(image, { blob: layer(0).digest }), [layer(0)]);
  assert.deepEqual(selectLayers(image, {}), [layer(0), layer(2)]);
  assert.deepEqual(selectLayers(image, { anyMediaType: true }), image.layers);
  assert.deepEqual(selectLayers(image, { layer: 1, anyMediaType: true }), [layer(1, TAR)]);
});

Deno.test("selectLayers: errors say what is wrong", () => {
  rejects(
    () => selectLayers(image, { layer: 3 }),
    /layer 3 out of range: the image has 3 layers \(0\.\.2\)/,
  );
  rejects(() => selectLayers({ layers: [] }, { layer: 0 }), /has 0 layers/);
  rejects(() => selectLayers(image, { layer: -1 }), /out of range/);
  rejects(() => selectLayers(image, { layer: 1 }), /application\/vnd\.oci\.image\.layer\.v1\.tar/);
  rejects(() => selectLayers(image, { blob: layer(1).digest }), /media type/);
  rejects(() => selectLayers(image, { blob: `sha256:${"f".repeat(64)}` }), /not a layer/);
  rejects(() => selectLayers(image, { blob: "sha256:abc" }), /64/);
  rejects(() => selectLayers(image, { layer: 0, blob: layer(0).digest }), /not both/);
  rejects(
    () => selectLayers({ layers: [layer(0, TAR)] }, {}),
    /media types found: application\/vnd\.oci/,
  );
  rejects(() => selectLayers({ layers: [] }, {}), /no layers/);
});
