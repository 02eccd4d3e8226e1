/**
 * The multi-range GET's reply parser (lib/oci/blob_ranges.ts) against a server that answers
 * whatever the test says: a well-formed multipart/byteranges reply gives every range; parts
 * not asked for, with data shorter or longer than their header says (out of frame: no
 * delimiter where the part should end), of another blob size, past the end of the body or
 * with unterminated headers are left out (the caller reads those ranges alone and checks each
 * against its digest); a body over the bound, a 200 with the whole blob or a plain 206 of
 * another range give nothing for the rest — never a wrong byte at a range's place, never an
 * exception for the reply's content.
 */
import assert from "node:assert/strict";
import { RegistryClient } from "../lib/oci/client.ts";
import { readBlobRanges } from "../lib/oci/blob_ranges.ts";

const BLOB_BYTES = 1 << 20;
const blob = new Uint8Array(BLOB_BYTES).map((_, i) => (i * 7 + (i >> 8)) & 0xff);
const DIGEST = "sha256:" + "ab".repeat(32);
const BOUNDARY = "b0undary";
const text = (s: string) => new TextEncoder().encode(s);

interface Part {
  first: number;
  last: number;
  total?: number | "*";
  /** Bytes sent (default: the blob's at first..last). */
  bytes?: Uint8Array;
  /** Raw header block instead of the usual one. */
  headers?: string;
}

function multipart(parts: Part[], closing = true): Uint8Array {
  const chunks: Uint8Array[] = [];
  for (const p of parts) {
    chunks.push(text(`--${BOUNDARY}\r\n`));
    chunks.push(text(
      p.headers ??
        `Content-Type: application/octet-stream\r\nContent-Range: bytes ${p.first}-${p.last}/${
          p.total ?? BLOB_BYTES
        }\r\n\r\n`,
    ));
    chunks.push(p.bytes ?? blob.subarray(p.first, p.last + 1));
    chunks.push(text("\r\n"));
  }
  if (closing) chunks.push(text(`--${BOUNDARY}--\r\n`));
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** A server whose next blob reply is `reply`; serves /v2/ as an open registry. */
async function withServer(
  fn: (client: RegistryClient, answer: (r: () => Response) => void) => Promise<void>,
) {
  let next: () => Response = () => new Response("no reply set", { status: 500 });
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (request) => {
      const path = new URL(request.url).pathname;
      if (path === "/v2/" || path === "/v2") return new Response("{}");
      return next();
    },
  );
  const client = new RegistryClient(`127.0.0.1:${server.addr.port}`, {
    plainHttp: true,
    maxAttempts: 1,
    hostsConfigDir: false,
  });
  try {
    await fn(client, (r) => next = r);
  } finally {
    client.close();
    await server.shutdown();
  }
}

const multipartReply = (body: Uint8Array, boundary = BOUNDARY) => () =>
  new Response(body.slice(), {
    status: 206,
    headers: { "content-type": `multipart/byteranges; boundary=${boundary}` },
  });

const RANGES = [
  { offset: 0, length: 4096 },
  { offset: 100_000, length: 333 },
  { offset: BLOB_BYTES - 100, length: 100 },
];
const part = (i: number): Part => ({
  first: RANGES[i].offset,
  last: RANGES[i].offset + RANGES[i].length - 1,
});
const expect = (got: (Uint8Array | undefined)[] | undefined, present: boolean[], what: string) => {
  assert(got, `${what}: an answer per range`);
  assert.equal(got.length, RANGES.length, what);
  RANGES.forEach((r, i) => {
    if (present[i]) {
      assert.deepEqual(got[i], blob.subarray(r.offset, r.offset + r.length), `${what}: range ${i}`);
    } else assert.equal(got[i], undefined, `${what}: range ${i} left out`);
  });
};

