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
  /** Releases connections and files. */
  close?(): void | Promise<void>;
}
