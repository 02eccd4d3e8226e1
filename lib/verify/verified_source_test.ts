/**
 * Chunk-digest tables and VerifiedSource without a registry: the table round-trips and refuses
 * hostile shapes; a flipped byte is refetched once, then the read fails; reads agree with the
 * bytes for any offsets (property).
 */
import { loadNodeCrypto } from "../node_builtins.ts";
import assert from "node:assert/strict";
import fc from "fast-check";
import { ChunkTableBuilder, encodeTable, parseChunkTable } from "./chunk_table.ts";
import { ChunkMismatchError, VerifiedSource } from "./verified_source.ts";
import { digestOf } from "../oci/digest.ts";
import type { Source } from "../source/source.ts";
import { patternBytes } from "../../tests/_support/memory_source.ts";
import type { LayerSpec } from "../state/mount_spec.ts";
import { recordForLayer, unverifiedLayer } from "../recovery/layer_record.ts";
import { type BlobRangeReader, refetchFromRegistry, RegistryBlob } from "../oci/registry_blob.ts";
import { MAX_BLOB_REQUESTS } from "../oci/request_slots.ts";
import { intoOf, type RetryHolder, retryHolderOf } from "../oci/blob_range.ts";

const CHUNK = 64 * 1024;

function tableOf(bytes: Uint8Array) {
  const builder = new ChunkTableBuilder(CHUNK);
  builder.update(bytes.subarray(0, 1000));
  builder.update(bytes.subarray(1000));
  return builder.finish(digestOf(bytes));
}

/** Serves `bytes`, flipping a byte at `flipAt` in the first `flips` replies that cover it. */
function flippingSource(bytes: Uint8Array, flipAt: number, flips: number) {
  const reads: [number, number][] = [];
  const source: Source = {
    size: bytes.length,
    read(offset, length) {
      reads.push([offset, length]);
      const out = bytes.slice(offset, offset + length);
      if (flips > 0 && flipAt >= offset && flipAt < offset + length) {
        flips--;
        out[flipAt - offset] ^= 0x01;
      }
      return Promise.resolve(out);
    },
  };
  return { source, reads };
}

Deno.test("chunk table: round-trips, and a table of another layer or a bad shape is refused", () => {
  const bytes = patternBytes(5 * CHUNK + 123);
  const table = tableOf(bytes);
  assert.equal(table.chunkCount, 6);
  const encoded = encodeTable(table);
  const back = parseChunkTable(encoded.bytes, { digest: digestOf(bytes), sizeBytes: bytes.length });
  assert.deepEqual(back.digests, table.digests);
  assert.throws(
    () => parseChunkTable(encoded.bytes, { digest: digestOf(bytes), sizeBytes: bytes.length + 1 }),
    /not of/,
  );
  const value = JSON.parse(new TextDecoder().decode(encoded.bytes));
  const bad = (patch: Record<string, unknown>) =>
    new TextEncoder().encode(JSON.stringify({ ...value, ...patch }));
  assert.throws(() => parseChunkTable(bad({ chunks: value.chunks.slice(64) })), /digests/);
  assert.throws(() => parseChunkTable(bad({ chunkBytes: 1000 })), /chunk size/);
  assert.throws(() => parseChunkTable(bad({ algorithm: "md5" })), /schema/);
  assert.throws(() => new ChunkTableBuilder(CHUNK).finish(digestOf(bytes)), /hash to/);
});

