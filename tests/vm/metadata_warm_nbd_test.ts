/**
 * Kernel NBD: a metadata walk (a cold `find`) makes the server read the layer's pinned metadata
 * pages into the device's page cache (lib/nbd/page_cache_warm.ts), so the rest of the walk, and
 * any walk after it, reads them without a READ each. Checked by walking a quarter of the tree,
 * then the whole of it, with the read-ahead and without (EROFS_OCI_METADATA_READAHEAD=0): the
 * inodes of the directories never visited before must come from the page cache.
 */
import assert from "node:assert/strict";
import { assertSuccess, runCli } from "../_support/cli.ts";
import { mountSandbox } from "../_support/mounts.ts";
import { startRegistry } from "../_support/registry.ts";
import { dropCaches, NOT_IN_VM } from "../_support/vm.ts";
import { MKFS } from "../_support/verify_image.ts";

const DIRECTORIES = 300;
/** Empty files per directory: few enough for the entries to be inline in the directory's inode. */
const FILES = 20;

/** Entries `find DIRS…` prints (the DIRS themselves included). */
async function findCount(...dirs: string[]): Promise<number> {
  const out = await new Deno.Command("find", { args: dirs, stdout: "piped" }).output();
  assert.ok(out.success, `find ${dirs.join(" ")} failed`);
  return new TextDecoder().decode(out.stdout).split("\n").filter(Boolean).length;
}

Deno.test({
  name: "vm nbd: a metadata walk reads the pinned pages ahead into the page cache",
  ignore: NOT_IN_VM,
  async fn() {
    const registry = await startRegistry({ auth: "none" });
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-warm-" });
    const sandbox = await mountSandbox();
    const cli = (args: string[]) => runCli(args, { env: sandbox.env, timeoutMs: 180_000 });
    try {
      // Small directories, as most are: their entries inline in their inodes, which (and the
      // files' inodes between them) are the pinned metadata a `find` reads.
      for (let d = 0; d < DIRECTORIES; d++) {
        const dir = `${work}/src/d${String(d).padStart(3, "0")}`;
        Deno.mkdirSync(dir, { recursive: true });
        Deno.writeTextFileSync(`${dir}/a.txt`, `file a of ${d}\n`);
        for (let f = 1; f < FILES; f++) Deno.writeFileSync(`${dir}/f${f}`, new Uint8Array());
      }
      const made = await new Deno.Command(MKFS, {
        args: ["--quiet", "-T0", `${work}/image.erofs`, `${work}/src`],
      }).output();
      assert.ok(made.success, new TextDecoder().decode(made.stderr));
      const ref = `${registry.host}/warm/tree:v1`;
      assertSuccess(await cli(["push", ref, `${work}/image.erofs`, "--plain-http"]));
      const warms = (logs = sandbox.serverLogs()) =>
        logs.match(/read ahead into the page cache/g)?.length ?? 0;
      /** Walks a quarter of the tree, then all of it; what the second walk asked the device for. */
      const walkAfterWalk = async (readahead: boolean) => {
        const env = readahead ? sandbox.env : { ...sandbox.env, EROFS_OCI_METADATA_READAHEAD: "0" };
        const cliWith = (args: string[]) => runCli(args, { env, timeoutMs: 180_000 });
        const requested = async () => {
          await new Promise((resolve) => setTimeout(resolve, 300)); // the reader's reports
          const listed = await cliWith(["list", "--json"]);
          assertSuccess(listed);
          return JSON.parse(listed.stdout)[0].layers[0].bytesRequested as number;
        };
        assertSuccess(
          await cliWith(["mount", ref, sandbox.target, "--plain-http", "--backend", "nbd"]),
        );
        await dropCaches();
        // A walk (one `find`: a walk's rate of reads) of the first quarter of the directories...
        const quarter = Array.from(
          { length: DIRECTORIES / 4 },
          (_, d) => `${sandbox.target}/d${String(d).padStart(3, "0")}`,
        );
        assert.equal(await findCount(...quarter), (1 + FILES) * DIRECTORIES / 4);
        // (without readahead: time enough for a warm that should not happen to show)
        for (let waited = 0; waited < (readahead ? 30_000 : 1000); waited += 100) {
          if (warms() > 0) break;
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
        // ...then of everything: the other three quarters were never read by the kernel before.
        const before = await requested();
        assert.equal(await findCount(sandbox.target), 1 + (1 + FILES) * DIRECTORIES);
        const during = (await requested()) - before;
        assert.equal(
          await Deno.readTextFile(`${sandbox.target}/d${DIRECTORIES - 1}/a.txt`),
          `file a of ${DIRECTORIES - 1}\n`,
        );
        const logs = sandbox.serverLogs(); // gone with the mount
        assertSuccess(await cliWith(["umount", sandbox.target]));
        return { during, warms: warms(logs), logs };
      };
      const plain = await walkAfterWalk(false);
      const warmed = await walkAfterWalk(true);
      assert.equal(plain.warms, 0, `read ahead though turned off:\n${plain.logs}`);
      assert.ok(warmed.warms >= 1, `no read-ahead after a walk:\n${warmed.logs}`);
      console.log(
        `full walk after the first: ${plain.during} bytes asked, ${warmed.during} with the read-ahead`,
      );
      assert.ok(plain.during >= 8 * 4096, "the control's second walk read too little to tell");
      assert.ok(
        warmed.during * 4 <= plain.during,
        `the full walk asked for ${warmed.during} bytes after the read-ahead, ${plain.during} ` +
          `without\n${warmed.logs}`,
      );
    } finally {
      await sandbox.cleanup();
      await registry.stop();
      await Deno.remove(work, { recursive: true });
    }
  },
});
