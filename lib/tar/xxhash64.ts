/**
 * XXH64 (xxHash spec, "XXH64 algorithm description"), streaming, in 32-bit halves so it runs
 * on plain numbers instead of BigInt. zstd frames end with the low 32 bits of XXH64(seed 0)
 * of their content (RFC 8878 §3.1.1); fzstd skips that checksum, so we check it ourselves.
 */

// The five 64-bit primes of the spec, as [high, low] 32-bit halves.
const P1: U64 = [0x9e3779b1, 0x85ebca87];
const P2: U64 = [0xc2b2ae3d, 0x27d4eb4f];
const P3: U64 = [0x165667b1, 0x9e3779f9];
const P4: U64 = [0x85ebca77, 0xc2b2ae63];
const P5: U64 = [0x27d4eb2f, 0x165667c5];

type U64 = [hi: number, lo: number];

function add(a: U64, b: U64): U64 {
  const lo = (a[1] + b[1]) >>> 0;
  const carry = lo < a[1] ? 1 : 0;
  return [(a[0] + b[0] + carry) >>> 0, lo];
}

/** Low 64 bits of a × b, by 16-bit limbs so every partial product stays exact in a double. */
function mul(a: U64, b: U64): U64 {
  const a0 = a[1] & 0xffff, a1 = a[1] >>> 16, a2 = a[0] & 0xffff, a3 = a[0] >>> 16;
  const b0 = b[1] & 0xffff, b1 = b[1] >>> 16, b2 = b[0] & 0xffff, b3 = b[0] >>> 16;
  let c0 = a0 * b0;
  let c1 = c0 >>> 16;
  c0 &= 0xffff;
  c1 += a1 * b0;
  let c2 = Math.floor(c1 / 0x10000);
  c1 &= 0xffff;
  c1 += a0 * b1;
  c2 += Math.floor(c1 / 0x10000);
  c1 &= 0xffff;
  c2 += a2 * b0;
  let c3 = Math.floor(c2 / 0x10000);
  c2 &= 0xffff;
  c2 += a1 * b1;
  c3 += Math.floor(c2 / 0x10000);
  c2 &= 0xffff;
  c2 += a0 * b2;
  c3 += Math.floor(c2 / 0x10000);
  c2 &= 0xffff;
  c3 += a3 * b0 + a2 * b1 + a1 * b2 + a0 * b3;
  c3 &= 0xffff;
  return [((c3 << 16) | c2) >>> 0, ((c1 << 16) | c0) >>> 0];
}

/** Rotate left by 0 < r < 32. */
function rotl(x: U64, r: number): U64 {
  return [((x[0] << r) | (x[1] >>> (32 - r))) >>> 0, ((x[1] << r) | (x[0] >>> (32 - r))) >>> 0];
}

const xor = (a: U64, b: U64): U64 => [(a[0] ^ b[0]) >>> 0, (a[1] ^ b[1]) >>> 0];

/** x >> s for 32 <= s < 64, or 0 < s < 32. */
function shr(x: U64, s: number): U64 {
  if (s >= 32) return [0, x[0] >>> (s - 32)];
  return [x[0] >>> s, ((x[1] >>> s) | (x[0] << (32 - s))) >>> 0];
}

function round(acc: U64, lane: U64): U64 {
  return mul(rotl(add(acc, mul(lane, P2)), 31), P1);
}

function mergeRound(acc: U64, v: U64): U64 {
  return add(mul(xor(acc, round([0, 0], v)), P1), P4);
}

/**
 * The per-stripe hot path: four accumulators (hi/lo in `v`) each take round(acc, lane) =
 * rotl(acc + lane × P2, 31) × P1. Written out with locals and DataView reads; the tuple helpers
 * above are 3× slower here.
 */
