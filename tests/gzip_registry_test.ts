/**
 * The composition a gzip-layer mount will use: a tar+gzip blob in a real docker-registry read
 * with ranged GETs (RegistryBlob) through the chunk cache (CachedSource), inflated from zinfo
 * checkpoints (HybridTarSource) and mounted by the kernel's EROFS driver over FUSE. Reading one
 * small file fetches a fraction of the layer; the full tree equals the expected manifest.
 */
import assert from "node:assert/strict";
import { RegistryClient } from "../lib/oci/client.ts";
import { RegistryBlob } from "../lib/oci/registry_blob.ts";
import { CachedSource } from "../lib/source/cached.ts";
import { HybridTarSource } from "../lib/gzip/hybrid_tar.ts";
import { LocalFile } from "../lib/source/local_file.ts";
import { expected, FuseStack, manifest } from "./_support/fuse_stack.ts";
import { startRegistry } from "./_support/registry.ts";
import { uploadBlob } from "./_support/oci_raw.ts";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";

const GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip";

Deno.test({
  name: "registry tar.gz blob → chunk cache → zinfo inflate → kernel EROFS mount (lazy)",
  ignore: requires(
    root(),
    path("/dev/fuse"),
    command("python3"),
    command("mount"),
    command("docker-registry"),
    path(`${FIXTURES}/big.zinfo`, "shared fixtures"),
  ),
  async fn() {
    const registry = await startRegistry({ auth: "none" });
    const client = new RegistryClient(registry.host, { plainHttp: true });
    const zinfo = await LocalFile.open(`${FIXTURES}/big.zinfo`);
    const stack = await FuseStack.create();
    let source: HybridTarSource | undefined;
    let mnt: string | undefined;
    try {
      const gz = await Deno.readFile(`${FIXTURES}/big.tar.gz`);
      const layer = await uploadBlob(registry, "gz/layer", gz, GZIP_LAYER);
      const blob = new RegistryBlob(client, "gz/layer", {
        index: 0,
        digest: layer.digest,
        sizeBytes: layer.size,
        mediaType: GZIP_LAYER,
      });
      const fetched: number[] = [];
      const recorded = {
        size: blob.size,
        read: (offset: number, length: number, signal?: AbortSignal) => {
          fetched.push(offset);
          return blob.read(offset, length, signal);
        },
      };
      const cached = new CachedSource(recorded, { chunkBytes: 256 * 1024, cacheBytes: 8 << 20 });
      source = await HybridTarSource.openGzip(
        await Deno.readFile(`${FIXTURES}/big.meta.erofs`),
        cached,
        zinfo,
      );
      const file = await stack.blob(source, "fuse");
      const target = await stack.dir("mnt");
      const mounted = await new Deno.Command("mount", {
        args: ["-t", "erofs", "-o", "ro", file.filePath, target],
        stderr: "piped",
      }).output();
      assert.ok(mounted.success, new TextDecoder().decode(mounted.stderr));
      mnt = target;

      // Device probing (udev/blkid) after the loop device appears reads near its start; let
      // it settle so what follows is the file read's own traffic.
      await quiet(() => blob.requests);
      const before = { bytes: blob.bytesFetched, reads: fetched.length };
      // small/ lives in the last span (checkpoint 2 at compressed 4274454 of 4631369).
      const small = await Deno.readFile(`${mnt}/small/d.bin`);
      assert.equal(small.length, 70000);
      const spent = blob.bytesFetched - before.bytes;
      assert.ok(spent > 0 && spent < gz.length / 4, `one small file fetched ${spent} bytes`);
      const chunkOfCheckpoint2 = Math.floor(4274454 / (256 * 1024)) * 256 * 1024;
      assert.ok(fetched.slice(before.reads).every((offset) => offset >= chunkOfCheckpoint2));
      const requestsForOneFile = blob.requests;

      assert.equal(await manifest(mnt), await expected("big.meta.txt"));
      assert.ok(blob.bytesFetched <= gz.length * 1.5, `full read fetched ${blob.bytesFetched}`);
      assert.ok(blob.requests > requestsForOneFile);
    } finally {
      try {
        if (mnt) await new Deno.Command("umount", { args: [mnt] }).output();
      } finally {
        await stack.cleanup();
        await source?.close();
        await zinfo.close();
        client.close();
        await registry.stop();
      }
    }
  },
});

/** Waits until `counter()` has not changed for 300 ms twice in a row (at most 5 s). */
async function quiet(counter: () => number): Promise<void> {
  let last = counter(), still = 0;
  for (let waited = 0; still < 2 && waited < 5000; waited += 300) {
    await new Promise((resolve) => setTimeout(resolve, 300));
    const now = counter();
    still = now === last ? still + 1 : 0;
    last = now;
  }
}
