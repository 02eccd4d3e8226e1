/**
 * Property: random members written by an encoder come back from `readTar` with the same
 * fields and bytes, whatever the chunking of the input stream. Two encoders: the test helper
 * (pax records for long names, big ids, ns mtimes, binary xattrs) and, independently, Python's
 * tarfile in PAX format.
 */
import { deepEqual } from "node:assert/strict";
import fc from "fast-check";
import { readTar } from "../lib/tar/reader.ts";
import { command, requires } from "./_support/requires.ts";
import { encodeTar, streamOf, type TestMember } from "./_support/tar_encode.ts";
import { runTool } from "./_support/tool.ts";

interface Spec {
  path: string;
  kind: "file" | "dir" | "symlink" | "hardlink" | "char" | "block" | "fifo";
  mode: number;
  uid: number;
  gid: number;
  mtimeSec: number;
  mtimeNsec: number;
  data: Uint8Array;
  linkname: string;
  devMajor: number;
  devMinor: number;
  xattrs: [string, Uint8Array][];
}

const component = fc.stringMatching(/^[a-zA-Z0-9_é名-][a-zA-Z0-9._ é名-]{0,70}$/);
const specArb = fc.record({
  parts: fc.array(component, { minLength: 1, maxLength: 4 }),
  kind: fc.constantFrom<Spec["kind"][]>(
    "file",
    "file",
    "dir",
    "symlink",
    "hardlink",
    "char",
    "block",
    "fifo",
  ),
  mode: fc.integer({ min: 0, max: 0o7777 }),
  uid: fc.oneof(fc.integer({ min: 0, max: 0o7777777 }), fc.integer({ min: 0, max: 2 ** 32 })),
  gid: fc.integer({ min: 0, max: 0o7777777 }),
  mtimeSec: fc.integer({ min: 0, max: 2 ** 33 - 1 }),
  mtimeNsec: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 999_999_999 })),
  data: fc.uint8Array({ maxLength: 3000 }),
  target: fc.stringMatching(/^[a-z./]{1,200}$/),
  devMajor: fc.integer({ min: 0, max: 4095 }),
  devMinor: fc.integer({ min: 0, max: 0o7777777 }),
  xattrs: fc.uniqueArray(
    fc.tuple(fc.stringMatching(/^user\.[a-z]{1,12}$/), fc.uint8Array({ maxLength: 64 })),
    { selector: ([k]) => k, maxLength: 3 },
  ),
});

/** Unique paths (index prefix); hard links point at an earlier file or become files. */
type RawSpec = typeof specArb extends fc.Arbitrary<infer T> ? T : never;
function toSpecs(raw: RawSpec[]): Spec[] {
  const specs: Spec[] = [];
  raw.forEach((r, i) => {
    const path = [`m${i}`, ...r.parts].join("/");
    const earlierFile = specs.find((s) => s.kind === "file");
    const kind = r.kind === "hardlink" && !earlierFile ? "file" : r.kind;
    specs.push({
      path,
      kind,
      mode: r.mode,
      uid: r.uid,
      gid: r.gid,
      mtimeSec: r.mtimeSec,
      mtimeNsec: r.mtimeNsec,
      data: kind === "file" ? r.data : new Uint8Array(),
      linkname: kind === "symlink" ? r.target : kind === "hardlink" ? earlierFile!.path : "",
      devMajor: kind === "char" || kind === "block" ? r.devMajor : 0,
      devMinor: kind === "char" || kind === "block" ? r.devMinor : 0,
      xattrs: r.xattrs,
    });
  });
  return specs;
}

const TYPEFLAG = {
  file: "0",
  hardlink: "1",
  symlink: "2",
  char: "3",
  block: "4",
  dir: "5",
  fifo: "6",
};
const utf8Bytes = (s: string) => new TextEncoder().encode(s).length;

