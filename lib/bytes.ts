/** Bounded reads of byte streams from outside (registries, standard input). */

/**
 * The whole of `stream`, or undefined as soon as it passes `maxBytes` (the rest is cancelled):
 * a hostile or broken peer cannot fill memory with an endless body. `signal` ends a read that
 * waits (the stream cancelled, the signal's reason thrown): nor can a stalled one hold it.
 */
export async function readAtMost(
  stream: ReadableStream<Uint8Array>,
  maxBytes: number,
  signal?: AbortSignal,
): Promise<Uint8Array | undefined> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reader = stream.getReader();
  // The stream is locked to the reader: only it can end a read that waits (stream.cancel()
  // rejects then, and a bound on the wait made that way did nothing).
  const stop = () => reader.cancel(signal?.reason).catch(() => {});
  signal?.addEventListener("abort", stop, { once: true });
  try {
    for (;;) {
      signal?.throwIfAborted();
      const { value, done } = await reader.read();
      signal?.throwIfAborted();
      if (done) break;
      total += value.byteLength;
      if (total > maxBytes) return undefined;
      chunks.push(value);
    }
  } finally {
    signal?.removeEventListener("abort", stop);
    await reader.cancel().catch(() => {}); // no-op when the body ended
    reader.releaseLock();
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.byteLength;
  }
  return out;
}
