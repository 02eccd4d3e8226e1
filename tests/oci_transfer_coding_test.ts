/**
 * A reply in a transfer coding other than chunked (`Transfer-Encoding: gzip, chunked`, as a
 * compressing proxy may send): fetch takes the chunks apart but leaves the gzip in the body, so
 * an unverified layer's reads returned gzip bytes without a word, a verified one failed as a
 * chunk-table mismatch and a manifest as "not UTF-8". Now each is refused in one line naming the
 * header. The server here is a raw socket: Deno's own HTTP server sets that header itself.
 */
import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import { RegistryClient } from "../lib/oci/client.ts";
import { assertCliError, describe, runCli } from "./_support/cli.ts";
import { startRawHttpServer } from "./_support/raw_http_server.ts";

/** Answers every request with `status` and `body` gzipped, sent `Transfer-Encoding: gzip, chunked`. */
function startGzipTransferServer(
  status: number,
  headers: Record<string, string>,
  body: Uint8Array,
) {
  const gzipped = gzipSync(body);
  const encode = (text: string) => new TextEncoder().encode(text);
  const head = [
    `HTTP/1.1 ${status} X`,
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
    "Transfer-Encoding: gzip, chunked",
    "Connection: close",
    "",
    `${gzipped.length.toString(16)}`,
    "",
  ].join("\r\n");
  return startRawHttpServer(() => [encode(head), gzipped, encode("\r\n0\r\n\r\n")], {
    closeAfter: true,
  });
}

Deno.test("a blob range in Transfer-Encoding: gzip is refused, never read as its bytes", async () => {
  const bytes = new Uint8Array(8192).fill(7);
  await using server = startGzipTransferServer(206, {
    "Content-Range": `bytes 0-8191/${bytes.length}`,
    "Content-Type": "application/octet-stream",
  }, bytes);
  const client = new RegistryClient(server.host, { hostsConfigDir: false, plainHttp: true });
  const digest = `sha256:${"a".repeat(64)}`;
  await assert.rejects(
    client.readBlobRange("tc/app", digest, 0, 8192, undefined, bytes.length),
    /with Transfer-Encoding: gzip, chunked: a blob's bytes must come as they are/,
  );
});

Deno.test("a manifest in Transfer-Encoding: gzip: one line naming the header", async () => {
  const manifest = new TextEncoder().encode(JSON.stringify({ schemaVersion: 2, layers: [] }));
  await using server = startGzipTransferServer(200, {
    "Content-Type": "application/vnd.oci.image.manifest.v1+json",
  }, manifest);
  const result = await runCli(["inspect", `${server.host}/tc/app:v1`, "--plain-http"]);
  assertCliError(
    result,
    1,
    /sent its reply to GET \S+ with Transfer-Encoding: gzip, chunked, which is not decoded here/,
  );
  assert.match(result.stderr, /hint: .*compresses replies/, describe(result));
});
