/**
 * Typed arrays on resizable buffers, as the writer's tables (node_table.ts) and plans hold
 * them: columns grown in place and trimmed once complete, scratch arrays given back at once.
 * Apart from node_table.ts because they are memory management, not the tree model.
 */
import { FormatError } from "../../errors.ts";

export type Column = Uint8Array | Uint16Array | Uint32Array | Int32Array | Float64Array;
export type ColumnType<T extends Column> = {
  new (buffer: ArrayBuffer): T;
  readonly BYTES_PER_ELEMENT: number;
};

/** Columns grow in place by this many elements: no copy, no garbage, little unused room. */
const GROW_ELEMENTS = 8192;

/**
 * A column on a resizable buffer: it grows in place (the address space is reserved, pages are
 * committed as they are used), where doubling a plain typed array left the old copies as
 * garbage until V8 collected them (~50 MB of RSS at 600,000 entries) plus up to half unused.
 */
export function column<T extends Column>(type: ColumnType<T>, maxElements: number): T {
  return new type(new ArrayBuffer(0, { maxByteLength: maxElements * type.BYTES_PER_ELEMENT }));
}

/**
 * `array` with room for `needed` elements. Columns of one table grow to the same element
 * count (a multiple of GROW_ELEMENTS), so checking one column's length covers them all.
 */
export function grown<T extends Column>(array: T, needed: number): T {
  if (needed <= array.length) return array;
  const buffer = array.buffer as ArrayBuffer;
  const capacity = Math.ceil(needed / GROW_ELEMENTS) * GROW_ELEMENTS;
  const bytes = Math.min(buffer.maxByteLength, capacity * array.BYTES_PER_ELEMENT);
  if (needed * array.BYTES_PER_ELEMENT > bytes) {
    throw new FormatError(`more than ${buffer.maxByteLength / array.BYTES_PER_ELEMENT} entries`);
  }
  buffer.resize(bytes);
  return array;
}

/**
 * A zeroed array of `length` on its own resizable buffer, which `releaseArray` gives back at
 * once: big scratch arrays (a name index, a layout's child lists) then leave no garbage that
 * waits for V8 to collect it while the next big array is allocated.
 */
export function scratchArray<T extends Column>(type: ColumnType<T>, length: number): T {
  const bytes = length * type.BYTES_PER_ELEMENT;
  return new type(new ArrayBuffer(bytes, { maxByteLength: bytes }));
}

/** Frees `array`'s memory now (it must come from `scratchArray` or `column`; length 0 after). */
export function releaseArray(array: Column): void {
  (array.buffer as ArrayBuffer).resize(0);
}

/** `array` cut to `length` elements, its buffer's unused room given back. */
export function trimmed<T extends Column>(array: T, length: number): T {
  (array.buffer as ArrayBuffer).resize(length * array.BYTES_PER_ELEMENT);
  return array;
}
