import { deepEqual, throws } from "node:assert/strict";
import { FormatError } from "../errors.ts";
import { parsePaxRecords, paxTime } from "./pax.ts";

const ascii = (s: string) => new TextEncoder().encode(s);
const time = (v: string) => paxTime({ key: "mtime", value: ascii(v) }, 0);

Deno.test("paxTime: fractions, negative times, excess digits", () => {
  deepEqual(time("1700000000.5"), { sec: 1700000000, nsec: 500000000 });
  deepEqual(time("12.0000000019"), { sec: 12, nsec: 1 });
  deepEqual(time("-1.25"), { sec: -2, nsec: 750000000 });
  deepEqual(time("-3"), { sec: -3, nsec: 0 });
  throws(() => time("1e9"), FormatError);
});

Deno.test("parsePaxRecords: binary values, NUL padding, bad lengths", () => {
  const body = ascii("20 SCHILY.xattr.a=\0\n" + "11 path=ab\n\0\0\0");
  const records = parsePaxRecords(body, 0);
  deepEqual(records.map((r) => [r.key, [...r.value]]), [["SCHILY.xattr.a", [0]], [
    "path",
    [0x61, 0x62],
  ]]);
  throws(() => parsePaxRecords(ascii("99 path=a\n"), 0), FormatError);
  throws(() => parsePaxRecords(ascii("9 path=ab!"), 0), FormatError);
  throws(() => parsePaxRecords(ascii("x path=a\n"), 0), FormatError);
});
