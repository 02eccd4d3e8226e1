/** Test data helpers for the gzip/zinfo tests. */

/** gzip -dc FILE (the real tool), as bytes. */
export async function gunzip(file: string): Promise<Uint8Array> {
  const out = await new Deno.Command("gzip", { args: ["-dc", file], stdout: "piped" }).output();
  if (!out.success) throw new Error(`gzip -dc ${file} failed`);
  return out.stdout;
}

/** Deterministic PRNG (mulberry32) so a failure names a reproducible offset. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
