/** Unit checks of the writer's pieces against spec facts and the peer's fixture bytes. */
import assert from "node:assert/strict";
import fc from "fast-check";
import { aclFromText } from "../../tar/acl.ts";
import { crc32c, crc32cRaw } from "./crc32c.ts";
import { compareNames, newNode, utf8Length } from "./tree.ts";
import { packDirectory } from "./dirs.ts";
import { encodeXattrBody, encodeXattrEntry, xattrCount } from "./xattrs.ts";
import { layoutImage } from "./layout.ts";
import { NodeTable } from "./node_table.ts";
import { encodeRdev } from "./format.ts";
import { FIXTURES } from "../../../tests/_support/requires.ts";

Deno.test("crc32c: the CRC-32C check value; the peer's superblock checksum recomputed", () => {
  assert.equal(crc32c(new TextEncoder().encode("123456789")), 0xe3069283);
  let image: Uint8Array;
  try {
    image = Deno.readFileSync(`${FIXTURES}/basic.erofs`).subarray(0, 4096);
  } catch {
    return; // fixtures absent: the check value above still ran
  }
  const stored = new DataView(image.buffer).getUint32(1028, true);
  const block = image.slice(1024, 4096);
  new DataView(block.buffer).setUint32(4, 0, true);
  assert.equal(crc32cRaw(0xffffffff, block), stored);
});

Deno.test("compareNames orders like the UTF-8 bytes; utf8Length counts them", () => {
  const encoder = new TextEncoder();
  const bytes = (a: Uint8Array, b: Uint8Array) => {
    for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i] - b[i];
    return a.length - b.length;
  };
  fc.assert(
    fc.property(fc.fullUnicodeString(), fc.fullUnicodeString(), (a, b) => {
      assert.equal(
        Math.sign(compareNames(a, b)),
        Math.sign(bytes(encoder.encode(a), encoder.encode(b))),
      );
      assert.equal(utf8Length(a), encoder.encode(a).length);
    }),
  );
  // U+FFFD sorts before U+10000 in bytes, after it in UTF-16 units.
  assert.ok(compareNames("\ufffd", "\u{10000}") < 0);
});

Deno.test("packDirectory: entries fill blocks in order; size ends after the last name", () => {
  assert.deepEqual(packDirectory([1, 2, 3], 4096), { perBlock: [3], sizeBytes: 36 + 6 });
  // 12 + 255 = 267 bytes each: 15 fit in 4096 (4005), the 16th starts block 2.
  const names = Array(20).fill(255);
  assert.deepEqual(packDirectory(names, 4096), { perBlock: [15, 5], sizeBytes: 4096 + 5 * 267 });
});

Deno.test("xattr entries: prefix index, suffix, value, 4-byte padding; body header", () => {
  assert.deepEqual(
    [...encodeXattrEntry("user.test", new TextEncoder().encode("1"))],
    [4, 1, 1, 0, 0x74, 0x65, 0x73, 0x74, 0x31, 0, 0, 0],
  );
  assert.deepEqual(
    [...encodeXattrEntry("trusted.overlay.opaque", new Uint8Array([0x79]))].slice(0, 4),
    [14, 4, 1, 0], // "overlay.opaque" under trusted. (index 4), one value byte
  );
  assert.deepEqual(
    [...encodeXattrEntry("system.posix_acl_access", aclFromText("u::rw-,g::r--,o::r--")!)]
      .slice(0, 4),
    [0, 2, 28, 0], // the whole name is the prefix (index 2); version + 3 entries
  );
  assert.throws(() => encodeXattrEntry("system.posix_acl_access", new Uint8Array(4)), /version 0/);
  assert.throws(() => encodeXattrEntry("user.a\0security.capability", new Uint8Array()), /NUL/);
  assert.throws(() => encodeXattrEntry("system.other", new Uint8Array()), /prefix/);
  const body = encodeXattrBody([7], [["security.x", new Uint8Array(2)]])!;
  assert.equal(body.length, 12 + 4 + 8);
  assert.equal(body[4], 1);
  assert.equal(xattrCount(body.length), 4);
});

Deno.test("rdev encoding is new_encode_dev()", () => {
  assert.equal(encodeRdev(1, 3), 0x103);
  assert.equal(encodeRdev(259, 1048575), (0xff | (259 << 8) | (0xfff00 << 12)) >>> 0);
});

