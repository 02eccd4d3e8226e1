/**
 * CRC32C (Castagnoli, reflected polynomial 0x82F63B78) as the EROFS superblock checksum uses it:
 * the kernel's `crc32c(~0, …)` with no final inversion, so the stored value is the bitwise NOT of
 * the common "CRC-32C" check value.
 */
const TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** Continues a raw CRC32C register `seed` over `bytes` (no pre- or post-inversion). */
export function crc32cRaw(seed: number, bytes: Uint8Array): number {
  let crc = seed >>> 0;
  for (let i = 0; i < bytes.length; i++) crc = TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return crc >>> 0;
}

/** The common CRC-32C check value ("123456789" → 0xe3069283). */
export function crc32c(bytes: Uint8Array): number {
  return (~crc32cRaw(0xffffffff, bytes)) >>> 0;
}
