/**
 * Small EROFS layers that differ from one another (a layer listed twice would share its blob,
 * and the overlay would show only the top one's files): layer i holds `file{i}` = "layer i\n".
 */
import assert from "node:assert/strict";
import { PEER_BIN } from "./requires.ts";
import { EROFS_MEDIA_TYPE } from "./oci_fixtures.ts";

/** `count` one-file EROFS layers (bottom first), built with mkfs.erofs in `work`. */
export function distinctLayers(
  work: string,
  count: number,
): Promise<{ bytes: Uint8Array<ArrayBuffer>; mediaType: string }[]> {
  // All at once: 40 of them took seconds one after another in the TCG-emulated VM.
  return Promise.all(Array.from({ length: count }, async (_, i) => {
    const tree = `${work}/tree${i}`;
    Deno.mkdirSync(tree);
    Deno.writeTextFileSync(`${tree}/file${i}`, `layer ${i}\n`);
    const out = await new Deno.Command(`${PEER_BIN}/mkfs.erofs`, {
      args: ["--quiet", `${tree}.erofs`, tree],
      stderr: "piped",
    }).output();
    assert(out.success, new TextDecoder().decode(out.stderr));
    return { bytes: Deno.readFileSync(`${tree}.erofs`), mediaType: EROFS_MEDIA_TYPE };
  }));
}
