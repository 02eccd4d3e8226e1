/**
 * RegistryBlob's memory of a failed read: the kernel asks again right after an EIO (readahead,
 * then the page alone), and each ask sat through the whole retry chain again.
 */
import assert from "node:assert/strict";
import { type BlobRangeReader, RegistryBlob } from "./registry_blob.ts";
import { OciError } from "../errors.ts";

function failingBlob(failWith: () => Error) {
  const asked: [number, number][] = [];
  const reader: BlobRangeReader = {
    readBlobRange(_repository, _digest, offset, length) {
      asked.push([offset, length]);
      return asked.length === 1
        ? Promise.reject(failWith())
        : Promise.resolve(new Uint8Array(length));
    },
  };
  const blob = new RegistryBlob(reader, "r", {
    index: 0,
    digest: "sha256:" + "a".repeat(64),
    sizeBytes: 1 << 20,
    mediaType: "application/octet-stream",
  });
  return { blob, asked };
}

Deno.test("RegistryBlob: a range that failed is refused at once for a few seconds; others are asked", async () => {
  const { blob, asked } = failingBlob(() => new OciError("registry r stopped answering GETs"));
  await assert.rejects(blob.read(0, 65536), /stopped answering/);
  // The page inside it, asked again at once: the same error, no GET.
  await assert.rejects(
    blob.read(4096, 4096),
    /stopped answering GETs \(a read of these bytes failed 0\.\d s ago/,
  );
  assert.equal(asked.length, 1);
  // Bytes the failed read did not cover are asked for.
  assert.equal((await blob.read(65536, 4096)).length, 4096);
  assert.equal(asked.length, 2);
});

Deno.test("RegistryBlob: a caller's abort or a programming error is not remembered as the registry's", async () => {
  const { blob, asked } = failingBlob(() => new RangeError("not the registry's doing"));
  await assert.rejects(blob.read(0, 4096), RangeError);
  assert.equal((await blob.read(0, 4096)).length, 4096);
  assert.equal(asked.length, 2);
});
