/**
 * Hostile tar input (OCI layers come from anyone): each case gives the documented result or a
 * one-line FormatError, and memory stays bounded.
 */
import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { FormatError } from "../errors.ts";
import type { TarEntry } from "./entry.ts";
import { readTar, type TarReaderOptions } from "./reader.ts";
import { LayerFlattener } from "./whiteout.ts";
import {
  concat,
  encodeTar,
  headerBlock,
  paxBody,
  streamOf,
} from "../../tests/_support/tar_encode.ts";

const enc = new TextEncoder();

async function readAll(
  bytes: Uint8Array,
  options?: TarReaderOptions,
): Promise<(Omit<TarEntry, "body"> & { data: string })[]> {
  const out = [];
  for await (const e of readTar(streamOf(bytes, 1000), options)) {
    const data = new TextDecoder().decode(await new Response(e.body).arrayBuffer());
    out.push({ ...e, data });
  }
  return out;
}

async function formatError(bytes: Uint8Array, pattern: RegExp, options?: TarReaderOptions) {
  await rejects(readAll(bytes, options), (e: unknown) => {
    ok(e instanceof FormatError, `expected FormatError, got ${e}`);
    ok(pattern.test(e.message), `message "${e.message}" does not match ${pattern}`);
    ok(!e.message.includes("\n"), "one-line message");
    return true;
  });
}

Deno.test("paths: '..' is clamped at the root, leading '/' dropped, './' is the root", async () => {
  const entries = await readAll(encodeTar([
    { name: "./", type: "5" },
    { name: "../../etc/passwd", data: enc.encode("p") },
    { name: "/abs/x", data: enc.encode("a") },
    { name: "a/../../b", data: enc.encode("b") },
    { name: "./c/./d//e", data: enc.encode("e") },
    { name: "dir/", type: "5" },
  ]));
  deepEqual(entries.map((e) => [e.path, e.rawPath, e.kind]), [
    ["", "./", "dir"],
    ["etc/passwd", "../../etc/passwd", "file"],
    ["abs/x", "/abs/x", "file"],
    ["b", "a/../../b", "file"],
    ["c/d/e", "./c/./d//e", "file"],
    ["dir", "dir/", "dir"],
  ]);
});

Deno.test("pre-ustar directories: a regular-file member whose name ends in '/'", async () => {
  const entries = await readAll(encodeTar([
    { name: "old/", type: "\0", mode: 0o755 },
    { name: "old2/", type: "0" },
    { name: "old/file", type: "\0", data: enc.encode("v7") },
  ]));
  deepEqual(entries.map((e) => [e.path, e.kind, e.data]), [
    ["old", "dir", ""],
    ["old2", "dir", ""],
    ["old/file", "file", "v7"],
  ]);
});

Deno.test("paths: a non-directory resolving to the root is a FormatError", async () => {
  await formatError(encodeTar([{ name: "..", data: enc.encode("x") }]), /replace the root/);
  await formatError(encodeTar([{ name: "/", type: "2", linkname: "x" }]), /replace the root/);
});

Deno.test("paths past PATH_MAX or names past NAME_MAX are refused (no runtime can create them)", async () => {
  const deep = Array.from({ length: 100_000 }, () => "a").join("/");
  // Named (its ends when long), not only "at byte N".
  await formatError(
    encodeTar([{ name: "f", pax: [["path", deep]] }]),
    /^tar member "a\/a\/.*…[/a]+" \(at byte \d+\): path longer than 4095 bytes/,
  );
  await formatError(
    encodeTar([{ name: "f", pax: [["path", `d/${"n".repeat(256)}`]] }]),
    /tar member "d\/n+…n+" \(at byte \d+\): path has a name longer than 255 bytes/,
  );
  await formatError(
    encodeTar([{ name: "s", type: "2", pax: [["linkpath", "t/".repeat(2048)]] }]),
    /tar member "s" \(at byte \d+\): symlink target longer than PATH_MAX/,
  );
  await formatError(
    encodeTar([{ name: "h", type: "1", linkname: "x", pax: [["linkpath", `${"l".repeat(256)}`]] }]),
    /tar member "h" \(at byte \d+\): hard link target has a name longer than 255 bytes/,
  );
  // The limits themselves are fine: 255-byte names, paths up to 4095 bytes.
  const longest = Array.from({ length: 16 }, () => "n".repeat(255)).join("/");
  const ok1 = await readAll(
    encodeTar([{ name: "f", pax: [["path", longest]] }, {
      name: "s",
      type: "2",
      pax: [["linkpath", "t".repeat(4095)]],
    }]),
  );
  equal(ok1[0].path.length, 16 * 256 - 1);
});