Deno.test("VerifiedSource: a flipped byte is fetched again once; twice flipped → the read fails (Web Crypto and on the event loop)", async () => {
  for (const hashOnEventLoop of [false, true]) {
    const bytes = patternBytes(4 * CHUNK + 77);
    const table = tableOf(bytes);
    // Which way each chunk was hashed: on the JS thread (matches, once node:crypto is loaded:
    // the mount server loads it when idle) or through Web Crypto.
    if (hashOnEventLoop) loadNodeCrypto();
    const hashed = { sync: 0, async: 0 };
    const [matches, matchesAsync] = [table.matches.bind(table), table.matchesAsync.bind(table)];
    table.matches = (i, b) => (hashed.sync++, matches(i, b));
    table.matchesAsync = (i, b) => (hashed.async++, matchesAsync(i, b));
    const messages: string[] = [];
    const once = flippingSource(bytes, 2 * CHUNK + 5, 1);
    const verified = new VerifiedSource(once.source, table, {
      origin: "test",
      onMismatch: (m) => messages.push(m),
      hashOnEventLoop,
    });
    assert.deepEqual(await verified.read(2 * CHUNK, 10), bytes.subarray(2 * CHUNK, 2 * CHUNK + 10));
    assert.equal(verified.mismatches, 1);
    assert.equal(messages.length, 1);
    assert.match(messages[0], /offset 131072 \(chunk 2\) from test/);
    assert.deepEqual(hashed, hashOnEventLoop ? { sync: 2, async: 0 } : { sync: 0, async: 2 });

    const twice = flippingSource(bytes, 3 * CHUNK + 9, 2);
    const failing = new VerifiedSource(twice.source, table, {
      origin: "t",
      onMismatch: () => {},
      hashOnEventLoop,
    });
    await assert.rejects(failing.read(3 * CHUNK + 100, 10), ChunkMismatchError);
    // Other chunks still read, and the bad chunk is not remembered as good.
    assert.deepEqual(await failing.read(0, 100), bytes.subarray(0, 100));
    assert.deepEqual(await failing.read(3 * CHUNK, 20), bytes.subarray(3 * CHUNK, 3 * CHUNK + 20));
  }
});

Deno.test("VerifiedSource: any read equals the bytes; neighbouring reads share one fetch", async () => {
  const bytes = patternBytes(7 * CHUNK + 4095, 7);
  const table = tableOf(bytes);
  await fc.assert(
    fc.asyncProperty(
      fc.nat(bytes.length - 1).chain((offset) =>
        fc.tuple(fc.constant(offset), fc.integer({ min: 1, max: bytes.length - offset }))
      ),
      async ([offset, length]) => {
        const { source } = flippingSource(bytes, -1, 0);
        const verified = new VerifiedSource(source, table, { origin: "p" });
        assert.deepEqual(
          await verified.read(offset, length),
          bytes.subarray(offset, offset + length),
        );
      },
    ),
    { numRuns: 200 },
  );
  const { source, reads } = flippingSource(bytes, -1, 0);
  const verified = new VerifiedSource(source, table, { origin: "p" });
  await Promise.all([
    verified.read(10, 100),
    verified.read(4096, 4096),
    verified.read(CHUNK - 1, 2),
  ]);
  assert.deepEqual(reads, [[0, CHUNK], [CHUNK, CHUNK]]);
});

Deno.test("reattach keeps verifying: a layer's chunk table goes into the recovery companion and back", () => {
  const chunkTable = { digest: `sha256:${"a".repeat(64)}`, path: "/var/lib/x/t.json", bound: true };
  const layer: LayerSpec = {
    kind: "registry",
    registry: "127.0.0.1:5000",
    repository: "app",
    reference: `127.0.0.1:5000/app@sha256:${"b".repeat(64)}`,
    platform: "linux/amd64",
    layerIndex: 0,
    digest: `sha256:${"c".repeat(64)}`,
    mediaType: "application/vnd.erofs",
    sizeBytes: 8192,
    plainHttp: true,
    chunkTable,
  };
  const { record, extra } = recordForLayer(layer, undefined, "m1", 0);
  const back = unverifiedLayer(record, JSON.parse(JSON.stringify(extra)), 8192);
  assert.deepEqual((back?.layer as { chunkTable?: unknown }).chunkTable, chunkTable);
  const tampered = { ...extra, chunkTable: { ...chunkTable, digest: "nope" } };
  assert.equal(
    (unverifiedLayer(record, tampered, 8192)?.layer as { chunkTable?: unknown }).chunkTable,
    undefined,
  );
});

Deno.test("VerifiedSource: a reader sharing a chunk fetch another reader aborted still gets it", async () => {
  const bytes = patternBytes(2 * CHUNK, 3);
  const table = tableOf(bytes);
  let reads = 0;
  const slow: Source = {
    size: bytes.length,
    read(offset, length, signal) {
      reads++;
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => resolve(bytes.slice(offset, offset + length)), 20);
        signal?.addEventListener("abort", () => {
          clearTimeout(timer);
          reject(signal.reason);
        });
      });
    },
  };
  const verified = new VerifiedSource(slow, table, { origin: "t" });
  const aborter = new AbortController();
  const first = verified.read(0, 10, aborter.signal);
  const second = verified.read(100, 10);
  aborter.abort();
  await assert.rejects(first);
  assert.deepEqual(await second, bytes.subarray(100, 110));
  assert.equal(reads, 2);
});

