import assert from "node:assert/strict";
import { blobRequestSlots, MAX_BLOB_REQUESTS, RequestSlots } from "./request_slots.ts";
import { type BlobRangeReader, RegistryBlob } from "./registry_blob.ts";

/** A promise with its resolve, for requests the test ends when it wants. */
function gate() {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => open = resolve);
  return { open, opened };
}

Deno.test("RequestSlots: at most N run at once, the rest in the order they came", async () => {
  const slots = new RequestSlots(2);
  const started: number[] = [];
  const gates = Array.from({ length: 5 }, gate);
  const runs = gates.map((g, i) =>
    slots.run(async () => {
      started.push(i);
      await g.opened;
      return i;
    })
  );
  await new Promise((resolve) => setTimeout(resolve, 10));
  assert.deepEqual(started, [0, 1]);
  assert.equal(slots.waiting, 3);
  gates[1].open();
  await runs[1];
  await new Promise((resolve) => setTimeout(resolve, 10));
  assert.deepEqual(started, [0, 1, 2]);
  for (const g of gates) g.open();
  assert.deepEqual(await Promise.all(runs), [0, 1, 2, 3, 4]);
  assert.equal(slots.waiting, 0);
});

Deno.test("RequestSlots: a waiter whose signal aborts leaves the queue, its slot not taken", async () => {
  const slots = new RequestSlots(1);
  const first = gate();
  const holding = slots.run(() => first.opened);
  const abort = new AbortController();
  let ranLate = false;
  const late = slots.run(() => {
    ranLate = true;
    return Promise.resolve();
  }, abort.signal);
  abort.abort(new Error("gave up"));
  await assert.rejects(late, /gave up/);
  assert.equal(slots.waiting, 0);
  first.open();
  await holding;
  assert.equal(await slots.run(() => Promise.resolve("free")), "free");
  assert.equal(ranLate, false);
  // A request that fails gives its slot back too.
  await assert.rejects(slots.run(() => Promise.reject(new Error("no"))), /no/);
  assert.equal(await slots.run(() => Promise.resolve("again")), "again");
});

Deno.test("RegistryBlob: reads beyond MAX_BLOB_REQUESTS wait for a slot (40 at once: 16 GETs)", async () => {
  let inFlight = 0, most = 0;
  const release = gate();
  const reader: BlobRangeReader = {
    async readBlobRange(_repository, _digest, _offset, length) {
      most = Math.max(most, ++inFlight);
      await release.opened;
      inFlight--;
      return new Uint8Array(length);
    },
  };
  const blob = new RegistryBlob(reader, "r", {
    index: 0,
    digest: `sha256:${"a".repeat(64)}`,
    sizeBytes: 1 << 20,
    mediaType: "application/vnd.erofs",
  });
  const reads = Array.from({ length: 40 }, (_, i) => blob.read(i * 4096, 4096));
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(most, MAX_BLOB_REQUESTS);
  assert.equal(blobRequestSlots.waiting, 40 - MAX_BLOB_REQUESTS);
  release.open();
  assert.equal((await Promise.all(reads)).length, 40);
  assert.equal(most, MAX_BLOB_REQUESTS);
});
