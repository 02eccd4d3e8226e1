import assert from "node:assert/strict";
import { MARK_IMPLIED, scanTar, takeImplied } from "./from_tar.ts";
import { encodeTar, streamOf } from "../../../tests/_support/tar_encode.ts";

Deno.test("takeImplied: what the tar only implies, whatever times its own members carry", async () => {
  // The mark convert once used for implied directories was an mtime; a pax mtime can hold any.
  const oddTimes = [String(-(2 ** 52) + 7), "0", "-1.5"];
  const tar = encodeTar([
    ...oddTimes.map((mtime, i) => ({
      name: `own${i}/`,
      type: "5",
      mode: 0o700,
      pax: [["mtime", mtime]] as [string, string][],
    })),
    { name: "implied/f", data: new Uint8Array(0) },
    { name: "own0/.wh.gone", data: new Uint8Array(0) },
  ]);
  const { root } = await scanTar(streamOf(tar), { indexOnly: true, impliedMtimeSec: MARK_IMPLIED });
  const implied = takeImplied(root, 1234);
  const children = root.children!;
  const nameOf = (node: unknown) =>
    node === root ? "/" : [...children].find(([, child]) => child === node)?.[0];
  assert.deepEqual([...implied].map(nameOf).sort(), ["/", "implied"]);
  for (const [i, mtime] of oddTimes.entries()) {
    const own = children.get(`own${i}`)!;
    assert.equal(own.mode, 0o700, `own${i}`);
    assert.equal(own.mtimeSec, Math.floor(Number(mtime)), `own${i}`);
  }
  const implDir = children.get("implied")!;
  assert.deepEqual([implDir.mtimeSec, implDir.mtimeNsec, implDir.mode], [1234, 0, 0o755]);
  // The whiteout's device (made by the scan, not a member) gets the time too.
  const device = children.get("own0")!.children!.get("gone")!;
  assert.deepEqual([device.kind, device.mtimeSec, device.mtimeNsec], ["chardev", 1234, 0]);
});
