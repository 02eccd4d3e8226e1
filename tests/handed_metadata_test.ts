/**
 * The mount server's stdin (lib/daemon/handed_metadata.ts): the spec line is usable before the
 * metadata that follows it arrives, the metadata comes back per layer byte for byte however the
 * pipe splits it, and a stream without it (reattach, an old caller) or cut short gives none.
 */
import assert from "node:assert/strict";
import { encodeHandedMetadata, readSpecAndMetadata } from "../lib/daemon/handed_metadata.ts";

/** A stream fed by hand, so the test decides when each piece arrives. */
function feed() {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const stream = new ReadableStream<Uint8Array>({ start: (c) => void (controller = c) });
  return {
    stream,
    push: (bytes: Uint8Array) => controller.enqueue(bytes),
    close: () => controller.close(),
  };
}

const text = (s: string) => new TextEncoder().encode(s);

function randomBytes(length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let at = 0; at < length; at += 65536) crypto.getRandomValues(out.subarray(at, at + 65536));
  return out;
}

Deno.test("handed metadata: the spec line first, the metadata later, split anyhow", async () => {
  const spec = JSON.stringify({ id: "x", layers: [1, 2, 3], note: "line\nbreak" });
  const layer0 = randomBytes(300_000), layer2 = randomBytes(5);
  const input = feed();
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
});

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
