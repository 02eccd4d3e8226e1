/**
 * A raw deflate decoder (RFC 1951) in TypeScript, with the same shape as ffi/zlib.ts's
 * RawInflater (prime, dictionary, resumable inflate), kept to measure against the system zlib
 * (scripts/bench-gzip.sh); GzipRandomAccess uses zlib unless told otherwise.
 *
 * Resumable by transaction: each step (block header, code tables, one symbol) saves the bit
 * position first and rolls back when the input runs out, so a call returns at a step boundary
 * and the next call retries that step with more input.
 */
import { FormatError } from "../errors.ts";
import type { InflateStep } from "../../ffi/zlib.ts";

const Z_OK = 0, Z_STREAM_END = 1;
const WINDOW = 32768, WINDOW_MASK = WINDOW - 1;

// RFC 1951 §3.2.5: base lengths/distances and extra bits per code.
const LENGTH_BASE = [
  3,
  4,
  5,
  6,
  7,
  8,
  9,
  10,
  11,
  13,
  15,
  17,
  19,
  23,
  27,
  31,
  35,
  43,
  51,
  59,
  67,
  83,
  99,
  115,
  131,
  163,
  195,
  227,
  258,
];
const LENGTH_EXTRA = [
  0,
  0,
  0,
  0,
  0,
  0,
  0,
  0,
  1,
  1,
  1,
  1,
  2,
  2,
  2,
  2,
  3,
  3,
  3,
  3,
  4,
  4,
  4,
  4,
  5,
  5,
  5,
  5,
  0,
];
const DIST_BASE = [
  1,
  2,
  3,
  4,
  5,
  7,
  9,
  13,
  17,
  25,
  33,
  49,
  65,
  97,
  129,
  193,
  257,
  385,
  513,
  769,
  1025,
  1537,
  2049,
  3073,
  4097,
  6145,
  8193,
  12289,
  16385,
  24577,
];
const DIST_EXTRA = [
  0,
  0,
  0,
  0,
  1,
  1,
  2,
  2,
  3,
  3,
  4,
  4,
  5,
  5,
  6,
  6,
  7,
  7,
  8,
  8,
  9,
  9,
  10,
  10,
  11,
  11,
  12,
  12,
  13,
  13,
];
// §3.2.7: order of the code length code lengths.
const CLEN_ORDER = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

/** A canonical Huffman code as a direct lookup table: entry = symbol << 4 | length. */
interface Table {
  entries: Int32Array;
  bits: number;
}

function buildTable(lengths: ArrayLike<number>, count: number): Table {
  let maxBits = 0;
  const blCount = new Int32Array(16);
  for (let i = 0; i < count; i++) {
    blCount[lengths[i]]++;
    if (lengths[i] > maxBits) maxBits = lengths[i];
  }
  blCount[0] = 0;
  const nextCode = new Int32Array(16);
  let code = 0, left = 1;
  for (let bits = 1; bits <= 15; bits++) {
    left = (left << 1) - blCount[bits];
    if (left < 0) throw new FormatError("corrupt deflate data: over-subscribed code lengths");
    code = (code + blCount[bits - 1]) << 1;
    nextCode[bits] = code;
  }
  const size = 1 << Math.max(maxBits, 1);
  const entries = new Int32Array(size).fill(-1);
  for (let symbol = 0; symbol < count; symbol++) {
    const len = lengths[symbol];
    if (len === 0) continue;
    let c = nextCode[len]++, reversed = 0;
    for (let i = 0; i < len; i++) {
      reversed = (reversed << 1) | (c & 1);
      c >>= 1;
    }
    for (let at = reversed; at < size; at += 1 << len) entries[at] = (symbol << 4) | len;
  }
  return { entries, bits: Math.max(maxBits, 1) };
}

let fixedTables: [Table, Table] | undefined;
function fixed(): [Table, Table] {
  if (!fixedTables) {
    const lit = new Uint8Array(288);
    lit.fill(8, 0, 144).fill(9, 144, 256).fill(7, 256, 280).fill(8, 280, 288);
    fixedTables = [buildTable(lit, 288), buildTable(new Uint8Array(30).fill(5), 30)];
  }
  return fixedTables;
}

const NEED_INPUT = Symbol("need input");
const EMPTY = new Uint8Array(0);

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

type Mode = "header" | "stored" | "codes" | "done";

