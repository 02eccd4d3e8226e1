/**
 * One upper tar layer over two different bases, as OCI layouts: the upper only implies etc/
 * (0700 in base A, 0755 in base B) and whites out x/foo (which only base B has). What the upper
 * layer comes to depends on the base: for tests that a converted layer or an index made here
 * is not taken for the same layer over another base.
 */
import { writeOciLayout } from "./oci_layout_writer.ts";
import { encodeTar } from "./tar_encode.ts";

export const TAR_LAYER = "application/vnd.oci.image.layer.v1.tar";
const text = (value: string) => new TextEncoder().encode(value);

export const UPPER = encodeTar([
  { name: "etc/new", data: text("new\n") },
  { name: "x/.wh.foo", data: new Uint8Array(0) },
]);
export const BASE_A = encodeTar([{ name: "etc/", type: "5", mode: 0o700 }]);
export const BASE_B = encodeTar([
  { name: "etc/", type: "5", mode: 0o755 },
  { name: "x/", type: "5" },
  { name: "x/foo", data: text("foo\n") },
  { name: "x/bar", data: text("bar\n") },
]);

/** Layouts `${dir}/a` (BASE_A, UPPER) and `${dir}/b` (BASE_B, UPPER), each tagged v1. */
export async function writeOneUpperTwoBases(dir: string): Promise<void> {
  for (const [name, base] of [["a", BASE_A], ["b", BASE_B]] as const) {
    await writeOciLayout(`${dir}/${name}`, [
      { bytes: base, mediaType: TAR_LAYER },
      { bytes: UPPER, mediaType: TAR_LAYER },
    ]);
  }
}