Deno.test("symlinks are data: an escaping target is kept verbatim, never followed", async () => {
  const tar = encodeTar([
    { name: "link", type: "2", linkname: "/etc" },
    { name: "up", type: "2", linkname: "../../../../root" },
    { name: "link/passwd", data: enc.encode("owned") },
  ]);
  const entries = await readAll(tar);
  deepEqual(entries.map((e) => [e.path, e.kind, e.linkname]), [
    ["link", "symlink", "/etc"],
    ["up", "symlink", "../../../../root"],
    ["link/passwd", "file", ""],
  ]);
  // Building a tree refuses a member below a symlink instead of writing through it.
  const flat = new LayerFlattener<string>();
  flat.beginLayer();
  flat.add("link", "symlink", "l");
  let err: unknown;
  try {
    flat.add("link/passwd", "file", "f");
  } catch (e) {
    err = e;
  }
  ok(err instanceof FormatError);
});

Deno.test("duplicates: both are yielded in archive order (later wins is the consumer's rule)", async () => {
  const entries = await readAll(encodeTar([
    { name: "f", data: enc.encode("one") },
    { name: "./f", data: enc.encode("two") },
  ]));
  deepEqual(entries.map((e) => [e.path, e.data]), [["f", "one"], ["f", "two"]]);
});

Deno.test("hard links: target must be an earlier non-directory member (or option 'any')", async () => {
  await formatError(
    encodeTar([{ name: "h", type: "1", linkname: "missing" }]),
    /hard link to a path not earlier/,
  );
  await formatError(
    encodeTar([{ name: "h", type: "1", linkname: "later" }, {
      name: "later",
      data: enc.encode("x"),
    }]),
    /not earlier/,
  );
  await formatError(
    encodeTar([{ name: "d", type: "5" }, { name: "h", type: "1", linkname: "d" }]),
    /hard link to a directory/,
  );
  await formatError(encodeTar([{ name: "h", type: "1", linkname: "../h" }]), /no usable target/);
  const ok1 = await readAll(
    encodeTar([{ name: "f", data: enc.encode("x") }, { name: "h", type: "1", linkname: "/../f" }]),
  );
  equal(ok1[1].linkname, "f");
  const any = await readAll(encodeTar([{ name: "h", type: "1", linkname: "lower/f" }]), {
    hardlinkTargets: "any",
  });
  equal(any[0].linkname, "lower/f");
});

Deno.test("truncation: in a header, in data, in a pax header, and without end marker", async () => {
  const full = encodeTar([{ name: "f", data: new Uint8Array(3000).fill(7) }]);
  // Shorter than one header: said to be no tar at all, not a cut-off one.
  await formatError(full.subarray(0, 300), /not a tar archive: the input ends at byte 300/);
  const two = encodeTar([{ name: "a", data: new Uint8Array(10) }, { name: "b" }]);
  await formatError(two.subarray(0, 1024 + 300), /truncated in header \(input ends at byte 1324\)/);
  await formatError(full.subarray(0, 512 + 1000), /truncated in file data/);
  // Ending after a whole member without the marker is accepted (Go's archive/tar, GNU tar).
  equal((await readAll(full.subarray(0, 512 + 3072))).length, 1);
  const pax = encodeTar([{ name: "f", pax: [["path", "x".repeat(2000)]] }]);
  await formatError(pax.subarray(0, 1024), /truncated in pax/);
  const short = encodeTar([{ name: "f", pax: [["path", "x".repeat(300)]] }]);
  await formatError(short.subarray(0, 1024), /truncated in the member after a pax\/GNU header/);
  await formatError(new Uint8Array(), /empty input/);
  // A lone zero block at EOF is accepted (GNU tar does too).
  equal((await readAll(full.subarray(0, 512 + 3072 + 512))).length, 1);
});

