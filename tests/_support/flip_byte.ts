/** Damage on purpose: flips bits of one byte of a file in place (a cache file, a kept table). */
import assert from "node:assert/strict";

export function flipByte(file: string, offset: number, mask = 0x10): void {
  using handle = Deno.openSync(file, { read: true, write: true });
  const byte = new Uint8Array(1);
  handle.seekSync(offset, Deno.SeekMode.Start);
  assert.equal(handle.readSync(byte), 1, `${file} has no byte at ${offset}`);
  byte[0] ^= mask;
  handle.seekSync(offset, Deno.SeekMode.Start);
  handle.writeSync(byte);
}
