/**
 * `--fetch-all` of a layer larger than what a small file system leaves the disk cache beside its
 * `--disk-cache-keep-free` reserve: the completion stops, and its warning names the file system
 * and the reserve as the limit, not the cache's bound (raising --disk-cache-size cannot help).
 */
import assert from "node:assert/strict";
import { DiskCache } from "../lib/source/disk_cache.ts";
import { MemorySource, patternBytes } from "./_support/memory_source.ts";
import { requires, root } from "./_support/requires.ts";
import { waitFor } from "./_support/wait.ts";

const MiB = 1 << 20;

Deno.test({
  name: "disk cache --fetch-all on a small file system: the warning names its free space",
  ignore: requires(root()),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "disk-cache-small-fs-" });
    const mounted = await new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", dir],
    }).output();
    assert(mounted.success, "mount tmpfs");
    const warnings: string[] = [];
    try {
      const cache = DiskCache.open({
        dir,
        completeInBackground: true,
        onWarning: (message) => warnings.push(message),
        onNotice: () => {},
      })!;
      const bytes = patternBytes(40 * MiB, 3);
      const source = cache.wrap(new MemorySource(bytes, { delayMs: () => 1 }), {
        digest: "sha256:" + "3".repeat(64),
        origin: "r#small-fs-test",
      });
      try {
        await waitFor(
          "the completion to stop",
          () => warnings.some((w) => w.startsWith("--fetch-all")),
          60_000,
        );
        const stopped = warnings.find((w) => w.startsWith("--fetch-all"))!;
        assert.match(stopped, /free space/, warnings.join("\n"));
        assert.match(stopped, /--disk-cache-keep-free/, warnings.join("\n"));
        assert.doesNotMatch(stopped, /raise --disk-cache-size/, warnings.join("\n"));
        // Reads still get the layer's bytes.
        assert.deepEqual(
          await source.read(30 * MiB, 4096),
          bytes.subarray(30 * MiB, 30 * MiB + 4096),
        );
      } finally {
        await source.close!();
      }
    } finally {
      await new Deno.Command("umount", { args: [dir] }).output();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
