/**
 * Where the file system has no unnamed files (O_TMPFILE: NFS, vfat, older FUSE), `build` writes
 * its image under a hidden temporary name beside -o and renames it once complete. A build killed
 * there (SIGKILL, power loss) left `.NAME.XXXXXXXX.tmp` for good: nothing else has its name. The
 * next write of the same file removes those nobody wrote to within the hour, and keeps a recent
 * one (it may be a build still running).
 */
import assert from "node:assert/strict";
import { command, REPO_ROOT, requires } from "./_support/requires.ts";

Deno.test({
  name:
    "build without O_TMPFILE: an abandoned temporary image beside -o is removed, a recent one kept",
  ignore: requires(command("python3")) || Deno.build.arch !== "x86_64",
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-no-tmpfile-" });
    try {
      await Deno.mkdir(`${work}/src`);
      await Deno.writeTextFile(`${work}/src/a.txt`, "a\n");
      const abandoned = `${work}/.x.erofs.0123abcd.tmp`;
      const recent = `${work}/.x.erofs.89abcdef.tmp`;
      const someoneElses = `${work}/.y.erofs.0123abcd.tmp`;
      for (const file of [abandoned, recent, someoneElses]) await Deno.writeTextFile(file, "old");
      const twoHoursAgo = new Date(Date.now() - 2 * 3600_000);
      for (const file of [abandoned, someoneElses]) {
        await Deno.utime(file, twoHoursAgo, twoHoursAgo);
      }
      const built = await new Deno.Command("python3", {
        args: [
          `${REPO_ROOT}/tests/_support/refuse_syscall.py`,
          "tmpfile",
          `${REPO_ROOT}/scripts/erofs-oci-dev`,
          "build",
          `${work}/src`,
          "-o",
          `${work}/x.erofs`,
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.equal(built.code, 0, new TextDecoder().decode(built.stderr));
      const names = [...Deno.readDirSync(work)].map((e) => e.name).sort();
      assert.deepEqual(names, [".x.erofs.89abcdef.tmp", ".y.erofs.0123abcd.tmp", "src", "x.erofs"]);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});