Deno.test("chunk table: matchesAsync (Web Crypto) agrees with matches on good, flipped, short and stray chunks", async () => {
  const bytes = patternBytes(3 * CHUNK + 501);
  const table = tableOf(bytes);
  const chunkOf = (i: number) => bytes.slice(i * CHUNK, Math.min(bytes.length, (i + 1) * CHUNK));
  const cases: [number, Uint8Array][] = [];
  for (let i = 0; i < table.chunkCount; i++) {
    const flipped = chunkOf(i);
    flipped[flipped.length - 1] ^= 0x80;
    cases.push([i, chunkOf(i)], [i, flipped], [i, chunkOf(i).subarray(1)]);
  }
  cases.push([-1, chunkOf(0)], [table.chunkCount, chunkOf(0)], [1, chunkOf(0)]);
  for (const [index, piece] of cases) {
    assert.equal(
      await table.matchesAsync(index, piece),
      table.matches(index, piece),
      `chunk ${index}`,
    );
  }
  assert.equal(await table.matchesAsync(3, chunkOf(3)), true);
});

Deno.test("VerifiedSource.readTo: streamed chunks are checked; a flipped byte is fetched again, twice fails (both ways of hashing)", async () => {
  const bytes = patternBytes(4 * CHUNK + 77);
  const table = tableOf(bytes);
  /** An inner source that streams (readTo) in odd-sized pieces, flipping one byte `flips` times. */
  const streaming = (flipAt: number, flips: number) => {
    const { source } = flippingSource(bytes, flipAt, flips);
    return Object.assign(source, {
      async readTo(offset: number, length: number, sink: (b: Uint8Array, at: number) => unknown) {
        const run = await source.read(offset, length);
        for (let at = 0; at < run.length; at += 10_000) {
          await sink(run.subarray(at, Math.min(run.length, at + 10_000)), at);
        }
      },
    });
  };
  const collect = async (verified: VerifiedSource, offset: number, length: number) => {
    const out = new Uint8Array(length);
    await verified.readTo(offset, length, (piece, at) => out.set(piece, at));
    return out;
  };
  for (const hashOnEventLoop of [false, true]) {
    const once = new VerifiedSource(streaming(2 * CHUNK + 5, 1), table, {
      origin: "test",
      onMismatch: () => {},
      hashOnEventLoop,
    });
    assert.deepEqual(
      await collect(once, CHUNK + 3, 3 * CHUNK),
      bytes.subarray(CHUNK + 3, 4 * CHUNK + 3),
    );
    assert.equal(once.mismatches, 1);
    assert.equal(once.verifiedChunks, 4);
    const twice = new VerifiedSource(streaming(3 * CHUNK + 9, 2), table, {
      origin: "t",
      onMismatch: () => {},
      hashOnEventLoop,
    });
    await assert.rejects(collect(twice, 0, 4 * CHUNK + 77), ChunkMismatchError);
  }
});

Deno.test("VerifiedSource: reads failing together leave no rejection unhandled", async () => {
  await loadNodeCrypto();
  const bytes = patternBytes(4 * CHUNK);
  const table = tableOf(bytes);
  // Every reply is wrong (a hostile registry), each a little later than the one before.
  let replies = 0;
  const source: Source = {
    size: bytes.length,
    async read(offset, length) {
      await new Promise((resolve) => setTimeout(resolve, 5 * ++replies));
      const out = bytes.slice(offset, offset + length);
      out[0] ^= 0xff;
      return out;
    },
  };
  const verified = new VerifiedSource(source, table, { origin: "p" });
  const unhandled: unknown[] = [];
  const onUnhandled = (event: PromiseRejectionEvent) => {
    unhandled.push(event.reason);
    event.preventDefault();
  };
  globalThis.addEventListener("unhandledrejection", onUnhandled);
  try {
    // Chunk 1 is being fetched by the first read when the second asks for chunks 0 and 1:
    // the second fails on chunk 0 first and never awaits its wait on chunk 1.
    const first = verified.read(CHUNK, 100);
    const second = verified.read(0, 2 * CHUNK);
    await assert.rejects(first, ChunkMismatchError);
    await assert.rejects(second, ChunkMismatchError);
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.deepEqual(unhandled, []);
  } finally {
    globalThis.removeEventListener("unhandledrejection", onUnhandled);
  }
});

