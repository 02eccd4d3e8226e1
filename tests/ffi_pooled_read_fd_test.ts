/**
 * A Source over a raw descriptor (FdFile, LayoutFile) closed while a read is on a pool thread:
 * the descriptor stays open until that read ends, so its number cannot name another file the
 * process opens meanwhile (whose bytes the read would then return).
 */
import assert from "node:assert/strict";
import { cstr, libc, O_CLOEXEC, O_RDONLY } from "../ffi/libc.ts";
import { FdFile } from "../lib/source/fd_file.ts";
import { LayoutFile } from "../lib/oci/layout_file.ts";
import { withTempDir } from "./_support/temp_dir.ts";

const SIZE = 8 << 20;

function holds(fd: number, path: string): boolean {
  try {
    return Deno.readLinkSync(`/proc/self/fd/${fd}`) === path;
  } catch {
    return false;
  }
}

/** The numbers of the process's open descriptors on `path`. */
function fdsOn(path: string): number[] {
  return [...Deno.readDirSync("/proc/self/fd")].map((e) => Number(e.name))
    .filter((fd) => holds(fd, path));
}

for (const kind of ["FdFile", "LayoutFile"] as const) {
  Deno.test(`${kind}: close() during a read waits for it; later reads are refused`, async () => {
    await withTempDir("pooled-read", async (dir) => {
      const path = `${Deno.realPathSync(dir)}/blob`;
      const bytes = new Uint8Array(SIZE).map((_, i) => (i * 7 + (i >> 12)) & 0xff);
      Deno.writeFileSync(path, bytes);
      let file: FdFile | LayoutFile;
      if (kind === "FdFile") {
        const fd = libc().open(cstr(path), O_RDONLY | O_CLOEXEC, 0);
        assert.ok(fd >= 0);
        file = new FdFile(fd, SIZE, path);
      } else {
        file = LayoutFile.open(path, "blob");
      }
      const [fd] = fdsOn(path);
      assert.ok(fd !== undefined, "the file is open");
      const reading = file.read(0, SIZE);
      file.close();
      assert.ok(holds(fd, path), "closed under a read in flight");
      assert.deepEqual(await reading, bytes);
      assert.deepEqual(fdsOn(path), [], "closed once the read ended");
      await assert.rejects(file.read(0, 1), /read after close/);
      file.close(); // again: nothing (the number may be another file's by now)
    });
  });
}
