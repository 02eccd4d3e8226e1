/**
 * The JSON documents a registry hands over besides manifests (manifest_test.ts has those):
 * chunk-digest tables with their metadata range list, tar-index records, referrer indexes and
 * access traces. Each is a real document with fields replaced, removed or duplicated (wrong
 * types, huge, negative and fractional numbers, deep nesting, bad digests): the parser either
 * returns a result within the bounds it promises or throws its one-line error type.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { FormatError, OciError, UserError } from "../lib/errors.ts";
import { ChunkTableBuilder, MAX_TABLE_BYTES, parseChunkTable } from "../lib/verify/chunk_table.ts";
import { MAX_METADATA_BYTES, MAX_METADATA_RANGES } from "../lib/verify/metadata_ranges.ts";
import { parseIndexRecord } from "../lib/gzip/index_record.ts";
import { parseReferrerIndex } from "../lib/oci/referrers.ts";
import { MAX_TRACE_RANGES, parseTrace } from "../lib/trace/format.ts";

type Json = unknown;
type Path = (string | number)[];

const digest = (n: number) => `sha256:${n.toString(16).padStart(64, "0")}`;

function deep(levels: number): Json {
  let value: Json = 1;
  for (let i = 0; i < levels; i++) value = i % 2 ? [value] : { a: value };
  return value;
}

const hostileValue: fc.Arbitrary<Json> = fc.oneof(
  fc.constantFrom<Json>(
    0,
    -1,
    0.5,
    2 ** 31,
    2 ** 32,
    2 ** 40,
    2 ** 53,
    2 ** 53 + 2,
    -(2 ** 53),
    1e308,
    "",
    "x",
    digest(0),
    `${digest(0)}0`,
    "sha512:00",
    null,
    true,
    [],
    {},
    [1, 2],
    { __proto__: null, digest: digest(1) },
  ),
  fc.constant(null).map(() => deep(5000)),
  fc.constant(null).map(() => "f".repeat(70_000)),
  fc.integer(),
  fc.double(),
);

interface Edit {
  at: number;
  op: "replace" | "remove" | "grow";
  value: Json;
}

const edit: fc.Arbitrary<Edit> = fc.record({
  at: fc.nat(),
  op: fc.constantFrom("replace" as const, "remove" as const, "grow" as const),
  value: hostileValue,
});

/** Every path of `value` (its root included), depth-first, bounded. */
function pathsOf(value: Json, path: Path = [], out: Path[] = []): Path[] {
  out.push(path);
  if (out.length > 4000 || path.length > 6) return out;
  if (Array.isArray(value)) {
    value.slice(0, 40).forEach((item, i) => pathsOf(item, [...path, i], out));
  } else if (value !== null && typeof value === "object") {
    for (const key of Object.keys(value)) {
      pathsOf((value as Record<string, Json>)[key], [...path, key], out);
    }
  }
  return out;
}

function applyEdits(document: Json, edits: Edit[]): Json {
  let root = structuredClone(document);
  for (const { at, op, value } of edits) {
    const paths = pathsOf(root);
    const path = paths[at % paths.length];
    if (path.length === 0) {
      if (op === "replace") root = value;
      continue;
    }
    const parent = path.slice(0, -1).reduce(
      (node: Json, key) => (node as Record<string | number, Json>)[key],
      root,
    ) as Record<string | number, Json>;
    const key = path[path.length - 1];
    const current = parent[key];
    if (op === "replace") parent[key] = value;
    else if (op === "remove") {
      if (Array.isArray(parent)) parent.splice(key as number, 1);
      else delete parent[key];
    } else if (Array.isArray(current) && current.length) {
      for (let i = 0; i < 3; i++) current.push(current[i % current.length]);
    } else if (typeof current === "string") parent[key] = current + current;
    else if (typeof current === "number") parent[key] = current * 4096 + 1;
    else parent[key] = value;
  }
  return root;
}

function checkProperty(
  name: string,
  document: Json,
  parse: (bytes: Uint8Array) => void,
  allowed: (error: unknown) => boolean,
): void {
  fc.assert(
    fc.property(fc.array(edit, { minLength: 1, maxLength: 4 }), (edits) => {
      const bytes = new TextEncoder().encode(JSON.stringify(applyEdits(document, edits)) ?? "");
      try {
        parse(bytes);
      } catch (error) {
        assert.ok(allowed(error), `${name}: ${(error as Error)?.stack ?? error}`);
        assert.ok(!(error as Error).message.includes("\n"), (error as Error).message);
      }
    }),
    { seed: 2026_12_02, numRuns: 300 },
  );
}

