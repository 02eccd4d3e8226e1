import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { capped, clipped, layerList, MAX_MESSAGE_CHARS } from "./text.ts";

Deno.test("layerList: runs as ranges, at most 8 parts, then how many more", () => {
  assertEquals(layerList([]), "no layers");
  assertEquals(layerList([3]), "layer 3");
  assertEquals(layerList([0, 2, 5, 6, 7, 8, 9]), "layers 0, 2, 5–9");
  assertEquals(layerList(Array.from({ length: 20_000 }, (_, i) => i)), "layers 0–19999");
  const odd = Array.from({ length: 100 }, (_, i) => 2 * i);
  assertEquals(layerList(odd), "layers 0, 2, 4, 6, 8, 10, 12, 14 and 92 more");
});

Deno.test("clipped: a hostile value is cut after maxChars and made printable", () => {
  assertEquals(clipped("sha256:abc"), "sha256:abc");
  assertEquals(clipped("x".repeat(1 << 20)), `${"x".repeat(100)}…`);
  assertEquals(clipped("ab\x1b[2Jcd", 4), "ab\\x1b[…");
});

Deno.test("capped: a message past MAX_MESSAGE_CHARS loses its middle, saying how much", () => {
  assertEquals(capped("short"), "short");
  const long = `${"y".repeat(MAX_MESSAGE_CHARS + 1234)}: File name too long`;
  const cut = capped(long);
  assertEquals(
    cut,
    `${"y".repeat(MAX_MESSAGE_CHARS - 200)}… (1254 characters left out; --debug shows all) …${
      "y".repeat(180)
    }: File name too long`,
  );
});
