/** Byte ranges widened to whole units (pages, table subchunks) and joined into runs. */

export interface ByteSpan {
  offset: number;
  length: number;
}

/**
 * The whole `unit`s holding `ranges` (the last cut at `size`), sorted, with touching or
 * overlapping ones joined: ascending and apart, as a multi-range request wants them.
 */
export function alignedRuns(ranges: readonly ByteSpan[], unit: number, size: number): ByteSpan[] {
  const spans = ranges
    .map(({ offset, length }) => {
      const start = Math.floor(offset / unit) * unit;
      const end = Math.min(size, Math.ceil((offset + length) / unit) * unit);
      return { offset: start, length: end - start };
    })
    .sort((a, b) => a.offset - b.offset);
  const runs: ByteSpan[] = [];
  for (const span of spans) {
    const last = runs.at(-1);
    if (last && span.offset <= last.offset + last.length) {
      last.length = Math.max(last.length, span.offset + span.length - last.offset);
    } else {
      runs.push({ ...span });
    }
  }
  return runs;
}
