/**
 * The mount server's stdin (lib/daemon/handed_metadata.ts): the spec line is usable before the
 * metadata that follows it arrives, the metadata comes back per layer byte for byte however the
 * pipe splits it, and a stream without it (reattach, an old caller) or cut short gives none.
 */
import assert from "node:assert/strict";
import {
  encodeHandedMetadata,
  fetchMetadataEarly,
  readSpecAndMetadata,
} from "../lib/daemon/handed_metadata.ts";
import { RegistryClient } from "../lib/oci/client.ts";
import type { LayerDescriptor } from "../lib/oci/layers.ts";
import { EROFS_LAYER } from "../lib/oci/media_types.ts";
import { chunkTableOfFile, encodeTable } from "../lib/verify/chunk_table.ts";
import { metadataBytes } from "../lib/verify/metadata_ranges.ts";
import { command, FIXTURES, requires } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";

/**
 * A stream fed by hand, so the test decides when each piece arrives: a byte stream (read into
 * large buffers, as the server's stdin is) or a plain one.
 */
function feed(kind: "bytes" | "plain" = "plain") {
  let controller!: ReadableStreamDefaultController<Uint8Array> | ReadableByteStreamController;
  const stream = kind === "bytes"
    ? new ReadableStream({ type: "bytes", start: (c) => void (controller = c) })
    : new ReadableStream<Uint8Array>({ start: (c) => void (controller = c) });
  return {
    stream,
    push: (bytes: Uint8Array) => controller.enqueue(bytes),
    close: () => controller.close(),
  };
}

/**
 * A unix socket fed by hand, read through its own read() as the server reads its stdin
 * (ByteReader): the kernel decides how much each read gets.
 */
async function feedSocket() {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-handed-" });
  const listener = Deno.listen({ transport: "unix", path: `${dir}/s` });
  const client = await Deno.connect({ transport: "unix", path: `${dir}/s` });
  const server = await listener.accept();
  listener.close();
  let sent = Promise.resolve();
  const writeAll = async (bytes: Uint8Array) => {
    for (let at = 0; at < bytes.length;) at += await client.write(bytes.subarray(at));
  };
  return {
    stream: server as { read(into: Uint8Array): Promise<number | null> },
    push: (bytes: Uint8Array) => void (sent = sent.then(() => writeAll(bytes))),
    close: () => void (sent = sent.then(() => client.closeWrite())),
    async cleanup() {
      await sent;
      client.close();
      server.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

const text = (s: string) => new TextEncoder().encode(s);

function randomBytes(length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let at = 0; at < length; at += 65536) crypto.getRandomValues(out.subarray(at, at + 65536));
  return out;
}

for (const kind of ["plain", "bytes", "socket"] as const) {
  Deno.test(`handed metadata: the spec line first, the metadata later, split anyhow (${kind} input)`, async () => {
    const spec = JSON.stringify({ id: "x", layers: [1, 2, 3], note: "line\nbreak" });
    const layer0 = randomBytes(300_000), layer2 = randomBytes(5);
    const input = kind === "socket" ? await feedSocket() : { ...feed(kind), cleanup() {} };
    // The spec arrives in two pieces; nothing else yet.
    input.push(text(spec.slice(0, 10)));
    const reading = readSpecAndMetadata(input.stream);
    input.push(text(spec.slice(10) + "\n"));
    const { specText, metadata } = await reading;
    assert.equal(specText, spec);
    let settled = false;
    metadata.then(() => settled = true);
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(settled, false, "metadata settled before it was sent");
    // Header and bytes in odd-sized pieces.
    const all = encodeHandedMetadata([layer0, undefined, layer2]);
    const joined = new Uint8Array(all.reduce((n, part) => n + part.length, 0));
    let at = 0;
    for (const part of all) joined.set(part, (at += part.length) - part.length);
    for (let from = 0; from < joined.length; from += 7919) {
      input.push(joined.slice(from, from + 7919));
    }
    input.close();
    const got = await metadata;
    assert.equal(got.length, 3);
    assert.deepEqual(got[0], layer0);
    assert.equal(got[1], undefined);
    assert.deepEqual(got[2], layer2);
    await input.cleanup();
  });
}

Deno.test("handed metadata: none when stdin ends after the spec, or is cut short", async () => {
  const plain = feed();
  plain.push(text('{"id":"y"}\n'));
  plain.close();
  const { specText, metadata } = await readSpecAndMetadata(plain.stream);
  assert.equal(specText, '{"id":"y"}');
  assert.deepEqual(await metadata, []);

  // An older caller: the spec without a newline, then EOF.
  const bare = feed();
  bare.push(text('{"id":"z"}'));
  bare.close();
  assert.equal((await readSpecAndMetadata(bare.stream)).specText, '{"id":"z"}');

  const cut = feed();
  const [header, bytes] = encodeHandedMetadata([randomBytes(1000)]);
  cut.push(text('{"id":"w"}\n'));
  cut.push(header);
  cut.push(bytes.subarray(0, 999));
  cut.close();
  const short = await readSpecAndMetadata(cut.stream);
  assert.deepEqual(await short.metadata, [undefined]);
});

Deno.test({
  name:
    "handed metadata: one mount hands over at most its budget of listed bytes, all layers together",
  ignore: requires(command("docker-registry")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const files = [`${FIXTURES}/layer1.erofs`, `${FIXTURES}/layer2.erofs`];
    assertSuccess(
      await runCli(["push", `${registry.host}/hm/two:v1`, ...files, "--plain-http"], {
        timeoutMs: 60_000,
      }),
    );
    const tables = await Promise.all(
      files.map(async (f) => encodeTable(await chunkTableOfFile(f))),
    );
    const lists = tables.map((t) => t.table.metadata!);
    assert(lists.every(Boolean), "both layers have a list");
    const layers: LayerDescriptor[] = tables.map((t, index) => ({
      index,
      digest: t.table.layerDigest,
      sizeBytes: t.table.sizeBytes,
      mediaType: EROFS_LAYER,
    }));
    const early = new Map(tables.map((t) => [t.table.layerDigest, {
      digest: t.digest,
      fetched: Promise.resolve({ table: t.table, bytes: t.bytes, path: "" }),
    }]));
    const packGets = () =>
      registry.accessLogOnce((line) =>
        line.includes('"GET ') && lists.some((l) => line.includes(l.pack!))
      );
    const client = new RegistryClient(registry.host, { plainHttp: true });
    try {
      // A budget for the first layer's list only: the second gets none (its server fetches it).
      const first = metadataBytes(lists[0]);
      // Wanted whatever this host's own disk cache holds of these fixtures.
      const wanted = () => true;
      const handed = fetchMetadataEarly(client, "hm/two", early, layers, {
        maxBytes: first,
        wanted,
      });
      const bytes = await Promise.all(layers.map((l) => handed.get(l.digest)!.bytes));
      assert.equal(bytes[0]?.length, 32 + first, "the first layer's sidecar bytes");
      assert.equal(bytes[1], undefined, "nothing for the layer past the budget");
      const gets = await packGets();
      assert.equal(gets.length, 1, `one pack fetched: ${gets.join("\n")}`);
      // With room for both, both.
      const both = fetchMetadataEarly(client, "hm/two", early, layers, { wanted });
      const all = await Promise.all(layers.map((l) => both.get(l.digest)!.bytes));
      assert.deepEqual(all.map((b) => b?.length), lists.map((l) => 32 + metadataBytes(l)));
    } finally {
      await client.close();
    }
  },
});
