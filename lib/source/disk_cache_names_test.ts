import assert from "node:assert/strict";
import { blobNameStem, parseBlobName } from "./disk_cache_names.ts";

const HEX = "ab".repeat(32);

Deno.test("parseBlobName: digest, origin and chunk size back from DiskCache's file names", () => {
  assert.deepEqual(parseBlobName(`/c/blobs/sha256-${HEX}.verified.c262144`), {
    digest: `sha256:${HEX}`,
    origin: "verified",
    tableChecked: true,
    chunkBytes: 262144,
  });
  assert.deepEqual(
    parseBlobName(`/c/blobs/sha256-${HEX}.o-https_3a_2f_2fr.test_3a5000.c1048576`),
    {
      digest: `sha256:${HEX}`,
      origin: "https://r.test:5000",
      tableChecked: false,
      chunkBytes: 1048576,
    },
  );
  assert.deepEqual(
    parseBlobName(`sha256-${HEX}.o-http_3a_2f_2f127.0.0.1_3a47185_23t-e33c0f34652e9e9d.c262144`),
    {
      digest: `sha256:${HEX}`,
      origin: "http://127.0.0.1:47185",
      tableChecked: true,
      chunkBytes: 262144,
    },
  );
});

Deno.test("parseBlobName: other names are not the cache's", () => {
  for (
    const name of [
      `sha256-${HEX}.verified`,
      `sha256-${HEX.slice(2)}.verified.c262144`,
      `md5-${HEX}.verified.c262144`,
      `sha256-${HEX}.o-bad_zz.c262144`,
      `sha256-${HEX}.verified.c0`,
      `sha256-${HEX}.x-origin.c262144`,
    ]
  ) {
    assert.equal(parseBlobName(name), undefined, name);
  }
});

Deno.test("blobNameStem → parseBlobName: the names DiskCache makes read back as they were made", () => {
  const digest = `sha256:${HEX}`;
  const origins = ["https://r.test:5000", "http://[::1]:5000", "ünï_cöde#t-0123456789abcdef", ""];
  for (const origin of origins) {
    const parsed = parseBlobName(`${blobNameStem(digest, origin, false)}.c262144`);
    const table = origin.indexOf("#t-");
    assert.deepEqual(parsed, {
      digest,
      origin: table < 0 ? origin : origin.slice(0, table),
      tableChecked: table >= 0,
      chunkBytes: 262144,
    }, origin);
  }
  assert.equal(parseBlobName(`${blobNameStem(digest, "any", true)}.c4096`)?.origin, "verified");
});
