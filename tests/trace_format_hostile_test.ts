/**
 * parseTrace on bytes that are not JSON (a trace blob comes from a registry): one line whatever
 * the bytes, never the whole input quoted back.
 */
import assert from "node:assert/strict";
import { parseTrace } from "../lib/trace/format.ts";
import { FormatError } from "../lib/errors.ts";

Deno.test("trace: bytes that are not JSON give a one-line FormatError of bounded length", () => {
  const enc = new TextEncoder();
  for (const text of ["\n\nabc\ndef", `{"version":1,\n"x":\u001b[2J\n}`, "a".repeat(100_000)]) {
    assert.throws(
      () => parseTrace(enc.encode(text)),
      (error: unknown) =>
        error instanceof FormatError && /^trace: not JSON/.test(error.message) &&
        !error.message.includes("\n") && error.message.length < 200,
    );
  }
});