export class TsInflater {
  #bitBuf = 0;
  #bitCount = 0;
  #input: Uint8Array = EMPTY;
  #carry: Uint8Array = EMPTY;
  #pos = 0;
  readonly #history = new Uint8Array(WINDOW);
  #historyPos = 0;
  #historyLength = 0;
  #mode: Mode = "header";
  #final = false;
  #storedLeft = 0;
  #lit: Table | undefined;
  #dist: Table | undefined;
  #matchLeft = 0;
  #matchDist = 0;

  reset(): void {
    this.#bitBuf = this.#bitCount = 0;
    this.#historyPos = this.#historyLength = 0;
    this.#mode = "header";
    this.#final = false;
    this.#matchLeft = 0;
    this.#carry = EMPTY;
  }

  prime(bits: number, value: number): void {
    this.#bitBuf |= (value & ((1 << bits) - 1)) << this.#bitCount;
    this.#bitCount += bits;
  }

  setDictionary(window: Uint8Array): void {
    const take = window.subarray(Math.max(0, window.length - WINDOW));
    for (const byte of take) this.#put(byte);
  }

  end(): void {}

  /**
   * Like zlib, takes all input it is given: bytes of a step that could not complete yet are
   * carried internally, so `consumed` equals the input length unless the stream ended or the
   * output filled up.
   */
  inflate(given: Uint8Array, output: Uint8Array): InflateStep {
    const carried = this.#carry.length;
    this.#input = carried ? concat(this.#carry, given) : given;
    this.#carry = EMPTY;
    this.#pos = 0;
    let produced = 0;
    let status = Z_OK;
    try {
      while (produced < output.length) {
        if (this.#matchLeft > 0) {
          produced = this.#copyMatch(output, produced);
          continue;
        }
        if (this.#mode === "done") break;
        const save = this.#save();
        try {
          if (this.#mode === "header") this.#blockHeader();
          else if (this.#mode === "stored") produced = this.#stored(output, produced);
          else produced = this.#symbol(output, produced);
        } catch (error) {
          if (error !== NEED_INPUT) throw error;
          this.#restore(save);
          this.#carry = this.#input.slice(this.#pos);
          this.#pos = this.#input.length;
          break;
        }
      }
      if (this.#mode === "done" && this.#matchLeft === 0) status = Z_STREAM_END;
    } finally {
      this.#input = EMPTY;
    }
    return { status, consumed: this.#pos - carried, produced, dataType: 0 };
  }

  /** Same as inflate (no thread to move to); for callers written against RawInflater. */
  inflateAsync(given: Uint8Array, output: Uint8Array): Promise<InflateStep> {
    return Promise.resolve(this.inflate(given, output));
  }

  #save(): [number, number, number] {
    return [this.#pos, this.#bitBuf, this.#bitCount];
  }

  #restore([pos, buf, count]: [number, number, number]): void {
    this.#pos = pos;
    this.#bitBuf = buf;
    this.#bitCount = count;
  }

  #need(n: number): void {
    while (this.#bitCount < n) {
      if (this.#pos >= this.#input.length) throw NEED_INPUT;
      this.#bitBuf |= this.#input[this.#pos++] << this.#bitCount;
      this.#bitCount += 8;
    }
  }

  #bits(n: number): number {
    if (n === 0) return 0;
    this.#need(n);
    const value = this.#bitBuf & ((1 << n) - 1);
    this.#bitBuf >>>= n;
    this.#bitCount -= n;
    return value;
  }

  /** Loads input one byte at a time, so no byte past the code is taken (as zlib gives back). */
  #decode(table: Table): number {
    const mask = (1 << table.bits) - 1;
    for (;;) {
      const entry = table.entries[this.#bitBuf & mask];
      const len = entry & 15;
      if (entry >= 0 && len <= this.#bitCount) {
        this.#bitBuf >>>= len;
        this.#bitCount -= len;
        return entry >> 4;
      }
      if (this.#bitCount >= table.bits) throw new FormatError("corrupt deflate data: bad code");
      if (this.#pos >= this.#input.length) throw NEED_INPUT;
      this.#bitBuf |= this.#input[this.#pos++] << this.#bitCount;
      this.#bitCount += 8;
    }
  }

  #blockHeader(): void {
    const header = this.#bits(3);
    this.#final = (header & 1) === 1;
    const type = header >> 1;
    if (type === 0) {
      this.#bits(this.#bitCount & 7);
      const len = this.#bits(16), nlen = this.#bits(16);
      if ((len ^ 0xffff) !== nlen) throw new FormatError("corrupt deflate data: stored length");
      this.#storedLeft = len;
      this.#mode = "stored";
    } else if (type === 1) {
      [this.#lit, this.#dist] = fixed();
      this.#mode = "codes";
    } else if (type === 2) {
      this.#dynamicTables();
      this.#mode = "codes";
    } else throw new FormatError("corrupt deflate data: invalid block type");
  }

  #dynamicTables(): void {
    const hlit = this.#bits(5) + 257, hdist = this.#bits(5) + 1, hclen = this.#bits(4) + 4;
    const clen = new Uint8Array(19);
    for (let i = 0; i < hclen; i++) clen[CLEN_ORDER[i]] = this.#bits(3);
    const clenTable = buildTable(clen, 19);
    const lengths = new Uint8Array(hlit + hdist);
    for (let i = 0; i < hlit + hdist;) {
      const sym = this.#decode(clenTable);
      if (sym < 16) lengths[i++] = sym;
      else {
        let repeat: number, value = 0;
        if (sym === 16) {
          if (i === 0) throw new FormatError("corrupt deflate data: repeat with no length");
          value = lengths[i - 1];
          repeat = 3 + this.#bits(2);
        } else if (sym === 17) repeat = 3 + this.#bits(3);
        else repeat = 11 + this.#bits(7);
        if (i + repeat > hlit + hdist) throw new FormatError("corrupt deflate data: bad lengths");
        lengths.fill(value, i, i + repeat);
        i += repeat;
      }
    }
    if (lengths[256] === 0) throw new FormatError("corrupt deflate data: no end-of-block code");
    this.#lit = buildTable(lengths.subarray(0, hlit), hlit);
    this.#dist = buildTable(lengths.subarray(hlit), hdist);
  }

  #stored(output: Uint8Array, produced: number): number {
    if (this.#storedLeft === 0) {
      this.#endBlock();
      return produced;
    }
    if (this.#pos >= this.#input.length) throw NEED_INPUT;
    const n = Math.min(this.#storedLeft, output.length - produced, this.#input.length - this.#pos);
    for (let i = 0; i < n; i++) {
      const byte = this.#input[this.#pos + i];
      output[produced + i] = byte;
      this.#put(byte);
    }
    this.#pos += n;
    this.#storedLeft -= n;
    return produced + n;
  }

  #symbol(output: Uint8Array, produced: number): number {
    const sym = this.#decode(this.#lit!);
    if (sym < 256) {
      output[produced] = sym;
      this.#put(sym);
      return produced + 1;
    }
    if (sym === 256) {
      this.#endBlock();
      return produced;
    }
    const li = sym - 257;
    if (li >= 29) throw new FormatError("corrupt deflate data: invalid length code");
    const length = LENGTH_BASE[li] + this.#bits(LENGTH_EXTRA[li]);
    const di = this.#decode(this.#dist!);
    if (di >= 30) throw new FormatError("corrupt deflate data: invalid distance code");
    const dist = DIST_BASE[di] + this.#bits(DIST_EXTRA[di]);
    if (dist > this.#historyLength) {
      throw new FormatError("corrupt deflate data: invalid distance too far back");
    }
    this.#matchLeft = length;
    this.#matchDist = dist;
    return this.#copyMatch(output, produced);
  }

  #copyMatch(output: Uint8Array, produced: number): number {
    const n = Math.min(this.#matchLeft, output.length - produced);
    const history = this.#history;
    for (let i = 0; i < n; i++) {
      const byte = history[(this.#historyPos - this.#matchDist) & WINDOW_MASK];
      output[produced + i] = byte;
      history[this.#historyPos] = byte;
      this.#historyPos = (this.#historyPos + 1) & WINDOW_MASK;
    }
    this.#historyLength = Math.min(WINDOW, this.#historyLength + n);
    this.#matchLeft -= n;
    return produced + n;
  }

  #put(byte: number): void {
    this.#history[this.#historyPos] = byte;
    this.#historyPos = (this.#historyPos + 1) & WINDOW_MASK;
    if (this.#historyLength < WINDOW) this.#historyLength++;
  }

  #endBlock(): void {
    this.#mode = this.#final ? "done" : "header";
  }
}