Deno.test("truncation surfaces on the body stream when the consumer reads it", async () => {
  const full = encodeTar([{ name: "f", data: new Uint8Array(300_000) }]);
  const it = readTar(streamOf(full.subarray(0, 100_000)));
  const first = await it.next();
  ok(!first.done);
  await rejects(new Response(first.value.body).arrayBuffer(), FormatError);
  await it.return();
});

Deno.test("metadata caps: huge pax header, chained pax headers, huge GNU long name", async () => {
  const big = "x".repeat(2 << 20);
  await formatError(encodeTar([{ name: "f", pax: [["path", big]] }]), /exceeds 1048576 bytes/);
  // The cap is checked on the size field, before anything is buffered.
  const claimed = headerBlock({ name: "PaxHeader", type: "x", sizeField: 8 * 2 ** 30 });
  await formatError(concat([claimed, new Uint8Array(1024)]), /exceeds/);
  const half = paxBody([["SCHILY.xattr.user.a", "y".repeat(600_000)]]);
  const parts = [
    headerBlock({ name: "P", type: "x", data: half }),
    half,
    new Uint8Array((512 - half.length % 512) % 512),
    headerBlock({ name: "P", type: "x", data: half }),
    half,
  ];
  await formatError(concat([...parts, new Uint8Array(4096)]), /exceeds/);
  await formatError(
    concat([
      headerBlock({ name: "././@LongLink", type: "L", sizeField: 4 << 20 }),
      new Uint8Array(1024),
    ]),
    /exceeds/,
  );
  // A smaller cap applies to everything, a larger one lets big records through.
  await formatError(encodeTar([{ name: "f", pax: [["path", "x".repeat(5000)]] }]), /exceeds 4096/, {
    maxMetaBytes: 4096,
  });
  const long = await readAll(
    encodeTar([{ name: "f", pax: [["SCHILY.xattr.user.big", "x".repeat(5000)]] }]),
  );
  equal(long[0].xattrs.get("user.big")!.length, 5000);
});

/** A pax header of `type` ("x" or "g") holding `records`, padded to whole blocks. */
function paxHeader(type: "x" | "g", records: [string, string][]): Uint8Array {
  const body = paxBody(records);
  return concat([
    headerBlock({ name: "P", type, data: body }),
    body,
    new Uint8Array((512 - body.length % 512) % 512),
  ]);
}

Deno.test("metadata caps: global records count their keys, at most 256 of them, and empty headers are not free", async () => {
  // Keys of 6,000 bytes with empty values: 1.2 MB kept for every member over two headers.
  const longKeys = (from: number) =>
    Array.from(
      { length: 100 },
      (_, i) =>
        [`SCHILY.xattr.user.${String(from + i).padStart(6000, "k")}`, ""] as [string, string],
    );
  await formatError(
    concat([
      paxHeader("g", longKeys(0)),
      encodeTar([{ name: "a" }]).subarray(0, 512),
      paxHeader("g", longKeys(100)),
      encodeTar([{ name: "b" }]),
    ]),
    /pax\/GNU metadata exceeds 1048576 bytes/,
  );
  const xattrs = (count: number) =>
    Array.from({ length: count }, (_, i) => [`SCHILY.xattr.user.${i}`, "v"] as [string, string]);
  await formatError(
    concat([paxHeader("g", xattrs(257)), encodeTar([{ name: "a" }])]),
    /global pax header at byte 0: more than 256 records for every member/,
  );
  // Keys no member reads (a comment, git archive's) are not kept: any number of them.
  const comments = Array.from({ length: 5000 }, (_, i) => [`comment${i}`, ""] as [string, string]);
  const kept = await readAll(
    concat([
      paxHeader("g", [...comments, ...xattrs(3), ["size", "7"]]),
      encodeTar([{ name: "a" }]),
    ]),
  );
  deepEqual([...kept[0].xattrs.keys()].sort(), ["user.0", "user.1", "user.2"]);
  equal(kept[0].size, 0);
  // 3,000 empty pax headers before one member: a block each, 1.5 MB of metadata headers.
  const empty = paxHeader("x", []);
  await formatError(
    concat([...Array.from({ length: 3000 }, () => empty), encodeTar([{ name: "a" }])]),
    /pax\/GNU metadata exceeds 1048576 bytes/,
  );
});

