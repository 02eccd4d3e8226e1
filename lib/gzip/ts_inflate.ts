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
import {
  buildTable,
  CLEN_ORDER,
  DIST_BASE,
  DIST_EXTRA,
  fixedTables,
  LENGTH_BASE,
  LENGTH_EXTRA,
  type Table,
} from "./deflate_tables.ts";

const Z_OK = 0, Z_STREAM_END = 1;
const WINDOW = 32768, WINDOW_MASK = WINDOW - 1;

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
      [this.#lit, this.#dist] = fixedTables();
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
