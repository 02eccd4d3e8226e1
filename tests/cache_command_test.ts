/**
 * `erofs-oci cache` and `cache prune` against a real disk cache in a temporary directory: the
 * CLI runs as another process, so a blob this test holds open shows as in use through its OFD
 * lock, and prune must leave it whole while it removes the others, least recently used first.
 */
import assert from "node:assert/strict";
import { DEFAULT_DISK_CHUNK_BYTES as CHUNK, DiskCache } from "../lib/source/disk_cache.ts";
import type { Source } from "../lib/source/source.ts";
import { MemorySource, patternBytes } from "./_support/memory_source.ts";
import { assertCliError, assertSuccess, describe, runCli } from "./_support/cli.ts";
import { requires, root } from "./_support/requires.ts";

interface ListedBlob {
  digest: string;
  origin: string;
  tableChecked: boolean;
  sizeBytes: number;
  chunks: number;
  chunksPresent: number;
  bytesOnDisk: number;
  inUse: boolean;
  hasMetadata: boolean;
}

const digestOf = (n: number) => "sha256:" + n.toString(16).padStart(2, "0").repeat(32);

async function listed(dir: string, ...args: string[]) {
  const result = await runCli(["cache", ...args, "--json"], { env: { EROFS_OCI_CACHE_DIR: dir } });
  assertSuccess(result);
  return JSON.parse(result.stdout) as {
    dir: string;
    bytesOnDisk: number;
    fileSystemFreeBytes?: number;
    removedBlobs?: number;
    freedBytes?: number;
    blobs: ListedBlob[];
  };
}

/** Fills `chunks` chunks of blob `n` (3 chunks long) through the cache; returns its source. */
async function fill(cache: DiskCache, n: number, chunks: number, origin = "https://r.test") {
  const bytes = patternBytes(3 * CHUNK, n);
  const source = cache.wrap(new MemorySource(bytes), { digest: digestOf(n), origin });
  const read = await source.read(0, chunks * CHUNK);
  assert.deepEqual(read, bytes.subarray(0, chunks * CHUNK));
  return { source, bytes };
}

async function closeAll(sources: Source[]) {
  for (const source of sources) await source.close?.();
}

