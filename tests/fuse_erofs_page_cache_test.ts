/**
 * EROFS layers over FUSE through the FUSE file's page cache (issue 12's full read): EROFS reads
 * its file-backed image with one buffered read per bio; under direct I/O each was one FUSE READ
 * of mostly 4–32 KiB, strictly one at a time. Through the page cache the kernel's readahead asks
 * for large READs instead. Checked with the mount server's source stack over a filled disk
 * cache: the same bytes in far fewer, larger READs, still answered by the reader thread from the
 * disk cache; and through `erofs-oci mount --backend fuse` that EROFS layers get the page cache.
 * Tampered bytes with the page cache on: tests/verify_mount_test.ts (FUSE mounts).
 */
import assert from "node:assert/strict";
import { DiskCache } from "../lib/source/disk_cache.ts";
import { DiskCachedSource } from "../lib/source/disk_cached.ts";
import { CachedSource } from "../lib/source/cached.ts";
import { PrefetchedSource } from "../lib/source/prefetched.ts";
import type { FuseBlob } from "../lib/fuse/blob.ts";
import { deadline, FuseStack, manifest } from "./_support/fuse_stack.ts";
import { MemorySource } from "./_support/memory_source.ts";
import { startRegistry } from "./_support/registry.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { mountSandbox, mountsBelow } from "./_support/mounts.ts";
import { command, path, PEER_BIN, requires, root } from "./_support/requires.ts";

const MKFS = `${PEER_BIN}/mkfs.erofs`;
const ignore = requires(
  root(),
  path("/dev/fuse"),
  path(MKFS, "mkfs.erofs 1.9.3"),
  command("tar"),
  command("python3"),
);

/**
 * A tree of many small random files (the benchmark image's shape: most reads 4–32 KiB) in an
 * uncompressed mkfs.erofs image in `dir`; the image bytes, the tree and its file bytes in all.
 */
async function smallFilesImage(
  dir: string,
): Promise<{ image: Uint8Array; tree: string; fileBytes: number }> {
  const tree = `${dir}/tree`;
  let fileBytes = 0;
  for (let d = 0; d < 8; d++) {
    Deno.mkdirSync(`${tree}/d${d}`, { recursive: true });
    for (let f = 0; f < 60; f++) {
      const size = new Uint32Array(crypto.getRandomValues(new Uint32Array(1)))[0] % (24 << 10);
      const bytes = crypto.getRandomValues(new Uint8Array(size + 1));
      Deno.writeFileSync(`${tree}/d${d}/f${f}`, bytes);
      fileBytes += bytes.length;
    }
  }
  const out = await new Deno.Command(MKFS, {
    args: ["--quiet", `${dir}/image.erofs`, tree],
  }).output();
  assert(out.success, new TextDecoder().decode(out.stderr));
  return { image: Deno.readFileSync(`${dir}/image.erofs`), tree, fileBytes };
}

/** Every file's bytes through tar (not to /dev/null: GNU tar would skip reading them). */
async function fullRead(dir: string): Promise<void> {
  const out = await deadline(
    new Deno.Command("sh", {
      args: ["-c", `tar -C '${dir}' -cf - . | wc -c`],
      stdout: "null",
      stderr: "piped",
    }).output(),
    "tar",
    60_000,
  );
  assert(out.success, new TextDecoder().decode(out.stderr));
}

/** The reader reports the READs it served in batches: wait until the count stops moving. */
async function settledStats(blob: FuseBlob) {
  let last = blob.stats();
  for (let i = 0; i < 50; i++) {
    await new Promise((resolve) => setTimeout(resolve, 20));
    const now = blob.stats();
    if (now.reads === last.reads && i >= 5) return now;
    last = now;
  }
  return last;
}