Deno.test("layout: metadata (inodes, directory blocks) strictly before file data; --order first", () => {
  const root = newNode("dir");
  const big = newNode("dir");
  root.children!.set("big", big);
  for (let i = 0; i < 800; i++) {
    const file = newNode("file", { mtimeSec: i });
    file.sizeBytes = 5000 + i;
    file.data = { kind: "fd", fd: -1, offset: 0 };
    big.children!.set(`file-${i}`, file);
  }
  const layout = layoutImage(root, { buildTimeSec: 0, buildTimeNsec: 0, order: ["big/file-799"] });
  const dataStart = layout.metadataBytes / layout.blockBytes;
  for (let i = 0; i < layout.inodeOf.length; i++) {
    assert.ok(layout.nid[i] * 32 < layout.metadataBytes);
    if (layout.kindOf(i) === "dir" && layout.blocks[i] > 0) {
      assert.ok(layout.blockAddress[i] + layout.blocks[i] <= dataStart);
    }
    if (layout.kindOf(i) === "file") assert.ok(layout.blockAddress[i] >= dataStart);
  }
  const bigIndex = [...layout.inodeOf.keys()].find((i) => layout.kindOf(i) === "dir" && i > 0)!;
  assert.ok(layout.blocks[bigIndex] >= 2, "multi-block directory");
  const first = layout.dataOrder[0];
  // file-799 (its mtime says which; entryOf is kept only for directory scans' data).
  assert.equal(layout.table.mtimeSec.get(layout.inodeOf[first]), 799);
  assert.equal(layout.entryOf.length, 0);
  assert.equal(layout.sizeOf(first), 5799);
  assert.equal(layout.blockAddress[layout.dataOrder[0]], dataStart);
  assert.throws(() => {
    const loop = newNode("dir");
    loop.children!.set("self", loop);
    layoutImage(loop, { buildTimeSec: 0, buildTimeNsec: 0 });
  }, /not a tree/);
});

Deno.test("NodeTable: columns of every width keep 40,000 inodes and entries (grown in place)", () => {
  const table = new NodeTable();
  table.indexNames();
  for (let i = 0; i < 40_000; i++) {
    const inode = table.addInode(i === 0 ? "dir" : "file", i & 0o7777);
    table.uid.set(inode, i);
    table.mtimeSec.set(inode, -(i + 1) * 1.5);
    table.size.set(inode, i * 4099);
    table.setData(inode, 0, i === 0 ? 0 : i * 512);
    if (i > 0) table.addEntry(0, `name-${i}`, inode);
  }
  // Number columns: none while all 0, 32 bits while they fit, doubles from the first that does
  // not (a size over 4 GiB here, after 40,000 narrow ones).
  assert.equal(table.gid.elementBytes, 0);
  assert.equal(table.uid.elementBytes, 4);
  assert.equal(table.mtimeSec.elementBytes, 8);
  assert.equal(table.size.elementBytes, 4);
  table.size.set(39_999, 5 * 2 ** 30 + 1);
  assert.equal(table.size.elementBytes, 8);
  table.trim();
  assert.equal(table.inodes, 40_000);
  for (const i of [1, 8191, 8192, 16385, 39_998, 39_999]) {
    assert.equal(table.modeOf(i), i & 0o7777);
    assert.equal(table.uid.get(i), i);
    assert.equal(table.gid.get(i), 0);
    assert.equal(table.mtimeSec.get(i), -(i + 1) * 1.5);
    assert.equal(table.size.get(i), i === 39_999 ? 5 * 2 ** 30 + 1 : i * 4099);
    assert.equal(table.dataOffset.get(i), i * 512);
    const e = table.findEntry(0, new TextEncoder().encode(`name-${i}`));
    assert.equal(table.entryInode[e], i);
    assert.equal(table.nameOf(e), `name-${i}`);
  }
  assert.equal(table.findEntry(0, new TextEncoder().encode("name-40000")), -1);
  // Room made after a trim reads 0 and takes new values.
  const more = table.addInode("file", 0o644);
  assert.equal(table.size.get(more), 0);
  table.size.set(more, 7);
  assert.equal(table.size.get(more), 7);
  assert.equal(table.size.get(39_999), 5 * 2 ** 30 + 1);
});
