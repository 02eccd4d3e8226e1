/**
 * A small tar writer for tests: ustar headers plus pax records, enough to build archives no
 * real producer would write (hostile names, missing link targets, bad checksums).
 */
const enc = new TextEncoder();

export interface TestMember {
  name: string | Uint8Array;
  /** Tar typeflag character: "0" file, "1" hardlink, "2" symlink, "3" char, "4" block, "5" dir, "6" fifo. */
  type?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  data?: Uint8Array;
  /** Overrides the header's size field (data is written as given). */
  sizeField?: number;
  linkname?: string;
  devMajor?: number;
  devMinor?: number;
  uname?: string;
  gname?: string;
  /** pax records for a preceding 'x' header; values are strings or raw bytes. */
  pax?: [string, string | Uint8Array][];
  /** Corrupts the checksum. */
  badChecksum?: boolean;
}

function octal(value: number, width: number): Uint8Array {
  return enc.encode(value.toString(8).padStart(width - 1, "0") + "\0");
}

/** One 512-byte ustar header. */
export function headerBlock(m: TestMember): Uint8Array {
  const b = new Uint8Array(512);
  const name = typeof m.name === "string" ? enc.encode(m.name) : m.name;
  b.set(name.subarray(0, 100), 0);
  b.set(octal(m.mode ?? 0o644, 8), 100);
  b.set(octal(m.uid ?? 0, 8), 108);
  b.set(octal(m.gid ?? 0, 8), 116);
  b.set(octal(m.sizeField ?? m.data?.length ?? 0, 12), 124);
  b.set(octal(m.mtime ?? 1_700_000_000, 12), 136);
  b[156] = (m.type ?? "0").charCodeAt(0);
  b.set(enc.encode(m.linkname ?? "").subarray(0, 100), 157);
  b.set(enc.encode("ustar\x0000"), 257);
  b.set(enc.encode(m.uname ?? "").subarray(0, 31), 265);
  b.set(enc.encode(m.gname ?? "").subarray(0, 31), 297);
  b.set(octal(m.devMajor ?? 0, 8), 329);
  b.set(octal(m.devMinor ?? 0, 8), 337);
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (const x of b) sum += x;
  if (m.badChecksum) sum += 1;
  b.set(enc.encode(sum.toString(8).padStart(6, "0") + "\0 "), 148);
  return b;
}

/** A pax body: `"%d %s=%s\n"` records, the length counting itself. */
export function paxBody(records: [string, string | Uint8Array][]): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const [key, value] of records) {
    const v = typeof value === "string" ? enc.encode(value) : value;
    const rest = enc.encode(` ${key}=`).length + v.length + 1;
    let len = rest + 1;
    while (rest + String(len).length !== len) len = rest + String(len).length;
    const head = enc.encode(`${len} ${key}=`);
    const rec = new Uint8Array(len);
    rec.set(head);
    rec.set(v, head.length);
    rec[len - 1] = 0x0a;
    parts.push(rec);
  }
  return concat(parts);
}

const pad = (n: number) => new Uint8Array((512 - (n % 512)) % 512);

/** Encodes members followed by the two-zero-block end marker (unless `end` is false). */
export function encodeTar(members: TestMember[], end = true): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const m of members) {
    if (m.pax) {
      const body = paxBody(m.pax);
      parts.push(headerBlock({ name: "PaxHeader", type: "x", data: body }), body, pad(body.length));
    }
    parts.push(headerBlock(m));
    if (m.data) parts.push(m.data, pad(m.data.length));
  }
  if (end) parts.push(new Uint8Array(1024));
  return concat(parts);
}

export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A stream that delivers `bytes` in chunks of `chunkBytes` (exercises chunk boundaries). */
export function streamOf(bytes: Uint8Array, chunkBytes = 4096): ReadableStream<Uint8Array> {
  let at = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (at >= bytes.length) {
        controller.close();
        return;
      }
      controller.enqueue(bytes.slice(at, at + chunkBytes));
      at += chunkBytes;
    },
  });
}
