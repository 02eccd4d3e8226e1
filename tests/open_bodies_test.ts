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

/**
 * Run in a process of its own with V8's gc() (the hang needed the Response collected: Deno's
 * fetch ends a pending body read at its signal's abort only while the Response lives).
 */
const STALLED_KEPT_BODY = `
import assert from "node:assert/strict";
import { RegistryClient } from "${new URL("../lib/oci/client.ts", import.meta.url)}";
import { setStallMs } from "${new URL("../lib/oci/stall_watch.ts", import.meta.url)}";
const MiB = 1 << 20, SIZE = 32 * MiB, DIGEST = "sha256:" + "ab".repeat(32);
const blob = new Uint8Array(SIZE);
for (let at = 0; at < SIZE; at += 65536) crypto.getRandomValues(blob.subarray(at, at + 65536));
let gets = 0;
// A host that ignores Range and whose first two bodies stop at 12 MiB without closing.
const host = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, () => {
  const stopAt = ++gets <= 2 ? 12 * MiB : SIZE;
  let at = 0;
  const body = new ReadableStream({
    async pull(controller) {
      if (at >= stopAt) return await new Promise(() => {});
      const end = Math.min(SIZE, at + 65536, stopAt);
      controller.enqueue(blob.slice(at, end));
      at = end;
      if (at >= SIZE) controller.close();
    },
  }, { highWaterMark: 0 });
  return new Response(body, { headers: { "content-length": String(SIZE) } });
});
setStallMs(1000);
const client = new RegistryClient("127.0.0.1:" + host.addr.port, { plainHttp: true });
const read = (at, length) => client.readBlobRange("app", DIGEST, at, length, undefined, SIZE);
assert.deepEqual(await read(0, MiB), blob.subarray(0, MiB));
assert.deepEqual(await read(MiB, 7 * MiB), blob.subarray(MiB, 8 * MiB));
globalThis.gc();
// Goes on in the kept body, which stops at 12 MiB: the read's stall watch must end it.
assert.deepEqual(await read(9 * MiB, 8 * MiB), blob.subarray(9 * MiB, 17 * MiB));
console.log("read after", gets, "GETs");
Deno.exit(0);
`;

Deno.test("open bodies: a kept body that stops sending is given up at the stall time, not waited on", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--ext=js", "--v8-flags=--expose-gc", STALLED_KEPT_BODY],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(60_000),
  });
  const output = await child.output();
  const stderr = new TextDecoder().decode(output.stderr);
  assert.equal(output.code, 0, output.signal ? `hung: killed at 60 s\n${stderr}` : stderr);
  assert.match(new TextDecoder().decode(output.stdout), /^read after 3 GETs$/m);
});
