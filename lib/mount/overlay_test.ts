import { equal, ok } from "node:assert/strict";
import { overlayLayerLimit, upperWorkBytes } from "./overlay.ts";

Deno.test("overlayLayerLimit: what fits mount(2)'s page, upperdir and workdir included, in bytes", () => {
  // lowerdir=layer-0:layer-1:…,redirect_dir=nofollow,metacopy=off: 416 names fit in 4095 bytes.
  equal(overlayLayerLimit(), 416);
  const ascii = upperWorkBytes("/u".repeat(200), "/w");
  const wide = upperWorkBytes("/é".repeat(200), "/w"); // two bytes each: counted as such
  ok(wide > ascii);
  ok(overlayLayerLimit(wide) < overlayLayerLimit(ascii));
  ok(overlayLayerLimit(ascii) < 416);
  equal(upperWorkBytes(undefined, "/w"), 0, "read-only: nothing beside the lower dirs");
});
