/** The index record binds meta + zinfo to one layer; anything else is refused. */
import assert from "node:assert/strict";
import { FormatError } from "../errors.ts";
import { FIXTURES } from "../../tests/_support/requires.ts";
import {
  checkIndexRecord,
  type IndexRecord,
  parseIndexRecord,
  sha256Digest,
} from "./index_record.ts";

const LAYER = {
  digest: "sha256:164bf5cabe46244c2b580833710a382d6420875c0a7719e4668d86860c9d727e",
  size: 1129602,
};

async function fixtureRecord(): Promise<[IndexRecord, Uint8Array, Uint8Array]> {
  const meta = await Deno.readFile(`${FIXTURES}/layer.meta.erofs`);
  const zinfo = await Deno.readFile(`${FIXTURES}/layer.zinfo`);
  const record: IndexRecord = {
    layer: LAYER,
    diffId: "sha256:0525f2da1a32dbda20d1dfb306f1f25e2f04bde5db74d56c5c6d5438c58e2753",
    tarBytes: 1710080,
    meta: { file: "layer.meta.erofs", digest: sha256Digest(meta) },
    zinfo: { file: "layer.zinfo", digest: sha256Digest(zinfo), spanBytes: 4194304, checkpoints: 1 },
  };
  return [record, meta, zinfo];
}

const encode = (value: unknown) => new TextEncoder().encode(JSON.stringify(value));

Deno.test("index record: round trip and a matching layer pass", async () => {
  const [record, meta, zinfo] = await fixtureRecord();
  assert.deepEqual(parseIndexRecord(encode(record)), record);
  checkIndexRecord(record, LAYER, meta, zinfo);
});

Deno.test("index record: another layer, meta, zinfo or a short tar is refused", async () => {
  const [record, meta, zinfo] = await fixtureRecord();
  const refuse = (fn: () => void, message: RegExp) =>
    assert.throws(fn, (e: Error) => e instanceof FormatError && message.test(e.message));
  refuse(() => checkIndexRecord(record, { ...LAYER, size: 1 }, meta, zinfo), /made for layer/);
  refuse(
    () => checkIndexRecord(record, { ...LAYER, digest: `sha256:${"0".repeat(64)}` }, meta, zinfo),
    /made for layer/,
  );
  const otherMeta = meta.slice();
  otherMeta[2000] ^= 1;
  refuse(() => checkIndexRecord(record, LAYER, otherMeta, zinfo), /not the meta image/);
  refuse(() => checkIndexRecord(record, LAYER, meta, zinfo.subarray(1)), /not the zinfo/);
  refuse(() => checkIndexRecord(record, LAYER, meta), /not the zinfo/);
  const withPieces = {
    ...record,
    pieces: { file: "layer.pieces", digest: sha256Digest(new Uint8Array(64)), pieceBytes: 1 << 20 },
  };
  checkIndexRecord(withPieces, LAYER, meta, zinfo, new Uint8Array(64));
  refuse(
    () => checkIndexRecord(withPieces, LAYER, meta, zinfo, new Uint8Array(32)),
    /piece digest file/,
  );
  refuse(() => checkIndexRecord(withPieces, LAYER, meta, zinfo), /piece digest file/);
  const short = { ...record, tarBytes: 1_000_000 };
  refuse(() => checkIndexRecord(short, LAYER, meta, zinfo), /refers to 1703936 bytes of tar/);
});

Deno.test("index record: hostile JSON is refused with the field named", async () => {
  const [record] = await fixtureRecord();
  const cases: [unknown, RegExp][] = [
    [{ ...record, layer: { ...record.layer, digest: "sha256:xyz" } }, /layer.digest/],
    [{ ...record, layer: { ...record.layer, size: -1 } }, /layer.size/],
    [{ ...record, tarBytes: 2 ** 60 }, /tarBytes/],
    [{ ...record, meta: { ...record.meta, file: "../etc/passwd" } }, /meta.file/],
    [{ ...record, meta: { ...record.meta, file: ".hidden" } }, /meta.file/],
    [{ ...record, zinfo: { ...record.zinfo, checkpoints: "1" } }, /zinfo.checkpoints/],
    [
      { ...record, pieces: { file: "x.pieces", digest: "sha256:0", pieceBytes: 1 } },
      /pieces.digest/,
    ],
    [[], /record/],
    [null, /record/],
  ];
  for (const [value, message] of cases) {
    assert.throws(() => parseIndexRecord(encode(value)), message);
  }
  assert.throws(() => parseIndexRecord(new TextEncoder().encode("{")), /not JSON/);
  assert.throws(() => parseIndexRecord(new Uint8Array([0xff, 0xfe])), /not JSON/);
  assert.throws(() => parseIndexRecord(new Uint8Array(70_000)), /more than an index record/);
});