Deno.test("cache: lists each blob with what is cached and whether a process has it open; metrics has the sums", async () => {
  const dir = await Deno.makeTempDir();
  const open: Source[] = [];
  try {
    const cache = DiskCache.open({ checkCompleteBlobs: false, dir })!;
    const held = await fill(cache, 1, 2);
    open.push(held.source);
    const closed = await fill(cache, 2, 3);
    await closed.source.close?.();
    const verified = cache.wrap(new MemorySource(patternBytes(3 * CHUNK, 3)), {
      digest: digestOf(3),
      origin: "https://r.test",
      verify: () => true,
    });
    open.push(verified);
    await verified.read(0, 1);
    // How a mount keys a layer read behind its chunk table (layer_tables.ts tableCacheOrigin).
    const tabled = await fill(cache, 4, 1, "https://r.test#t-0123456789abcdef");
    await tabled.source.close?.();

    const out = await listed(dir);
    const byDigest = new Map(out.blobs.map((blob) => [blob.digest, blob]));
    assert.equal(out.blobs.length, 4, JSON.stringify(out));
    // statfs's free space for unprivileged users, as `df` shows it (loosely: other programs
    // write to the same file system between the two looks).
    const df = await new Deno.Command("df", { args: ["-B1", "--output=avail", dir] }).output();
    const dfFree = Number(new TextDecoder().decode(df.stdout).trim().split("\n").pop());
    const slack = Math.max(2 ** 31, dfFree / 20);
    assert(Math.abs(out.fileSystemFreeBytes! - dfFree) < slack, `${out.fileSystemFreeBytes}`);
    assert.deepEqual(
      [1, 2, 3, 4].map((n) => {
        const blob = byDigest.get(digestOf(n))!;
        return [
          blob.origin,
          blob.tableChecked,
          blob.sizeBytes,
          blob.chunks,
          blob.chunksPresent,
          blob.inUse,
        ];
      }),
      [
        ["https://r.test", false, 3 * CHUNK, 3, 2, true],
        ["https://r.test", false, 3 * CHUNK, 3, 3, false],
        ["verified", true, 3 * CHUNK, 3, 1, true],
        ["https://r.test", true, 3 * CHUNK, 3, 1, false],
      ],
    );
    for (const blob of out.blobs) assert.ok(blob.bytesOnDisk > 0, JSON.stringify(blob));
    assert.equal(out.bytesOnDisk, out.blobs.reduce((sum, blob) => sum + blob.bytesOnDisk, 0));

    // A mount recorded with blob 1 as a layer: the table names it as the user.
    Deno.mkdirSync(`${dir}/run/mounts/m1`, { recursive: true });
    Deno.writeTextFileSync(
      `${dir}/run/mounts/m1/state.json`,
      JSON.stringify({
        id: "m1",
        target: "/mnt/held-here",
        image: "r.test/app:v1",
        backend: "fuse",
        serverPid: 1,
        createdAt: new Date().toISOString(),
        layers: [{ digest: digestOf(1), blockPath: "/dev/null", layerDir: "/mnt/held-here" }],
        overlay: false,
      }),
    );
    const table = await runCli(["cache"], {
      env: { EROFS_OCI_CACHE_DIR: dir, EROFS_OCI_RUNTIME_DIR: `${dir}/run` },
    });
    assertSuccess(table);
    assert.match(table.stdout, /\nsha256:010101010101 .* \/mnt\/held-here +20/, describe(table));
    assert.match(table.stdout, /\nsha256:030303030303 +verified .* yes +20/, describe(table));

    // `metrics` (the host-wide command) has the same figures as gauges.
    const metrics = await runCli(["metrics"], {
      env: { EROFS_OCI_CACHE_DIR: dir, EROFS_OCI_RUNTIME_DIR: `${dir}/run-none` },
    });
    assertSuccess(metrics);
    const gauge = (name: string) =>
      Number(new RegExp(`^${name} (\\d+)$`, "m").exec(metrics.stdout)?.[1]);
    assert.deepEqual(
      [
        gauge("erofs_oci_disk_cache_bytes"),
        gauge("erofs_oci_disk_cache_blobs"),
        gauge("erofs_oci_disk_cache_blobs_in_use"),
      ],
      [out.bytesOnDisk, 4, 2],
      metrics.stdout,
    );
    assert.match(
      table.stdout,
      /: 4 blobs, .* on disk, 2 in use; .* free on its file system\n/,
      describe(table),
    );
    assert.match(table.stdout, /\nsha256:040404040404 +https:\/\/r\.test \(checked\) +33% of /);
    assert.match(
      table.stdout,
      /\nsha256:020202020202 +https:\/\/r\.test +100% of 768\.0 KiB +[0-9.]+ KiB +no /,
    );
  } finally {
    await closeAll(open);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cache prune: removes unused blobs, least recently used first (--keep, --older-than), never one in use", async () => {
  const dir = await Deno.makeTempDir();
  const open: Source[] = [];
  try {
    const cache = DiskCache.open({ checkCompleteBlobs: false, dir })!;
    const held = await fill(cache, 1, 3);
    open.push(held.source);
    for (const n of [2, 3, 4]) await (await fill(cache, n, 3)).source.close?.();
    // Last filled: 4 long ago, then 2, then 3 (the map's mtime is the blob's last use).
    const base = (n: number) =>
      `${dir}/blobs/${digestOf(n).replace(":", "-")}.o-https_3a_2f_2fr.test.c${CHUNK}`;
    const now = Date.now() / 1000;
    for (const [n, ageS] of [[4, 3000], [2, 2000], [3, 1000], [1, 4000]]) {
      Deno.utimeSync(`${base(n)}.map`, now - ageS, now - ageS);
    }
    const before = await listed(dir);
    const perBlob = before.blobs.find((blob) => blob.digest === digestOf(3))!.bytesOnDisk;

    // Room for the blob in use and one more: 4 and 2 go (oldest unused), 3 stays, 1 is in use.
    const kept = await listed(dir, "prune", "--keep", `${before.bytesOnDisk - 2 * perBlob}`);
    assert.equal(kept.removedBlobs, 2, JSON.stringify(kept));
    assert.deepEqual(kept.blobs.map((blob) => blob.digest).sort(), [digestOf(1), digestOf(3)]);
    for (const n of [2, 4]) {
      assert.throws(() => Deno.statSync(`${base(n)}.data`), Deno.errors.NotFound);
    }

    // --older-than: 3 (last used 1000 s ago) goes, a blob used just now stays.
    await (await fill(cache, 5, 1)).source.close?.();
    const old = await listed(dir, "prune", "--older-than", "10m");
    assert.equal(old.removedBlobs, 1, JSON.stringify(old));
    assert.deepEqual(old.blobs.map((blob) => blob.digest).sort(), [digestOf(1), digestOf(5)]);

    const all = await listed(dir, "prune");
    assert.equal(all.removedBlobs, 1);
    assert.deepEqual(all.blobs.map((blob) => [blob.digest, blob.inUse]), [[digestOf(1), true]]);
    // The open blob was left whole: its bytes still come from the disk, right.
    assert.deepEqual(await held.source.read(0, 3 * CHUNK), held.bytes);
    // A --keep that the blob in use keeps the cache above is said, not passed over.
    const text = await runCli(["cache", "prune", "--keep", "1K"], {
      env: { EROFS_OCI_CACHE_DIR: dir },
    });
    assertSuccess(text);
    assert.match(
      text.stderr,
      /remain, above --keep 1\.0 KiB \(1 blob in use by mounts\): blobs in use are kept$/m,
    );
  } finally {
    await closeAll(open);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cache prune: a blob whose map is damaged (a directory, FIFO or symlink) is pruned", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const cache = DiskCache.open({ checkCompleteBlobs: false, dir })!;
    const base = (n: number) =>
      `${dir}/blobs/${digestOf(n).replace(":", "-")}.o-https_3a_2f_2fr.test.c${CHUNK}`;
    for (const n of [1, 2, 3, 4]) await (await fill(cache, n, 2)).source.close?.();
    Deno.removeSync(`${base(1)}.map`);
    Deno.mkdirSync(`${base(1)}.map`);
    // A temporary sidecar a killed process left goes with its damaged blob too.
    Deno.writeFileSync(`${base(1)}.meta.0a1b2c3d.tmp`, new Uint8Array(100));
    Deno.removeSync(`${base(2)}.map`);
    assert.ok((await new Deno.Command("mkfifo", { args: [`${base(2)}.map`] }).output()).success);
    Deno.removeSync(`${base(3)}.map`);
    Deno.symlinkSync("/dev/null", `${base(3)}.map`);
    // A damaged map that is all a blob has left (no data file to list it by).
    for (const entry of Deno.readDirSync(`${dir}/blobs`)) {
      if (entry.name.startsWith(base(4).slice(`${dir}/blobs/`.length))) {
        Deno.removeSync(`${dir}/blobs/${entry.name}`);
      }
    }
    Deno.symlinkSync("/dev/null", `${base(4)}.map`);
    const pruned = await listed(dir, "prune");
    assert.equal(pruned.removedBlobs, 4, JSON.stringify(pruned));
    assert.deepEqual([...Deno.readDirSync(`${dir}/blobs`)].map((e) => e.name), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cache prune: temporary sidecar and boot files a killed process left are counted with their blob and removed with it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const cache = DiskCache.open({ checkCompleteBlobs: false, dir })!;
    const base = (n: number) =>
      `${dir}/blobs/${digestOf(n).replace(":", "-")}.o-https_3a_2f_2fr.test.c${CHUNK}`;
    for (const n of [1, 2]) await (await fill(cache, n, 1)).source.close?.();
    const before = await listed(dir);
    // As a process killed between the write and the rename leaves them (64 KiB each).
    Deno.writeFileSync(`${base(1)}.meta.0a1b2c3d.tmp`, new Uint8Array(65536).fill(1));
    Deno.writeFileSync(`${base(1)}.boot.4e5f6a7b.tmp`, new Uint8Array(65536).fill(2));
    const after = await listed(dir);
    assert.equal(after.blobs.length, 2, "no blob of their own");
    const one = (list: typeof before) => list.blobs.find((b) => b.digest === digestOf(1))!;
    assert.ok(one(after).bytesOnDisk >= one(before).bytesOnDisk + 2 * 65536, JSON.stringify(after));
    assert.equal(one(after).hasMetadata, false, "a temporary sidecar is no sidecar");
    const pruned = await listed(dir, "prune");
    assert.equal(pruned.removedBlobs, 2, JSON.stringify(pruned));
    assert.deepEqual([...Deno.readDirSync(`${dir}/blobs`)].map((e) => e.name), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cache: no cache yet → an empty listing, nothing created; indexes made here shown, kept; a directory others can write → refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const missing = `${dir}/never-used`;
    const out = await listed(missing);
    assert.deepEqual([out.blobs, out.bytesOnDisk], [[], 0]);
    assert.throws(() => Deno.statSync(missing), Deno.errors.NotFound);

    // Indexes made by mount --index-missing are shown, and prune leaves them.
    const index = `${dir}/state/indexed-here/sha256-${"ee".repeat(32)}`;
    Deno.mkdirSync(index, { recursive: true });
    Deno.writeFileSync(`${index}/layer.meta.erofs`, new Uint8Array(5000).fill(1));
    const env = { EROFS_OCI_CACHE_DIR: missing, EROFS_OCI_STATE_DIR: `${dir}/state` };
    const pruned = await runCli(["cache", "prune", "--json"], { env });
    assertSuccess(pruned);
    const { indexedHere } = JSON.parse(pruned.stdout);
    assert.equal(indexedHere.layers, 1, pruned.stdout);
    assert.ok(indexedHere.bytes >= 5000, pruned.stdout);
    assert.equal(Deno.statSync(`${index}/layer.meta.erofs`).size, 5000);

    Deno.mkdirSync(`${dir}/open/blobs`, { recursive: true });
    Deno.chmodSync(`${dir}/open`, 0o777);
    assertCliError(
      await runCli(["cache", "prune"], { env: { EROFS_OCI_CACHE_DIR: `${dir}/open` } }),
      1,
      /disk cache .*\/open unusable \(writable by others/,
    );
    // Refused before a mount ever made blobs/ there: said so too (it listed an empty cache).
    Deno.mkdirSync(`${dir}/open-empty`);
    Deno.chmodSync(`${dir}/open-empty`, 0o777);
    assertCliError(
      await runCli(["cache"], { env: { EROFS_OCI_CACHE_DIR: `${dir}/open-empty` } }),
      1,
      /disk cache .*\/open-empty unusable \(writable by others/,
    );
    assertCliError(
      await runCli(["cache", "drop"], { env: { EROFS_OCI_CACHE_DIR: dir } }),
      2,
      /cache: unknown action 'drop'/,
    );
    assertCliError(
      await runCli(["cache", "prune", "extra"], { env: { EROFS_OCI_CACHE_DIR: dir } }),
      2,
      /cache: unexpected argument 'extra'/,
    );
    for (const bad of ["soon", "30", "1M"]) {
      // A bare number was seconds (30 pruned what was used more than 30 s ago), M minutes.
      assertCliError(
        await runCli(["cache", "prune", "--older-than", bad], {
          env: { EROFS_OCI_CACHE_DIR: dir },
        }),
        2,
        new RegExp(`--older-than: invalid duration '${bad}'`),
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name:
    "cache on a read-only file system: complete blobs listed as complete; prune fails in one line, exit 1",
  ignore: requires(root()),
  async fn() {
    const dir = await Deno.makeTempDir();
    const mount = (...args: string[]) =>
      new Deno.Command("mount", { args, stderr: "piped" }).output().then((out) => {
        assert.ok(out.success, new TextDecoder().decode(out.stderr));
      });
    try {
      const cache = DiskCache.open({ checkCompleteBlobs: false, dir })!;
      const { source } = await fill(cache, 1, 3);
      await source.close?.();
      await mount("--bind", dir, dir);
      try {
        await mount("-o", "remount,bind,ro", dir);
        // Listed as complete: the look opened each map read-write and saw none (0%).
        const blobs = (await listed(dir)).blobs;
        assert.deepEqual(blobs.map((b) => [b.chunks, b.chunksPresent]), [[3, 3]]);
        // The prune said "removed 0 blobs" and exited 0.
        const pruned = await runCli(["cache", "prune"], { env: { EROFS_OCI_CACHE_DIR: dir } });
        assertCliError(pruned, 1, /cache prune: cannot remove 1 blob of .*Read-only file system/);
      } finally {
        await mount("--make-private", dir).catch(() => {});
        await new Deno.Command("umount", { args: [dir] }).output();
      }
      assert.deepEqual((await listed(dir, "prune")).removedBlobs, 1);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
