/**
 * A column of numbers as narrow as its values allow: no memory while every value is 0, 4 bytes
 * per element while every value is an integer from 0 to 2^32 - 1, 8 bytes (a double, as before)
 * from the first value that is not. Most of a tree's uids, gids, mtimes, nanoseconds, sizes and
 * tar data offsets fit 32 bits, and many are all 0 (a layer's owners, a GNU tar's nanoseconds):
 * a 1,000,000-member tar's table took ~24 MB less than with a double per element.
 *
 * Elements live on a resizable buffer grown in place (see `NodeTable`); `reserve` must have
 * made room for an index before it is set.
 */
export class NumberColumn {
  #capacity = 0;
  #narrow: Uint32Array | undefined;
  #wide: Float64Array | undefined;
  readonly #maxElements: number;

  constructor(maxElements: number) {
    this.#maxElements = maxElements;
  }

  get(i: number): number {
    const wide = this.#wide;
    if (wide) return wide[i];
    const narrow = this.#narrow;
    return narrow ? narrow[i] : 0;
  }

  set(i: number, value: number): void {
    const wide = this.#wide;
    if (wide) {
      wide[i] = value;
    } else if (value >>> 0 === value) {
      if (this.#narrow) this.#narrow[i] = value;
      else if (value !== 0) (this.#narrow = this.#allocate(Uint32Array))[i] = value;
    } else {
      const widened = this.#allocate(Float64Array);
      if (this.#narrow) {
        widened.set(this.#narrow);
        release(this.#narrow);
        this.#narrow = undefined;
      }
      (this.#wide = widened)[i] = value;
    }
  }

  /** Room for indexes below `capacity` (new elements read 0); also shrinks (a finished scan). */
  reserve(capacity: number): void {
    this.#capacity = capacity;
    if (this.#narrow) this.#narrow = resized(this.#narrow, capacity);
    if (this.#wide) this.#wide = resized(this.#wide, capacity);
  }

  /** Bytes per element now: 0, 4 or 8. */
  get elementBytes(): number {
    return this.#wide ? 8 : this.#narrow ? 4 : 0;
  }

  #allocate<T extends Uint32Array | Float64Array>(
    type: { new (buffer: ArrayBuffer): T; readonly BYTES_PER_ELEMENT: number },
  ): T {
    const bytes = this.#capacity * type.BYTES_PER_ELEMENT;
    return new type(
      new ArrayBuffer(bytes, { maxByteLength: this.#maxElements * type.BYTES_PER_ELEMENT }),
    );
  }
}

function resized<T extends Uint32Array | Float64Array>(array: T, capacity: number): T {
  (array.buffer as ArrayBuffer).resize(capacity * array.BYTES_PER_ELEMENT);
  return array;
}

function release(array: Uint32Array | Float64Array): void {
  (array.buffer as ArrayBuffer).resize(0);
}
