/**
 * Index files and `build --order` given as something other than a regular file of bounded size:
 * /dev/zero (through a symlink in --index DIR, or named directly), a FIFO, a sparse file larger
 * than any index. Before, each was read whole: gigabytes of memory in seconds, or a hang.
 */
import assert from "node:assert/strict";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import { assertCliError, assertSuccess, runCli } from "./_support/cli.ts";
import { mountSandbox, mountsBelow } from "./_support/mounts.ts";
import { withTempDir } from "./_support/temp_dir.ts";

const ignore = requires(
  root(),
  path("/dev/fuse"),
  path(`${FIXTURES}/layer.tar.gz`, "shared fixtures"),
);
const QUICK = { timeoutMs: 30_000 };

Deno.test({
  name: "index files that are devices, FIFOs or too large are refused before any read",
  ignore,
  fn: () =>
    withTempDir("erofs-oci-index-hostile-", async (work) => {
      const gz = `${work}/layer.tar.gz`;
      Deno.copyFileSync(`${FIXTURES}/layer.tar.gz`, gz);
      assertSuccess(await runCli(["index", gz, "-o", `${work}/good`], QUICK));
      await Deno.mkdir(`${work}/zero`);
      for (const entry of Deno.readDirSync(`${work}/good`)) {
        Deno.copyFileSync(`${work}/good/${entry.name}`, `${work}/zero/${entry.name}`);
      }
      Deno.removeSync(`${work}/zero/layer.zinfo`);
      Deno.symlinkSync("/dev/zero", `${work}/zero/layer.zinfo`);
      const fifo = `${work}/fifo`;
      assert.ok((await new Deno.Command("mkfifo", { args: [fifo] }).output()).success);
      const sparse = `${work}/huge.meta.erofs`;
      const file = Deno.openSync(sparse, { create: true, write: true });
      file.truncateSync(1.5 * 2 ** 30);
      file.close();
      const sandbox = await mountSandbox();
      try {
        const mount = (args: string[]) =>
          runCli(["mount", "--backend", "fuse", ...args, gz, sandbox.target], {
            env: sandbox.env,
            ...QUICK,
          });
        assertCliError(
          await mount(["--index", `${work}/zero`]),
          1,
          /index file .*zero\/layer\.zinfo is not a regular file/,
        );
        const zinfo = ["--zinfo", `${work}/good/layer.zinfo`];
        assertCliError(
          await mount(["--tarindex", "/dev/zero", ...zinfo]),
          1,
          /--tarindex \/dev\/zero is not a regular file/,
        );
        assertCliError(
          await mount(["--tarindex", `${FIXTURES}/layer.meta.erofs`, "--zinfo", fifo]),
          1,
          /--zinfo .*fifo is not a regular file/,
        );
        assertCliError(
          await mount(["--tarindex", sparse, ...zinfo]),
          1,
          /index file .*huge\.meta\.erofs is larger than 1073741824 bytes/,
        );
        assert.deepEqual(mountsBelow(sandbox.target), []);
      } finally {
        await sandbox.cleanup();
      }
      await Deno.mkdir(`${work}/tree`);
      assertCliError(
        await runCli(["build", `${work}/tree`, "-o", `${work}/x.erofs`, "--order", "/dev/zero"]),
        1,
        /--order file \/dev\/zero is not a regular file/,
      );
    }),
});
