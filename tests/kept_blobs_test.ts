/**
 * The state directory's kept blobs (chunk tables, configs): read back only while they hash to
 * their digest, and bounded — the least recently used past the limit go, except what a mount
 * or recovery record still names.
 */
import assert from "node:assert/strict";
import { keepBlob, keptBlobPath, pruneKeptBlobs, readKeptBlob } from "../lib/oci/kept_blobs.ts";
import { digestOf } from "../lib/oci/digest.ts";

Deno.test("kept blobs: read back while they match their digest; malformed digests name no file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-kept-" });
  try {
    const bytes = new TextEncoder().encode('{"architecture":"amd64","os":"linux"}');
    const digest = digestOf(bytes);
    assert.equal(await readKeptBlob(dir, "configs", digest), undefined);
    const path = await keepBlob(dir, "configs", digest, bytes);
    assert.equal(path, keptBlobPath(dir, "configs", digest));
    assert.deepEqual(await readKeptBlob(dir, "configs", digest), bytes);
    assert.equal((Deno.statSync(path).mode ?? 0) & 0o777, 0o600);
    // Another file's bytes under this name: not used.
    Deno.writeFileSync(path, new TextEncoder().encode("{}"));
    assert.equal(await readKeptBlob(dir, "configs", digest), undefined);
    assert.equal(await readKeptBlob(dir, "configs", "sha256:../../etc/passwd"), undefined);
    await assert.rejects(keepBlob(dir, "configs", "sha256:../x", bytes), RangeError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("kept blobs: the least recently used past the limit are pruned, unless named", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-kept-" });
  try {
    const paths: string[] = [];
    const digests: string[] = [];
    for (let i = 0; i < 5; i++) {
      const bytes = new TextEncoder().encode(`table ${i}`);
      digests.push(digestOf(bytes));
      paths.push(await keepBlob(dir, "tables", digests[i], bytes));
      // File i last used 5 - i hours ago: file 0 the oldest.
      const when = new Date(Date.now() - (5 - i) * 3600_000);
      Deno.utimeSync(paths[i], when, when);
    }
    // A read is a use: file 0, the oldest, becomes the newest.
    assert(await readKeptBlob(dir, "tables", digests[0]));
    await new Promise((resolve) => setTimeout(resolve, 50)); // the use is marked in the background
    // File 1 is named by a mount's recovery record.
    const removed = pruneKeptBlobs(
      dir,
      () => JSON.stringify({ chunkTable: { path: paths[1] } }),
      2,
    );
    // Kept: the two last used (0 just read, 4), and 1 (named); 2 and 3 go.
    assert.deepEqual(removed.sort(), [paths[2], paths[3]].sort());
    const left = [...Deno.readDirSync(`${dir}/tables`)].map((e) => `${dir}/tables/${e.name}`);
    assert.deepEqual(left.sort(), [paths[0], paths[1], paths[4]].sort());
    assert.deepEqual(pruneKeptBlobs(`${dir}/missing`, () => ""), []);
    // Within the bound the records are not even read.
    const unread = () => {
      throw new Error("records read within the bound");
    };
    assert.deepEqual(pruneKeptBlobs(dir, unread, 3), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("kept blobs: damage in the state dir is a miss or is cleared, never a hang or a crash", async () => {
  const stateDir = await Deno.makeTempDir({ prefix: "erofs-oci-kept-damage-" });
  try {
    const bytes = new TextEncoder().encode('{"kept": true}');
    const digest = digestOf(bytes);
    const path = keptBlobPath(stateDir, "tables", digest);
    await Deno.mkdir(`${stateDir}/tables`);
    // A FIFO (would block a read), a device through a symlink (would never end).
    assert.ok((await new Deno.Command("mkfifo", { args: [path] }).output()).success);
    assert.equal(await readKeptBlob(stateDir, "tables", digest), undefined);
    Deno.removeSync(path);
    Deno.symlinkSync("/dev/zero", path);
    assert.equal(await readKeptBlob(stateDir, "tables", digest), undefined);
    Deno.removeSync(path);
    // A directory where the blob goes, a file where the kind's directory goes: cleared.
    Deno.mkdirSync(path);
    assert.equal(await keepBlob(stateDir, "tables", digest, bytes), path);
    assert.deepEqual(await readKeptBlob(stateDir, "tables", digest), bytes);
    Deno.writeTextFileSync(`${stateDir}/configs`, "not a directory");
    const config = keptBlobPath(stateDir, "configs", digest);
    assert.equal(await keepBlob(stateDir, "configs", digest, bytes), config);
    assert.deepEqual(await readKeptBlob(stateDir, "configs", digest), bytes);
  } finally {
    await Deno.remove(stateDir, { recursive: true });
  }
});
