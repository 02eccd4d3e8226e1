import { equal, throws } from "node:assert/strict";
import { FormatError } from "../errors.ts";
import { checksumMatches, parseNumeric } from "./header.ts";

const bytes = (...b: number[]) => new Uint8Array(b);
const ascii = (s: string) => new TextEncoder().encode(s);

Deno.test("parseNumeric: octal with spaces/NUL, base-256 positive and negative", () => {
  equal(parseNumeric(ascii("0000644\0"), "mode"), 0o644);
  equal(parseNumeric(ascii("   644 "), "mode"), 0o644);
  equal(parseNumeric(new Uint8Array(8), "mode"), 0);
  equal(parseNumeric(bytes(0x80, 0, 0, 0, 0, 0, 0, 0x01, 0, 0, 0, 0), "size"), 2 ** 32);
  equal(parseNumeric(bytes(0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe), "mtime", true), -2);
  throws(() => parseNumeric(bytes(0xff, 0xff), "size"), FormatError);
  throws(() => parseNumeric(ascii("0009"), "mode"), FormatError);
  throws(
    () => parseNumeric(bytes(0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff), "size"),
    FormatError,
  );
});

Deno.test("checksumMatches: unsigned (POSIX) and signed (old tars) sums", () => {
  const block = new Uint8Array(512);
  block[0] = 0xe9; // a byte above 0x7f makes the two sums differ
  const unsigned = 0xe9 + 8 * 0x20;
  const signed = (0xe9 - 0x100) + 8 * 0x20;
  block.set(ascii(unsigned.toString(8).padStart(6, "0") + "\0 "), 148);
  equal(checksumMatches(block), true);
  block.set(ascii(signed.toString(8).padStart(6, "0") + "\0 "), 148);
  equal(checksumMatches(block), true);
  block.set(ascii((unsigned + 1).toString(8).padStart(6, "0") + "\0 "), 148);
  equal(checksumMatches(block), false);
});
