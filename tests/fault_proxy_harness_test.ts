/** Self-tests of the fault proxy with plain fetch against a real registry. */
import assert from "node:assert/strict";
import { command, FIXTURES, requires } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { isBlobGet, startFaultProxy } from "./_support/fault_proxy.ts";
import { pushImage } from "./_support/oci_raw.ts";

const ignore = requires(command("docker-registry"), command("htpasswd"), command("openssl"));

Deno.test({
  name: "harness: fault proxy injects each fault and records requests",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "basic" });
    const bytes = await Deno.readFile(`${FIXTURES}/layer1.erofs`);
    const { layers } = await pushImage(registry, "proxy/app", "v1", [
      { bytes, mediaType: "application/vnd.erofs" },
    ]);
    const blobPath = `/v2/proxy/app/blobs/${layers[0].digest}`;
    const rangeIs = (range: string) => (r: { headers: Headers }) =>
      r.headers.get("range") === range;
    await using proxy = await startFaultProxy(registry.host, [
      {
        match: (r) => isBlobGet(r) && !r.headers.has("range"),
        fault: { kind: "status", status: 500 },
        times: 2,
      },
      {
        match: (r) => isBlobGet(r) && rangeIs("bytes=0-99")(r),
        fault: { kind: "reset", afterBytes: 10 },
        times: 1,
      },
      {
        match: (r) => isBlobGet(r) && rangeIs("bytes=100-199")(r),
        fault: { kind: "ignore-range" },
      },
      { match: (r) => isBlobGet(r) && rangeIs("bytes=200-299")(r), fault: { kind: "corrupt" } },
      { match: (r) => isBlobGet(r) && rangeIs("bytes=300-399")(r), fault: { kind: "redirect" } },
      {
        match: (r) => isBlobGet(r) && rangeIs("bytes=400-499")(r),
        fault: { kind: "delay", ms: 300 },
      },
    ]);
    const auth = await registry.authHeaders("proxy/app");
    const get = (range?: string, extra: RequestInit = {}) =>
      fetch(`http://${proxy.host}${blobPath}`, {
        headers: { ...auth, ...(range ? { range } : {}) },
        ...extra,
      });

    for (const expected of [500, 500, 200]) {
      const response = await get();
      const body = new Uint8Array(await response.arrayBuffer());
      assert.equal(response.status, expected);
      if (expected === 200) assert.deepEqual(body, bytes);
    }

    const reset = await get("bytes=0-99");
    assert.equal(reset.status, 206);
    await assert.rejects(reset.arrayBuffer());
    const retried = await get("bytes=0-99");
    assert.deepEqual(new Uint8Array(await retried.arrayBuffer()), bytes.subarray(0, 100));

    const full = await get("bytes=100-199");
    assert.equal(full.status, 200);
    assert.deepEqual(new Uint8Array(await full.arrayBuffer()), bytes);

    const corrupt = await get("bytes=200-299");
    assert.equal(corrupt.status, 206);
    assert.notDeepEqual(new Uint8Array(await corrupt.arrayBuffer()), bytes.subarray(200, 300));

    const redirect = await get("bytes=300-399", { redirect: "manual" });
    await redirect.body?.cancel();
    assert.equal(redirect.status, 307);
    const location = redirect.headers.get("location")!;
    assert.ok(location.startsWith(`http://${proxy.redirectHost}/`), location);
    const withAuth = await fetch(location, { headers: { ...auth, range: "bytes=300-399" } });
    await withAuth.body?.cancel();
    assert.equal(withAuth.status, 400);
    const clean = await fetch(location, { headers: { range: "bytes=300-399" } });
    assert.equal(clean.status, 206);
    assert.deepEqual(new Uint8Array(await clean.arrayBuffer()), bytes.subarray(300, 400));
    assert.deepEqual(proxy.redirected.map((r) => r.hasAuthorization), [true, false]);

    const started = Date.now();
    const delayed = await get("bytes=400-499");
    assert.deepEqual(new Uint8Array(await delayed.arrayBuffer()), bytes.subarray(400, 500));
    assert.ok(Date.now() - started >= 290);

    const head = await fetch(`http://${proxy.host}${blobPath}`, { method: "HEAD", headers: auth });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get("content-length"), String(bytes.length));

    assert.deepEqual(
      proxy.requests.filter((r) => r.fault).map((r) => [r.fault, r.status]),
      [["status", 500], ["status", 500], ["reset", 206], ["ignore-range", 200], ["corrupt", 206], [
        "redirect",
        307,
      ], ["delay", 206]],
    );
    assert.ok(proxy.requests.every((r) => r.hasAuthorization));
  },
});

Deno.test({
  name: "harness: pushing through the fault proxy keeps uploads on the proxy",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "none" });
    await using proxy = await startFaultProxy(registry.host, []);
    const bytes = await Deno.readFile(`${FIXTURES}/layer2.erofs`);
    await pushImage({ ...registry, host: proxy.host }, "proxy/push", "v1", [
      { bytes, mediaType: "application/vnd.erofs" },
    ]);
    const methods = proxy.requests.map((r) => `${r.method} ${r.status}`);
    assert.deepEqual(methods, ["POST 202", "PUT 201", "POST 202", "PUT 201", "PUT 201"]);
  },
});
