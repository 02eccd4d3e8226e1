/**
 * A read-only byte source addressed by offset: a registry blob, a local file, a tar index over
 * a gzip layer. Every export (kernel NBD, user-space NBD, FUSE) reads through this one shape.
 */
export interface Source {
  /** Total size in bytes. */
  readonly size: number;
  /**
   * Reads exactly `length` bytes at `offset` (the caller keeps `offset + length <= size`).
   * Rejects rather than returning short or zero-filled data for bytes it could not get.
   */
  read(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array>;
  /**
   * Optional: the same bytes handed to `sink` in order as they arrive, `bytes` valid only until
   * the sink's promise settles (a reused buffer), so the caller keeps no copy of the range.
   */
  readTo?(
    offset: number,
    length: number,
    sink: (bytes: Uint8Array, at: number) => void | Promise<void>,
    signal?: AbortSignal,
  ): Promise<void>;
  /** Releases connections and files. */
  close?(): void | Promise<void>;
}

/** RangeError unless `offset`..`offset + length` lies within a source of `size` bytes. */
export function checkReadRange(offset: number, length: number, size: number): void {
  if (
    !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 ||
    offset + length > size
  ) {
    throw new RangeError(`read of ${length} bytes at ${offset} outside 0..${size}`);
  }
}

/**
 * `dest.length` bytes of `source` at `offset` into `dest`: through its readInto when it has
 * one (no buffer of its own per read), else copied from read() (whose length is checked).
 */
export async function readSourceInto(
  source: Pick<Source, "read"> & {
    readInto?(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void>;
  },
  offset: number,
  dest: Uint8Array,
  signal?: AbortSignal,
): Promise<void> {
  if (source.readInto) return await source.readInto(offset, dest, signal);
  const bytes = await source.read(offset, dest.length, signal);
  if (bytes.length !== dest.length) {
    throw new Error(`read at ${offset} returned ${bytes.length} of ${dest.length} bytes`);
  }
  dest.set(bytes);
}
