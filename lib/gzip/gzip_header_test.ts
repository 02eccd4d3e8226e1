import { equal, throws } from "node:assert/strict";
import { FormatError } from "../errors.ts";
import { crc32 } from "../../ffi/zlib.ts";
import { gzipHeaderLength } from "./gzip_header.ts";

/** A gzip header with FHCRC (and FNAME "a"), its CRC16 right or off by one. */
function headerWithCrc(right: boolean): Uint8Array {
  const head = new Uint8Array([0x1f, 0x8b, 8, 0x02 | 0x08, 0, 0, 0, 0, 0, 3, 0x61, 0]);
  const crc = (crc32(0, head.slice()) & 0xffff) ^ (right ? 0 : 1);
  return new Uint8Array([...head, crc & 0xff, crc >> 8, 0xaa]);
}

Deno.test("gzip header: FHCRC is checked (as zlib does), its 2 bytes counted", () => {
  equal(gzipHeaderLength(headerWithCrc(true), 0), 14);
  throws(
    () => gzipHeaderLength(headerWithCrc(false), 7),
    (e: unknown) => e instanceof FormatError && /offset 7: header crc mismatch/.test(e.message),
  );
  // Not all there yet: more bytes are wanted, nothing is judged.
  equal(gzipHeaderLength(headerWithCrc(false).subarray(0, 13), 0), undefined);
});
