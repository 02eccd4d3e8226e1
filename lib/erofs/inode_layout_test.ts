/**
 * direntsOfBlock reads each le64 nid as two 32-bit halves: the boundaries of what a walk
 * follows (2^53 - 1 yes; 2^53 and metabox nids, bit 63, no) and names up to the first NUL.
 */
import assert from "node:assert/strict";
import { type Dirent, direntsOfBlock } from "./inode_layout.ts";

/** One directory block of 12-byte dirents followed by their names. */
function block(entries: { nid: bigint; name: string; type: number }[]): Uint8Array {
  const names = entries.map((e) => new TextEncoder().encode(e.name));
  const head = entries.length * 12;
  const out = new Uint8Array(head + names.reduce((n, b) => n + b.length, 0));
  const view = new DataView(out.buffer);
  let at = head;
  entries.forEach((e, k) => {
    view.setBigUint64(k * 12, e.nid, true);
    view.setUint16(k * 12 + 8, at, true);
    view.setUint8(k * 12 + 10, e.type);
    out.set(names[k], at);
    at += names[k].length;
  });
  return out;
}

Deno.test("dirents: nids up to 2^53 - 1 are followed, 2^53 and metabox nids are not", () => {
  const got = [
    ...direntsOfBlock(block([
      { nid: 36n, name: ".", type: 2 },
      { nid: (1n << 32n) + 5n, name: "high", type: 1 },
      { nid: (1n << 53n) - 1n, name: "max", type: 2 },
      { nid: 1n << 53n, name: "beyond", type: 1 },
      { nid: (1n << 63n) | 7n, name: "metabox", type: 1 },
      { nid: 0xffffffffn, name: "low\0pad", type: 1 },
    ])),
  ];
  const text = (d: Dirent | string) =>
    typeof d === "string" ? d : `${d.nid} ${new TextDecoder().decode(d.name)} ${d.fileType}`;
  assert.deepEqual(got.map(text), [
    "36 . 2",
    `${2 ** 32 + 5} high 1`,
    `${Number.MAX_SAFE_INTEGER} max 2`,
    "unfollowed",
    "unfollowed",
    `${0xffffffff} low 1`,
  ]);
});

Deno.test("dirents: a name offset out of order ends the block as bad", () => {
  const bytes = block([{ nid: 1n, name: "a", type: 1 }, { nid: 2n, name: "b", type: 1 }]);
  new DataView(bytes.buffer).setUint16(12 + 8, 20, true); // second name starts before the first
  const got = [...direntsOfBlock(bytes)];
  assert.equal(got.at(-1), "bad");
});
