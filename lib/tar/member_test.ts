/**
 * Fields the tar reader decodes with shortcuts (tarspeed, session 54): user and group names
 * (the last one decoded is kept with its bytes), paths decoded in JavaScript when ASCII. The
 * shortcuts must give what a full decode gives, whatever came before.
 */
import { deepEqual, equal, rejects } from "node:assert/strict";
import { readTar } from "./reader.ts";
import { encodeTar, streamOf } from "../../tests/_support/tar_encode.ts";

const NOT_UTF8 = new Uint8Array([0x72, 0xff, 0x6f]);
const LONG = "u".repeat(70); // past the 64 bytes a kept name holds

Deno.test("tar reader: user and group names of consecutive members", async () => {
  const owners: { uname?: string; gname?: string; pax?: [string, string | Uint8Array][] }[] = [
    { uname: "root", gname: "root" },
    { uname: "root", gname: "root" },
    { uname: "roo", gname: "rooT" },
    { uname: "alice", gname: "root" },
    { uname: "", gname: "" },
    { uname: "root", gname: "wheel" },
    { pax: [["uname", NOT_UTF8], ["gname", "é"]] },
    { pax: [["uname", new Uint8Array([0x72, 0xfe, 0x6f])], ["gname", "é"]] },
    { pax: [["uname", LONG], ["gname", LONG]] },
    { pax: [["uname", LONG.slice(1) + "v"], ["gname", LONG]] },
    { uname: "root", gname: "root" },
  ];
  const tar = encodeTar(owners.map((o, i) => ({ name: `f${i}`, ...o })));
  const got = [];
  for await (const e of readTar(streamOf(tar, 700))) got.push([e.uname, e.gname]);
  deepEqual(got, [
    ["root", "root"],
    ["root", "root"],
    ["roo", "rooT"],
    ["alice", "root"],
    ["", ""],
    ["root", "wheel"],
    ["r\ufffdo", "é"],
    ["r\ufffdo", "é"],
    [LONG, LONG],
    [LONG.slice(1) + "v", LONG],
    ["root", "root"],
  ]);
});

Deno.test("tar reader: ASCII, non-ASCII and control-character paths decode exactly", async () => {
  const names = [
    "plain/ascii.txt",
    "caf\u00e9/\u65e5\u672c",
    "tab\there",
    "del\x7f",
    "a/x".repeat(300),
  ];
  const tar = encodeTar(
    names.map((name) => name.length > 100 ? { name: "long", pax: [["path", name]] } : { name }),
  );
  const got = [];
  for await (const e of readTar(streamOf(tar, 512))) got.push(e.path);
  deepEqual(got, names);
});

Deno.test("tar reader: bodies read whole, in part, late or not at all", async () => {
  const data = (n: number, fill: number) => new Uint8Array(n).fill(fill);
  const tar = encodeTar([
    { name: "skipped", data: data(3000, 1) },
    { name: "partly", data: data(5000, 2) },
    { name: "whole", data: data(1500, 3) },
    { name: "untouched-stream", data: data(700, 4) },
    { name: "late", data: data(10, 5) },
    { name: "last", data: data(1, 6) },
  ]);
  for (const chunkBytes of [100, 512, 4096, 1 << 20]) {
    const seen: string[] = [];
    let late: ReadableStream<Uint8Array> | undefined;
    for await (const e of readTar(streamOf(tar, chunkBytes))) {
      seen.push(e.path);
      if (e.path === "partly") {
        const first = await e.body.getReader().read();
        deepEqual(first.value![0], 2);
      } else if (e.path === "whole") {
        deepEqual(new Uint8Array(await new Response(e.body).arrayBuffer()), data(1500, 3));
      } else if (e.path === "untouched-stream") {
        equal(e.body, e.body); // one stream, made once
      } else if (e.path === "late") {
        late = e.body;
      } else if (e.path === "last") {
        deepEqual(new Uint8Array(await new Response(e.body).arrayBuffer()), data(1, 6));
      }
    }
    deepEqual(seen, ["skipped", "partly", "whole", "untouched-stream", "late", "last"]);
    await rejects(
      new Response(late).arrayBuffer(),
      /tar entry data read after the reader moved to the next entry/,
    );
  }
});
