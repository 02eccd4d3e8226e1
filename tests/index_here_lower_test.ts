/**
 * `mount --index-missing` keeps the indexes it makes for later mounts; a layer's index depends
 * on the layers below it (the directories it only implies take theirs, a whiteout with nothing
 * below is dropped), so the same layer over another base gets an index of its own. Before, the
 * second image was mounted with the first one's: its 0755 directory showed 0700 and a file its
 * upper layer deletes was there.
 */
import assert from "node:assert/strict";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { mountSandbox } from "./_support/mounts.ts";
import { path, requires, root } from "./_support/requires.ts";
import { writeOneUpperTwoBases } from "./_support/one_upper_two_bases.ts";

Deno.test({
  name:
    "mount --index-missing: the same layer over another base is indexed again, not taken from the first",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    const base = sandbox.target.replace(/\/mnt$/, "");
    try {
      await writeOneUpperTwoBases(base);
      const mounted = async (image: string) => {
        assertSuccess(
          await runCli(
            [
              "mount",
              "--index-missing",
              `oci:${base}/${image}:v1`,
              sandbox.target,
              "--backend",
              "fuse",
            ],
            { env: sandbox.env },
          ),
        );
        try {
          const etcMode = Deno.statSync(`${sandbox.target}/etc`).mode! & 0o777;
          let x: string[] | string;
          try {
            x = [...Deno.readDirSync(`${sandbox.target}/x`)].map((e) => e.name).sort();
          } catch (error) {
            x = (error as Error).name;
          }
          return { etcMode, x, newFile: Deno.readTextFileSync(`${sandbox.target}/etc/new`) };
        } finally {
          assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
        }
      };
      assert.deepEqual(await mounted("a"), { etcMode: 0o700, x: "NotFound", newFile: "new\n" });
      assert.deepEqual(await mounted("b"), { etcMode: 0o755, x: ["bar"], newFile: "new\n" });
    } finally {
      await sandbox.cleanup();
    }
  },
});