Deno.test({
  name:
    "fuse page cache, EROFS layer on a filled disk cache: a full read is far fewer, larger READs, served by the reader thread, same bytes",
  ignore,
  async fn() {
    const stack = await FuseStack.create();
    const sources: { close(): Promise<void> }[] = [];
    try {
      const { image, tree } = await smallFilesImage(await stack.dir("build"));
      const want = await manifest(tree);
      const cache = DiskCache.open({
        checkCompleteBlobs: false,
        dir: await stack.dir("cache"),
        onWarning: () => {},
      })!;
      const inner = new MemorySource(image);
      const disk = cache.wrap(inner, { digest: "sha256:" + "5a".repeat(32), origin: "test" });
      assert(disk instanceof DiskCachedSource);
      const served = new PrefetchedSource(new CachedSource(disk));
      sources.push(served);
      // Fill the disk cache: afterwards every READ can be answered by the reader thread.
      for (let at = 0; at < disk.size; at += 1 << 20) {
        await disk.read(at, Math.min(1 << 20, disk.size - at));
      }
      await disk.whenDurable();
      const fetched = inner.reads.length;

      const results: Record<string, { reads: number; bytes: number; directReads: number }> = {};
      for (const pageCache of [false, true]) {
        const mode = pageCache ? "page" : "direct";
        const blob = await stack.blob(served, `fuse-${mode}`, { pageCache });
        const mnt = `${stack.root}/mnt-${mode}`;
        await stack.erofs(blob.filePath, `mnt-${mode}`);
        await fullRead(mnt);
        results[mode] = await settledStats(blob);
        assert.equal(await manifest(mnt), want, `${mode}: the tree read back differs`);
      }
      const { direct, page } = results;
      const info = JSON.stringify(results);
      // Seen: direct 1,000+ READs of ~4–24 KiB; page cache a few dozen of up to 256 KiB.
      assert(page.reads * 3 <= direct.reads, `page cache READs not far fewer: ${info}`);
      assert(page.bytes / page.reads >= 3 * (direct.bytes / direct.reads), info);
      // The large READs are still answered from the disk cache by the reader thread.
      assert(page.directReads >= page.reads - 2, `READs left to the main thread: ${info}`);
      assert.equal(inner.reads.length, fetched, "a READ went past the filled disk cache");
    } finally {
      try {
        await stack.cleanup();
      } finally {
        for (const source of sources) await source.close();
      }
    }
  },
});

/** Pages of `file` in the page cache (fincore). */
async function residentPages(file: string): Promise<number> {
  const out = await new Deno.Command("fincore", {
    args: ["--noheadings", "--output", "PAGES", file],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert(out.success, new TextDecoder().decode(out.stderr));
  return Number(new TextDecoder().decode(out.stdout).trim());
}

Deno.test({
  name:
    "fuse page cache: `mount --backend fuse` reads an EROFS layer through the FUSE file's page cache",
  ignore: ignore || requires(command("docker-registry"), command("fincore")),
  async fn() {
    const registry = await startRegistry({ auth: "none" });
    const sandbox = await mountSandbox();
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-page-cache-test-" });
    try {
      const { tree, fileBytes } = await smallFilesImage(work);
      const image = `${registry.host}/demo/pagecache:v1`;
      assertSuccess(
        await runCli(["push", image, `${work}/image.erofs`, "--plain-http"], {
          timeoutMs: 60_000,
        }),
      );
      assertSuccess(
        await runCli(["mount", image, sandbox.target, "--backend", "fuse", "--plain-http"], {
          env: sandbox.env,
          timeoutMs: 60_000,
        }),
      );
      assert.equal(await manifest(sandbox.target), await manifest(tree));
      const fuseFile = mountsBelow(sandbox.runtimeDir).map((m) => `${m}/layer.erofs`)
        .find((file) => {
          try {
            return Deno.statSync(file).isFile;
          } catch {
            return false;
          }
        });
      assert(fuseFile, `no FUSE layer file below ${sandbox.runtimeDir}`);
      // Under direct I/O only what EROFS reads through the file's mapping (metadata, inline
      // tails) is cached there; through the page cache the file data just read is there too.
      // Another test's drop_caches between the read and the count could empty it: up to 3
      // tries (direct I/O fails every one).
      const cached: number[] = [];
      for (let attempt = 0; attempt < 3; attempt++) {
        await fullRead(sandbox.target);
        cached.push((await residentPages(fuseFile)) * 4096);
        if (cached.at(-1)! >= fileBytes) break;
      }
      assert(
        cached.at(-1)! >= fileBytes,
        `bytes of the FUSE file cached after reading ${fileBytes} bytes of files: ${cached}`,
      );
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    } finally {
      await sandbox.cleanup();
      await registry.stop();
      await Deno.remove(work, { recursive: true });
    }
  },
});