function stripes(data: Uint8Array, v: Uint32Array, start: number, end: number): number {
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const [p1h, p1l] = P1;
  const [p2h, p2l] = P2;
  let i = start;
  for (; i + 32 <= end; i += 32) {
    for (let lane = 0; lane < 4; lane++) {
      const ll = dv.getUint32(i + lane * 8, true);
      const lh = dv.getUint32(i + lane * 8 + 4, true);
      // lane × P2 (low 64 bits): low word by imul, high word = carry of ll × p2l + cross terms.
      let a0 = ll & 0xffff, a1 = ll >>> 16;
      let m1 = a1 * (p2l & 0xffff), m2 = a0 * (p2l >>> 16);
      let mid = ((a0 * (p2l & 0xffff)) >>> 16) + (m1 & 0xffff) + (m2 & 0xffff);
      let carry = a1 * (p2l >>> 16) + Math.floor(m1 / 0x10000) + Math.floor(m2 / 0x10000) +
        Math.floor(mid / 0x10000);
      const pl = Math.imul(ll, p2l) >>> 0;
      const ph = (carry + Math.imul(lh, p2l) + Math.imul(ll, p2h)) >>> 0;
      const al = v[lane * 2 + 1], ah = v[lane * 2];
      const sl = (al + pl) >>> 0;
      const sh = (ah + ph + (sl < al ? 1 : 0)) >>> 0;
      const rh = ((sh << 31) | (sl >>> 1)) >>> 0, rl = ((sl << 31) | (sh >>> 1)) >>> 0;
      a0 = rl & 0xffff;
      a1 = rl >>> 16;
      m1 = a1 * (p1l & 0xffff);
      m2 = a0 * (p1l >>> 16);
      mid = ((a0 * (p1l & 0xffff)) >>> 16) + (m1 & 0xffff) + (m2 & 0xffff);
      carry = a1 * (p1l >>> 16) + Math.floor(m1 / 0x10000) + Math.floor(m2 / 0x10000) +
        Math.floor(mid / 0x10000);
      v[lane * 2 + 1] = Math.imul(rl, p1l) >>> 0;
      v[lane * 2] = (carry + Math.imul(rh, p1l) + Math.imul(rl, p1h)) >>> 0;
    }
  }
  return i;
}

const u32le = (b: Uint8Array, i: number) =>
  (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)) >>> 0;
const u64le = (b: Uint8Array, i: number): U64 => [u32le(b, i + 4), u32le(b, i)];

/** Streaming XXH64 with seed 0. */
export class Xxh64 {
  /** The four accumulators as hi, lo pairs; v4 starts at 0 - P1 (mod 2^64). */
  #v = new Uint32Array([...add(P1, P2), ...P2, 0, 0, ...mul(P1, [0xffffffff, 0xffffffff])]);
  #buffer = new Uint8Array(32);
  #buffered = 0;
  #total = 0;

  update(data: Uint8Array): void {
    this.#total += data.length;
    let i = 0;
    if (this.#buffered > 0) {
      const n = Math.min(32 - this.#buffered, data.length);
      this.#buffer.set(data.subarray(0, n), this.#buffered);
      this.#buffered += n;
      i = n;
      if (this.#buffered < 32) return;
      stripes(this.#buffer, this.#v, 0, 32);
      this.#buffered = 0;
    }
    i = stripes(data, this.#v, i, data.length);
    this.#buffer.set(data.subarray(i), 0);
    this.#buffered = data.length - i;
  }

  /** The low 32 bits of the digest (what zstd stores). */
  digestLow32(): number {
    let h: U64;
    if (this.#total >= 32) {
      const v = this.#v;
      const v1: U64 = [v[0], v[1]], v2: U64 = [v[2], v[3]];
      const v3: U64 = [v[4], v[5]], v4: U64 = [v[6], v[7]];
      h = add(
        add(rotl(v1, 1), rotl(v2, 7)),
        add(rotl(v3, 12), rotl(v4, 18)),
      );
      h = mergeRound(h, v1);
      h = mergeRound(h, v2);
      h = mergeRound(h, v3);
      h = mergeRound(h, v4);
    } else {
      h = P5;
    }
    h = add(h, [Math.floor(this.#total / 2 ** 32) >>> 0, this.#total >>> 0]);
    const b = this.#buffer;
    let i = 0;
    for (; i + 8 <= this.#buffered; i += 8) {
      h = xor(h, round([0, 0], u64le(b, i)));
      h = add(mul(rotl(h, 27), P1), P4);
    }
    if (i + 4 <= this.#buffered) {
      h = xor(h, mul([0, u32le(b, i)], P1));
      h = add(mul(rotl(h, 23), P2), P3);
      i += 4;
    }
    for (; i < this.#buffered; i++) {
      h = xor(h, mul([0, b[i]], P5));
      h = mul(rotl(h, 11), P1);
    }
    h = xor(h, shr(h, 33));
    h = mul(h, P2);
    h = xor(h, shr(h, 29));
    h = mul(h, P3);
    h = xor(h, shr(h, 32));
    return h[1];
  }
}