Deno.test("property: edited chunk tables (with a metadata list) parse within bounds or fail as FormatError", () => {
  const layer = Deno.readFileSync(new URL("../lib/verify/chunk_table.ts", import.meta.url));
  const bytes = new Uint8Array(300_000);
  for (let i = 0; i < bytes.length; i++) bytes[i] = layer[i % layer.length];
  const builder = new ChunkTableBuilder(64 * 1024);
  builder.update(bytes);
  const table = JSON.parse(new TextDecoder().decode(builder.finish().encode()));
  table.metadata = {
    ranges: [0, 4096, 8192, 4096, 65536, 100],
    digests: "ab".repeat(32 * 3),
    pack: digest(9),
  };
  parseChunkTable(new TextEncoder().encode(JSON.stringify(table))); // the unedited one parses
  checkProperty("chunk table", table, (b) => {
    const parsed = parseChunkTable(b);
    assert.ok(b.length <= MAX_TABLE_BYTES);
    assert.equal(parsed.chunkCount, Math.ceil(parsed.sizeBytes / parsed.chunkBytes));
    const m = parsed.metadata;
    if (!m) return;
    assert.ok(m.offsets.length <= MAX_METADATA_RANGES);
    assert.equal(m.digests.length, 32 * m.offsets.length);
    let total = 0, end = 0;
    m.offsets.forEach((offset, i) => {
      assert.ok(offset >= end && offset + m.lengths[i] <= parsed.sizeBytes);
      end = offset + m.lengths[i];
      total += m.lengths[i];
    });
    assert.ok(total <= MAX_METADATA_BYTES);
  }, (error) => error instanceof FormatError);
});

Deno.test("property: edited tar-index records parse with safe sizes or fail as FormatError", () => {
  const record = {
    layer: { digest: digest(1), size: 1129602 },
    diffId: digest(2),
    tarBytes: 1710080,
    meta: { file: "layer.meta.erofs", digest: digest(3) },
    zinfo: { file: "layer.zinfo", digest: digest(4), spanBytes: 4 << 20, checkpoints: 1 },
    pieces: { file: "layer.pieces", digest: digest(5), pieceBytes: 1 << 20 },
  };
  checkProperty("index record", record, (b) => {
    const parsed = parseIndexRecord(b);
    for (const n of [parsed.layer.size, parsed.tarBytes, parsed.zinfo?.spanBytes ?? 0]) {
      assert.ok(Number.isSafeInteger(n) && n >= 0);
    }
    for (const file of [parsed.meta.file, parsed.zinfo?.file, parsed.pieces?.file]) {
      assert.ok(file === undefined || (!file.includes("/") && !file.startsWith(".")));
    }
  }, (error) => error instanceof FormatError);
});

Deno.test("property: edited referrer indexes keep well-formed descriptors only, or fail as OciError", () => {
  const index = {
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.index.v1+json",
    manifests: [1, 2, 3].map((n) => ({
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      digest: digest(n),
      size: 500 + n,
      artifactType: "application/vnd.io.github.erofs-oci.chunk-digests.v1",
      annotations: { "org.opencontainers.image.created": "2026-01-01T00:00:00Z" },
    })),
  };
  checkProperty("referrers", index, (b) => {
    for (const d of parseReferrerIndex(b, "referrers list")) {
      assert.ok(/^sha(256|512):[0-9a-f]+$/.test(d.digest));
      assert.ok(Number.isSafeInteger(d.size) && d.size >= 0);
      assert.equal(typeof d.mediaType, "string");
    }
  }, (error) => error instanceof OciError);
});

Deno.test("property: edited traces keep every range inside its layer, or fail as FormatError", () => {
  const trace = {
    version: 1,
    layers: [{ digest: digest(1), size: 1 << 20 }, { digest: digest(2), size: 65536 }],
    ranges: [[0, 0, 4096], [1, 0, 100], [0, 8192, 4096], [1, 4096, 4096]],
  };
  checkProperty("trace", trace, (b) => {
    const parsed = parseTrace(b);
    assert.ok(parsed.ranges.length <= MAX_TRACE_RANGES);
    for (const [layer, offset, length] of parsed.ranges) {
      assert.ok(length > 0 && offset + length <= parsed.layers[layer].size);
    }
  }, (error) => error instanceof UserError);
});
