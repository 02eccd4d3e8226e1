import assert from "node:assert/strict";
import { MAX_JSON_DEPTH, parseJson } from "./json.ts";

Deno.test("parseJson: nesting past the limit refused before parsing; brackets in strings ignored", () => {
  const nested = (levels: number) => "[".repeat(levels) + "]".repeat(levels);
  assert.deepEqual(parseJson(nested(MAX_JSON_DEPTH)) instanceof Array, true);
  assert.throws(() => parseJson(nested(MAX_JSON_DEPTH + 1)), /nested deeper than 64 levels/);
  assert.throws(() => parseJson("[".repeat(2_000_000)), SyntaxError);
  const tricky = JSON.stringify({ a: '[[[[{{{{\\"[[[['.repeat(100), b: [1, { c: "]]]}}}" }] });
  assert.deepEqual(parseJson(tricky), JSON.parse(tricky));
  assert.throws(() => parseJson('{"a": 1'), SyntaxError);
});
