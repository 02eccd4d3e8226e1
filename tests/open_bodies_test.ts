/**
 * Reads of a blob from a host that ignores Range (every GET answered 200 with the whole blob),
 * through a real RegistryClient and the counting fault proxy: reads in order, one after the
 * other or sent together, go on in the body of one GET (lib/oci/open_bodies.ts) instead of
 * each downloading from byte 0, and a body nobody reads is not drained into memory meanwhile.
 */
import assert from "node:assert/strict";
import { RegistryClient } from "../lib/oci/client.ts";
import { startFaultProxy } from "./_support/fault_proxy.ts";
import { sleep } from "./_support/wait.ts";

const MiB = 1 << 20;
const SIZE = 32 * MiB;
const DIGEST = "sha256:" + "ab".repeat(32);

async function withRangelessHost(
  fn: (client: RegistryClient, sent: () => { bytes: number; gets: number }) => Promise<void>,
  blob: Uint8Array<ArrayBuffer>,
): Promise<void> {
  // A registry that ignores Range itself: every blob GET is the whole blob.
  const upstream = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    () => new Response(blob, { status: 200 }),
  );
  const proxy = await startFaultProxy(`127.0.0.1:${upstream.addr.port}`, []);
  const client = new RegistryClient(proxy.host, { plainHttp: true });
  try {
    await fn(client, () => {
      const gets = proxy.blobGets(DIGEST);
      return { bytes: gets.reduce((sum, r) => sum + r.bytesSent, 0), gets: gets.length };
    });
  } finally {
    client.close();
    await proxy.stop();
    await upstream.shutdown();
  }
}

function randomBlob(): Uint8Array<ArrayBuffer> {
  const blob = new Uint8Array(SIZE);
  for (let at = 0; at < SIZE; at += 65536) crypto.getRandomValues(blob.subarray(at, at + 65536));
  return blob;
}

Deno.test("open bodies: reads in order of a host that ignores Range take one GET", async () => {
  const blob = randomBlob();
  await withRangelessHost(async (client, sent) => {
    const window = 8 * MiB;
    const read = (at: number, length = window) =>
      client.readBlobRange("app", DIGEST, at, length, undefined, SIZE);
    assert.deepEqual(await read(0), blob.subarray(0, window));
    await sleep(300);
    // Kept, not read on: the host's send stops on full socket buffers, not at the blob's end.
    assert(sent().bytes < 3 * window, `${sent().bytes} sent while the body waited`);
    // One after the other, with a gap (skipped, not a new GET from byte 0).
    assert.deepEqual(
      await read(window + 100, MiB),
      blob.subarray(window + 100, window + 100 + MiB),
    );
    // Two sent together, the later one first: both go on in the same body.
    const [late, early] = await Promise.all([read(3 * window), read(2 * window)]);
    assert.deepEqual(early, blob.subarray(2 * window, 3 * window));
    assert.deepEqual(late, blob.subarray(3 * window));
    assert.equal(sent().gets, 1, "one GET");
    assert(sent().bytes <= SIZE * 1.05, `${sent().bytes} bytes sent for ${SIZE}`);
    // A read before where the body is now needs a GET of its own (from byte 0).
    assert.deepEqual(await read(MiB, MiB), blob.subarray(MiB, 2 * MiB));
    assert.equal(sent().gets, 2);
  }, blob);
});