Deno.test("multi-range reply: a well-formed one gives every range, in any part order", async () => {
  await withServer(async (client, answer) => {
    answer(multipartReply(multipart([part(0), part(1), part(2)])));
    expect(await readBlobRanges(client, "r", DIGEST, RANGES, BLOB_BYTES), [true, true, true], "ok");
    answer(multipartReply(multipart([part(2), part(0), part(1)])));
    expect(
      await readBlobRanges(client, "r", DIGEST, RANGES, BLOB_BYTES),
      [true, true, true],
      "reordered",
    );
    // A quoted boundary, and one without the closing delimiter (the lengths say where parts end).
    answer(multipartReply(multipart([part(0), part(1), part(2)], false), `"${BOUNDARY}"`));
    expect(
      await readBlobRanges(client, "r", DIGEST, RANGES, BLOB_BYTES),
      [true, true, true],
      "quoted, unclosed",
    );
  });
});

Deno.test("multi-range reply: hostile parts are left out, never misplaced", async () => {
  await withServer(async (client, answer) => {
    const cases: [string, Uint8Array, boolean[]][] = [
      // A range nobody asked for (shifted by one), in place of range 1.
      ["not asked for", multipart([part(0), { first: 100_001, last: 100_333 }, part(2)]), [
        true,
        false,
        true,
      ]],
      // Range 1's header claims its length, its data is shorter: the parser reads the claimed
      // length, so what follows is misframed and dropped, never taken for range 1 or 2.
      [
        "short data",
        multipart([part(0), { ...part(1), bytes: blob.subarray(100_000, 100_200) }, part(2)]),
        [true, false, false],
      ],
      // Longer data than claimed: what follows the claimed length is not a delimiter.
      [
        "long data",
        multipart([part(0), { ...part(1), bytes: blob.subarray(100_000, 100_400) }, part(2)]),
        [true, false, false],
      ],
      // Another blob size in Content-Range.
      ["other size", multipart([part(0), { ...part(1), total: BLOB_BYTES + 1 }, part(2)]), [
        true,
        false,
        true,
      ]],
      // A part that runs past the end of the body.
      [
        "truncated",
        multipart([part(0), part(1), part(2)]).subarray(0, 4096 + 500),
        [true, false, false],
      ],
      // Headers that never end (no blank line within the allowance).
      [
        "endless headers",
        multipart([part(0), { ...part(1), headers: "X-Junk: " + "a".repeat(2000) }, part(2)]),
        [true, false, false],
      ],
      // No Content-Range at all.
      ["no content-range", multipart([{ ...part(0), headers: "Content-Type: x\r\n\r\n" }]), [
        false,
        false,
        false,
      ]],
      // Garbage instead of a multipart body.
      ["garbage", crypto.getRandomValues(new Uint8Array(5000)), [false, false, false]],
    ];
    for (const [what, body, present] of cases) {
      answer(multipartReply(body));
      expect(await readBlobRanges(client, "r", DIGEST, RANGES, BLOB_BYTES), present, what);
    }
  });
});

Deno.test("multi-range reply: over the bound, a whole blob, or a single other range give nothing", async () => {
  await withServer(async (client, answer) => {
    // More body than the ranges plus their part allowance: not read on (bounded memory).
    const huge = new Uint8Array(RANGES.reduce((n, r) => n + r.length, 0) + 512 * 3 + 1025);
    answer(multipartReply(huge));
    assert.equal(await readBlobRanges(client, "r", DIGEST, RANGES, BLOB_BYTES), undefined);
    // A registry that ignores Range (200, the whole blob): the caller reads range by range.
    answer(() => new Response(blob, { status: 200 }));
    assert.equal(await readBlobRanges(client, "r", DIGEST, RANGES, BLOB_BYTES), undefined);
    // A plain 206 whose Content-Range is not one asked for.
    answer(() =>
      new Response(blob.slice(5, 4101), {
        status: 206,
        headers: { "content-range": `bytes 5-4100/${BLOB_BYTES}` },
      })
    );
    expect(
      await readBlobRanges(client, "r", DIGEST, RANGES, BLOB_BYTES),
      [false, false, false],
      "other single range",
    );
    // A plain 206 of one asked-for range (a server that merged or served just one).
    answer(() =>
      new Response(blob.slice(0, 4096), {
        status: 206,
        headers: { "content-range": `bytes 0-4095/${BLOB_BYTES}` },
      })
    );
    expect(
      await readBlobRanges(client, "r", DIGEST, RANGES, BLOB_BYTES),
      [true, false, false],
      "one asked-for range",
    );
  });
});