Deno.test("corrupt headers: checksum, non-UTF-8 name, unknown type, negative size, junk", async () => {
  await formatError(encodeTar([{ name: "f", badChecksum: true }]), /checksum mismatch/);
  await formatError(encodeTar([{ name: new Uint8Array([0x66, 0xff, 0xfe]) }]), /not valid UTF-8/);
  await formatError(encodeTar([{ name: "f", type: "Z" }]), /unsupported type 'Z'/);
  await formatError(encodeTar([{ name: "f", type: "M" }]), /unsupported type 'M'/);
  const neg = headerBlock({ name: "f" });
  neg.fill(0xff, 124, 136); // base-256 -1
  neg.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of neg) sum += b;
  neg.set(enc.encode(sum.toString(8).padStart(6, "0") + "\0 "), 148);
  await formatError(concat([neg, new Uint8Array(1024)]), /negative size/);
  const junk = new Uint8Array(4096).map((_, i) => Math.imul(i + 1, 2654435761) >>> 24);
  await formatError(junk, /checksum mismatch/);
  await formatError(encodeTar([{ name: "s", type: "2", linkname: "" }]), /empty target/);
  await formatError(
    encodeTar([{ name: "f", pax: [["path", new Uint8Array([0x61, 0, 0x62])]] }]),
    /NUL byte in path/,
  );
  await formatError(encodeTar([{ name: "f", pax: [["size", "-1"]] }]), /bad size/);
});

Deno.test("pax: LIBARCHIVE.xattr (URL-encoded name, base64 value); global 'g' header", async () => {
  const entries = await readAll(concat([
    (() => {
      const body = paxBody([["uid", "4242"], ["path", "ignored-global-path"], [
        "SCHILY.xattr.user.g",
        "global",
      ]]);
      return concat([
        headerBlock({ name: "G", type: "g", data: body }),
        body,
        new Uint8Array((512 - body.length % 512) % 512),
      ]);
    })(),
    encodeTar([
      { name: "a", pax: [["LIBARCHIVE.xattr.user.sp%20ace", btoa("\x00\xffv")]] },
      { name: "b", uid: 7, pax: [["uid", "99"]] },
    ]),
  ]));
  deepEqual(entries.map((e) => [e.path, e.uid]), [["a", 4242], ["b", 99]]);
  deepEqual([...entries[0].xattrs.keys()].sort(), ["user.g", "user.sp ace"]);
  deepEqual([...entries[0].xattrs.get("user.sp ace")!], [0, 0xff, 0x76]);
  await formatError(
    encodeTar([{ name: "a", pax: [["LIBARCHIVE.xattr.user.x", "!!not base64"]] }]),
    /bad LIBARCHIVE.xattr.user.x/,
  );
});

Deno.test("sparse maps that would place bytes wrongly are refused", async () => {
  const data = enc.encode("abcd");
  const sparse = (map: string, size = "100") =>
    encodeTar([{
      name: "f",
      data,
      pax: [["GNU.sparse.map", map], ["GNU.sparse.size", size], ["GNU.sparse.major", "0"], [
        "GNU.sparse.minor",
        "1",
      ]],
    }]);
  const good = await readAll(sparse("10,2,50,2"));
  deepEqual(good[0].sparse, [{ offset: 10, length: 2 }, { offset: 50, length: 2 }]);
  equal(good[0].size, 100);
  await formatError(sparse("50,2,10,2"), /out of order/);
  await formatError(sparse("10,2,11,2"), /overlap/);
  await formatError(sparse("10,2,99,2"), /past the real size/);
  await formatError(sparse("10,2,50,3"), /hold 5 bytes but 4/);
  await formatError(sparse("10,2,50"), /odd number/);
});