Deno.test("readTo restarted after a broken body took its buffer: same retry policy (deadline) goes on", async () => {
  const bytes = patternBytes(3 * CHUNK + 100, 5);
  const holders: (RetryHolder | undefined)[] = [];
  let policiesMade = 0;
  const reader: BlobRangeReader = {
    readBlobRange: (_r, _d, offset, length) =>
      Promise.resolve(bytes.slice(offset, offset + length)),
    async readBlobRangeTo(_r, _d, offset, length, sink) {
      const holder = retryHolderOf(sink);
      holders.push(holder);
      // What readBlobRangeTo does: the holder's policy, else a fresh one kept in it.
      if (holder && !holder.policy) {
        policiesMade++;
        holder.policy = { deadlineAtMs: Date.now() + 60_000, maxAttempts: 8 };
      }
      const into = intoOf(sink);
      if (holders.length === 1) {
        // A body that broke off after filling part of into()'s view: the read took its buffer.
        const view = into!();
        view.set(bytes.subarray(offset, offset + 10));
        (view.buffer as ArrayBuffer).transfer();
        into!(); // throws: the caller starts again
      }
      await sink(bytes.slice(offset, offset + length), 0);
    },
  };
  const blob = new RegistryBlob(reader, "r", {
    index: 0,
    digest: digestOf(bytes),
    sizeBytes: bytes.length,
    mediaType: "application/octet-stream",
  });
  const verified = new VerifiedSource(blob, tableOf(bytes), {
    origin: "test",
    onMismatch: () => {},
  });
  const got = new Uint8Array(bytes.length);
  await verified.readTo(0, bytes.length, (piece, at) => void got.set(piece, at));
  assert.deepEqual(got, bytes);
  assert.equal(holders.length, 2, "one restart");
  assert.ok(holders[0] && holders[0] === holders[1], "the restart carries the first read's holder");
  assert.equal(policiesMade, 1, "one policy for both");
});

Deno.test("VerifiedSource over a RegistryBlob: as many fills as request slots, each refetching a bad chunk, all finish", async () => {
  // Each fill streams its GET into the verifier while holding one of the process's request
  // slots; the refetch of a chunk that failed its digest asked for another slot, so with every
  // slot held by such a fill none ever finished (and every other GET waited behind them).
  const fills = MAX_BLOB_REQUESTS + 2;
  const bytes = patternBytes(fills * CHUNK);
  const table = tableOf(bytes);
  for (const withRefetchHook of [false, true]) {
    let refetches = 0;
    const client: BlobRangeReader = {
      readBlobRange(_repository, _digest, offset, length) {
        refetches++;
        return Promise.resolve(bytes.slice(offset, offset + length));
      },
      async readBlobRangeTo(_repository, _digest, offset, length, sink) {
        await new Promise((resolve) => setTimeout(resolve, 5));
        const wrong = bytes.slice(offset, offset + length);
        wrong[0] ^= 1; // a mirror's flipped byte
        await sink(wrong, 0);
      },
    };
    const blob = new RegistryBlob(client, "r/app", {
      index: 0,
      digest: digestOf(bytes),
      sizeBytes: bytes.length,
      mediaType: "application/vnd.erofs",
    });
    const verified = new VerifiedSource(blob, table, {
      origin: "test",
      ...(withRefetchHook ? { refetch: refetchFromRegistry(blob) } : {}),
    });
    const got = new Uint8Array(bytes.length);
    const reads = Array.from(
      { length: fills },
      (_, i) =>
        verified.readTo(i * CHUNK, CHUNK, (piece, at) => {
          got.set(piece, i * CHUNK + at);
          return Promise.resolve();
        }),
    );
    let timer: ReturnType<typeof setTimeout> | undefined;
    const stuck = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`stuck: ${refetches} refetches`)), 10_000);
    });
    try {
      await Promise.race([Promise.all(reads), stuck]);
    } finally {
      clearTimeout(timer);
    }
    assert.equal(refetches, fills);
    assert.deepEqual(got, bytes);
  }
});
