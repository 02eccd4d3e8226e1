/**
 * gzip member framing (RFC 1952 §2.3): a header of at least 10 bytes before the raw deflate
 * data, an 8-byte trailer (CRC-32, ISIZE) after it. Members may follow each other.
 */
import { FormatError } from "../errors.ts";
import { crc32 } from "../../ffi/zlib.ts";

export const GZIP_TRAILER_BYTES = 8;
/** A header longer than this (huge FEXTRA/FNAME/FCOMMENT) is refused rather than buffered. */
export const MAX_GZIP_HEADER_BYTES = 65536 + 4096;

const ID1 = 0x1f, ID2 = 0x8b, CM_DEFLATE = 8;
const FHCRC = 0x02, FEXTRA = 0x04, FNAME = 0x08, FCOMMENT = 0x10, FRESERVED = 0xe0;

/** True when `bytes` begins like a gzip member (needs 2 bytes). */
export function isGzipMagic(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && bytes[0] === ID1 && bytes[1] === ID2;
}

/**
 * Length of the gzip header at the start of `bytes`, or undefined when more bytes are needed.
 * Throws FormatError when it is not a gzip header or is longer than MAX_GZIP_HEADER_BYTES.
 */
export function gzipHeaderLength(bytes: Uint8Array, where: number): number | undefined {
  if (bytes.length < 10) return need(bytes, where);
  if (!isGzipMagic(bytes) || bytes[2] !== CM_DEFLATE) {
    // After a member: bytes appended to the stream (only zeros may pad it), not a wrong format.
    throw where === 0
      ? new FormatError(
        "not a gzip member at compressed offset 0",
        "the layer must be gzip (application/vnd.oci.image.layer.v1.tar+gzip)",
      )
      : new FormatError(
        `not a gzip member at compressed offset ${where}: bytes that are not gzip follow the ` +
          "gzip stream",
        "only zero bytes may pad a gzip stream: cut the file where the stream ends",
      );
  }
  const flags = bytes[3];
  if (flags & FRESERVED) {
    throw new FormatError(
      `gzip member at ${where} sets reserved header flags 0x${flags.toString(16)}`,
    );
  }
  let at = 10;
  if (flags & FEXTRA) {
    if (bytes.length < at + 2) return need(bytes, where);
    at += 2 + (bytes[at] | bytes[at + 1] << 8);
  }
  for (const flag of [FNAME, FCOMMENT]) {
    if (!(flags & flag)) continue;
    const end = bytes.indexOf(0, at);
    if (end < 0) return need(bytes, where);
    at = end + 1;
  }
  if (flags & FHCRC) {
    // CRC16: the low 16 bits of the CRC-32 of the header before it (zlib checks it too).
    if (bytes.length < at + 2) return need(bytes, where);
    const stored = bytes[at] | bytes[at + 1] << 8;
    if ((crc32(0, bytes.slice(0, at)) & 0xffff) !== stored) {
      throw new FormatError(`gzip member at compressed offset ${where}: header crc mismatch`);
    }
    at += 2;
  }
  if (at > bytes.length) return need(bytes, where);
  return at;
}

function need(bytes: Uint8Array, where: number): undefined {
  if (bytes.length >= MAX_GZIP_HEADER_BYTES) {
    throw new FormatError(`gzip header at compressed offset ${where} is longer than 68 KiB`);
  }
  return undefined;
}