Deno.test("bounded memory: a 1 GiB member streamed or skipped without buffering", async () => {
  const sizeBytes = 1 << 30;
  const chunkBytes = 1 << 20;
  function huge(): ReadableStream<Uint8Array> {
    let sent = -1;
    return new ReadableStream<Uint8Array>({
      pull(c) {
        if (sent === -1) c.enqueue(headerBlock({ name: "big", sizeField: sizeBytes }));
        else if (sent < sizeBytes) c.enqueue(new Uint8Array(chunkBytes).fill(1)); // resident: buffering would show
        else if (sent === sizeBytes) {
          c.enqueue(concat([headerBlock({ name: "after" }), new Uint8Array(1024)]));
        } else c.close();
        sent = sent === -1 ? 0 : sent + chunkBytes;
      },
    }, { highWaterMark: 0 });
  }
  const before = Deno.memoryUsage().rss;
  let seen = 0;
  const names: string[] = [];
  for await (const e of readTar(huge())) {
    names.push(e.path);
    if (e.path === "big") { for await (const c of e.body) seen += c.length; }
  }
  equal(seen, sizeBytes);
  names.length = 0;
  for await (const e of readTar(huge())) names.push(e.path); // bodies left unread: skipped
  deepEqual(names, ["big", "after"]);
  const grewMiB = (Deno.memoryUsage().rss - before) / (1 << 20);
  // Buffering a member would hold 1 GiB; the margin is wide because other test files run in
  // this process at the same time (--parallel) and their allocations count in the same RSS.
  ok(grewMiB < 512, `RSS grew ${grewMiB.toFixed(0)} MiB reading 2 GiB`);
});

Deno.test("zero blocks then data, with no member before: not an (empty) tar archive", async () => {
  // An EROFS image: 1 KiB of zeros, then its superblock (magic 0xe0f5e1e2 little-endian).
  const erofs = new Uint8Array(8192);
  erofs.set([0xe2, 0xe1, 0xf5, 0xe0], 1024);
  await formatError(erofs, /not a tar archive: this is an EROFS image/);
  const other = new Uint8Array(4096);
  other[3000] = 7;
  await formatError(other, /not a tar archive: zero blocks, then data/);
  // An empty archive (GNU tar pads it to 10 KiB of zeros) is one.
  deepEqual(await readAll(new Uint8Array(10240)), []);
  // Data after the marker of an archive with members stays ignored, as GNU tar does.
  const withMember = concat([
    encodeTar([{ name: "a", data: enc.encode("x") }]),
    enc.encode("junk"),
  ]);
  equal((await readAll(withMember)).length, 1);
});

Deno.test("header-only members: no data follows a link, device, dir or FIFO, whatever its size says", async () => {
  // What a scanner using Go's archive/tar sees is what a mount shows: a size field on such a
  // header (or a pax size) hid `cover` and showed a smuggled `bin/sh` instead.
  const smuggled = enc.encode("#!/bin/sh\necho hidden\n");
  const padded = new Uint8Array(512);
  padded.set(smuggled);
  const cover = concat([headerBlock({ name: "bin/sh", data: smuggled, mode: 0o755 }), padded]);
  for (
    const header of [
      { name: "d/", type: "5" },
      { name: "l", type: "2", linkname: "after" },
      { name: "h", type: "1", linkname: "first" },
      { name: "c", type: "3", devMajor: 1, devMinor: 3 },
      { name: "p", type: "6" },
      { name: "old-style-dir/", type: "\0" },
    ]
  ) {
    for (const claim of [{ sizeField: 1024 }, { pax: [["size", "1024"]] as [string, string][] }]) {
      const entries = await readAll(encodeTar([
        { name: "first", data: enc.encode("1") },
        { ...header, ...claim },
        { name: "cover", data: cover },
        { name: "after", data: enc.encode("a") },
      ]));
      deepEqual(
        entries.map((e) => e.path),
        ["first", header.name.replace(/\/$/, ""), "cover", "after"],
        `${header.type} with ${JSON.stringify(claim)}`,
      );
      equal(entries[2].data.length, cover.length);
    }
  }
});
