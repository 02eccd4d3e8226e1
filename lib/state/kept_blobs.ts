/**
 * Small content-addressed blobs a mount keeps in the state directory (chunk tables for its
 * server and reattach, image configs), so a later mount of the same image reads them back
 * instead of fetching them: each is a round trip on the way to a mount's spec. Named by their
 * digest and used only while they still hash to it: a damaged or swapped file costs a fetch,
 * never a wrong answer.
 */
import { digestOfAsync } from "../oci/digest.ts";
import { DIGEST_PATTERN } from "../oci/reference.ts";

/** What a state directory keeps, one subdirectory each. */
export type KeptKind = "tables" | "configs";

/** Where `digest` of `kind` is kept (tables keep their `.json` name: specs name the path). */
export function keptBlobPath(stateDir: string, kind: KeptKind, digest: string): string {
  return `${stateDir}/${kind}/${digest.replace(":", "-")}.json`;
}

/** The kept bytes of `digest`, or undefined when missing, unreadable or not matching it. */
export async function readKeptBlob(
  stateDir: string,
  kind: KeptKind,
  digest: string,
): Promise<Uint8Array | undefined> {
  // The digest names a file: only a well-formed one (no path of the registry's choosing).
  if (!DIGEST_PATTERN.test(digest)) return undefined;
  try {
    const bytes = await Deno.readFile(keptBlobPath(stateDir, kind, digest));
    return await digestOfAsync(bytes, digest) === digest ? bytes : undefined;
  } catch {
    return undefined;
  }
}

/** Keeps `bytes` (already checked against `digest`) atomically; resolves with the path. */
export async function keepBlob(
  stateDir: string,
  kind: KeptKind,
  digest: string,
  bytes: Uint8Array,
): Promise<string> {
  if (!DIGEST_PATTERN.test(digest)) throw new RangeError(`malformed digest ${digest}`);
  const path = keptBlobPath(stateDir, kind, digest);
  await Deno.mkdir(`${stateDir}/${kind}`, { recursive: true, mode: 0o700 });
  const tmp = `${path}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  await Deno.writeFile(tmp, bytes, { mode: 0o600 });
  await Deno.rename(tmp, path);
  return path;
}