function encodeSpecs(specs: Spec[]): Uint8Array {
  return encodeTar(specs.map((s): TestMember => {
    const pax: [string, string | Uint8Array][] = [];
    if (utf8Bytes(s.path) > 99) pax.push(["path", s.path]);
    if (utf8Bytes(s.linkname) > 99) pax.push(["linkpath", s.linkname]);
    if (s.uid > 0o7777777) pax.push(["uid", String(s.uid)]);
    if (s.mtimeNsec > 0 || s.mtimeSec > 0o77777777777) {
      pax.push(["mtime", `${s.mtimeSec}.${String(s.mtimeNsec).padStart(9, "0")}`]);
    }
    for (const [k, v] of s.xattrs) pax.push([`SCHILY.xattr.${k}`, v]);
    return {
      name: s.path + (s.kind === "dir" ? "/" : ""),
      type: TYPEFLAG[s.kind],
      mode: s.mode,
      uid: Math.min(s.uid, 0o7777777),
      gid: s.gid,
      mtime: Math.min(s.mtimeSec, 0o77777777777),
      data: s.data,
      linkname: s.linkname,
      devMajor: s.devMajor,
      devMinor: s.devMinor,
      pax: pax.length ? pax : undefined,
    };
  }));
}

async function decode(tar: Uint8Array, chunkBytes: number): Promise<Spec[]> {
  const out: Spec[] = [];
  for await (const e of readTar(streamOf(tar, chunkBytes))) {
    out.push({
      path: e.path,
      kind: e.kind,
      mode: e.mode,
      uid: e.uid,
      gid: e.gid,
      mtimeSec: e.mtimeSec,
      mtimeNsec: e.mtimeNsec,
      data: new Uint8Array(await new Response(e.body).arrayBuffer()),
      linkname: e.linkname,
      devMajor: e.devMajor,
      devMinor: e.devMinor,
      xattrs: [...e.xattrs].sort(([a], [b]) => a < b ? -1 : 1),
    });
  }
  return out;
}

const sorted = (specs: Spec[]) =>
  specs.map((s) => ({ ...s, xattrs: [...s.xattrs].sort(([a], [b]) => a < b ? -1 : 1) }));

Deno.test("property: test encoder → readTar round trip at any chunking", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(specArb, { maxLength: 12 }),
      fc.integer({ min: 1, max: 5000 }),
      async (raw, chunkBytes) => {
        const specs = toSpecs(raw);
        deepEqual(await decode(encodeSpecs(specs), chunkBytes), sorted(specs));
      },
    ),
    { numRuns: 150 },
  );
});

const PY_WRITE = `
import sys, json, tarfile, io, base64
specs = json.load(sys.stdin)
kinds = {"file": tarfile.REGTYPE, "hardlink": tarfile.LNKTYPE, "symlink": tarfile.SYMTYPE,
         "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE, "dir": tarfile.DIRTYPE, "fifo": tarfile.FIFOTYPE}
with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT) as t:
    for s in specs:
        ti = tarfile.TarInfo(s["path"])
        ti.type = kinds[s["kind"]]
        ti.mode, ti.uid, ti.gid, ti.mtime = s["mode"], s["uid"], s["gid"], s["mtimeSec"]
        ti.linkname, ti.devmajor, ti.devminor = s["linkname"], s["devMajor"], s["devMinor"]
        data = base64.b64decode(s["data"])
        ti.size = len(data)
        for k, v in s["xattrs"]:
            ti.pax_headers["SCHILY.xattr." + k] = base64.b64decode(v).decode("utf-8", "surrogateescape")
        t.addfile(ti, io.BytesIO(data) if s["kind"] == "file" else None)
`;

const b64 = (b: Uint8Array) => btoa(String.fromCharCode(...b));

Deno.test({
  name: "property: Python tarfile (PAX) → readTar",
  ignore: requires(command("python3")),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "tar-property-" });
    try {
      await fc.assert(
        fc.asyncProperty(fc.array(specArb, { maxLength: 10 }), async (raw) => {
          const specs = toSpecs(raw).map((s) => ({ ...s, mtimeNsec: 0 }));
          const json = JSON.stringify(
            specs.map((s) => ({
              ...s,
              data: b64(s.data),
              xattrs: s.xattrs.map(([k, v]) => [k, b64(v)]),
            })),
          );
          await Deno.writeTextFile(`${dir}/spec.json`, json);
          await runTool("sh", [
            "-c",
            `python3 -c '${PY_WRITE}' '${dir}/a.tar' < '${dir}/spec.json'`,
          ]);
          deepEqual(await decode(await Deno.readFile(`${dir}/a.tar`), 4096), sorted(specs));
        }),
        { numRuns: 10 },
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
