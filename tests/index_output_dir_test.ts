/**
 * `index FILE -o DIR` mistakes: DIR a regular file is a usage error (was an internal error
 * from mkdir), and a failed index (here: the input is not a tar) leaves no empty DIR behind
 * that the run created, while a DIR that was there before stays.
 */
import assert from "node:assert/strict";
import { assertCliError, describe, runCli } from "./_support/cli.ts";
import { exists } from "./_support/wait.ts";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";

async function withWork(fn: (work: string) => Promise<void>): Promise<void> {
  const work = await Deno.makeTempDir({ prefix: "erofs-oci-index-out-" });
  try {
    const garbage = crypto.getRandomValues(new Uint8Array(4096));
    // Neither gzip's magic (1f 8b: 1 random file in 65,536 has it, seen in CI) nor zstd's.
    garbage[0] = 0x5a;
    await Deno.writeFile(`${work}/garbage.tar`, garbage);
    await fn(work);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
}

Deno.test("index -o FILE (not a directory): one usage line", async () => {
  await withWork(async (work) => {
    await Deno.writeTextFile(`${work}/afile`, "x");
    const result = await runCli(["index", `${work}/garbage.tar`, "-o", `${work}/afile`]);
    assertCliError(result, 2, /index: -o .*afile is not a directory/);
  });
});

Deno.test("index of a bad input: the -o directory it created is gone, one there before stays", async () => {
  await withWork(async (work) => {
    const result = await runCli(["index", `${work}/garbage.tar`, "-o", `${work}/new`]);
    assertCliError(result, 1, /tar/);
    assert(!exists(`${work}/new`), "index left the empty directory it created");
    // mkdir -p: the directories made above -o DIR go too.
    assertCliError(await runCli(["index", `${work}/garbage.tar`, "-o", `${work}/p/q/r`]), 1, /tar/);
    assert(!exists(`${work}/p`), "index left the directories it made above -o DIR");
    await Deno.mkdir(`${work}/old`);
    assertCliError(await runCli(["index", `${work}/garbage.tar`, "-o", `${work}/old`]), 1, /tar/);
    assert(exists(`${work}/old`), "a directory that was there before stays");
    assertCliError(
      await runCli(["index", `${work}/garbage.tar`, "-o", `${work}/old/s/t`]),
      1,
      /tar/,
    );
    assert(exists(`${work}/old`) && !exists(`${work}/old/s`), "only what the run made goes");
  });
});

Deno.test({
  name: "index -o DIR on a read-only file system: one line naming DIR, not an internal error",
  ignore: requires(root()),
  async fn() {
    await withWork(async (work) => {
      const ro = `${work}/ro`;
      await Deno.mkdir(ro);
      const mounted = await new Deno.Command("mount", {
        args: ["-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", ro],
      }).output();
      assert(mounted.success, "mount a read-only tmpfs");
      try {
        const result = await runCli(["index", `${work}/garbage.tar`, "-o", `${ro}/idx`]);
        assertCliError(result, 1, /index: cannot write .*\/ro\/idx: Read-only file system/);
        assert.doesNotMatch(result.stderr, /internal error/);
      } finally {
        await new Deno.Command("umount", { args: ["-l", ro] }).output();
      }
    });
  },
});

Deno.test("index -o DIR with symlinks planted at its file names: nothing written through them", async () => {
  await withWork(async (work) => {
    // A user who owns DIR links the names index writes (known from the input's name) to a
    // file of root's: writing by path truncated and overwrote it.
    await Deno.mkdir(`${work}/out`);
    await Deno.writeTextFile(`${work}/victim`, "root's own\n");
    for (const suffix of ["pieces", "zinfo", "meta.erofs", "index.json"]) {
      await Deno.symlink(`${work}/victim`, `${work}/out/layer.${suffix}`);
    }
    const indexed = await runCli(["index", `${FIXTURES}/layer.tar.gz`, "-o", `${work}/out`]);
    assert.equal(indexed.code, 0, describe(indexed));
    assert.equal(await Deno.readTextFile(`${work}/victim`), "root's own\n");
    for (const suffix of ["pieces", "zinfo", "meta.erofs", "index.json"]) {
      const info = await Deno.lstat(`${work}/out/layer.${suffix}`);
      assert(info.isFile, `layer.${suffix} is the index's own file, not the link`);
    }
  });
});

Deno.test("index of a FIFO: one usage line (was an internal error, 'Illegal seek')", async () => {
  await withWork(async (work) => {
    const made = await new Deno.Command("mkfifo", { args: [`${work}/pipe`] }).output();
    assert(made.success);
    const result = await runCli(["index", `${work}/pipe`, "-o", `${work}/out`]);
    assertCliError(result, 2, /index: .*pipe is not a regular file/);
  });
});

Deno.test({
  name: "index -o DIR through a user's symlink: refused, no directory made where it leads",
  ignore: requires(root()),
  async fn() {
    await withWork(async (work) => {
      // The user's directory holds a symlink to a directory of root's: mkdir -p by path made
      // root's directories there before the output was refused.
      await Deno.mkdir(`${work}/home/user`, { recursive: true });
      await Deno.mkdir(`${work}/roots`);
      await Deno.symlink(`${work}/roots`, `${work}/home/user/out`);
      const chowned = await new Deno.Command("chown", {
        args: ["-h", "65534:65534", `${work}/home/user/out`],
      }).output();
      assert(chowned.success);
      const result = await runCli([
        "index",
        `${FIXTURES}/layer.tar.gz`,
        "-o",
        `${work}/home/user/out/a/b`,
      ]);
      assertCliError(result, 1, /symlink of uid 65534/);
      assert.deepEqual([...Deno.readDirSync(`${work}/roots`)], [], "nothing made through it");
    });
  },
});

Deno.test({
  name:
    "index FILE: another user's symlink to a tar of root's is not followed (its bytes went into the zinfo)",
  ignore: requires(root(), path(`${FIXTURES}/layer.tar.gz`, "shared fixtures")),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-index-link-" });
    try {
      await Deno.mkdir(`${work}/roots`, { mode: 0o700 });
      await Deno.copyFile(`${FIXTURES}/layer.tar.gz`, `${work}/roots/secret.tar.gz`);
      await Deno.mkdir(`${work}/home`);
      await Deno.symlink(`${work}/roots/secret.tar.gz`, `${work}/home/layer.tar.gz`);
      const chowned = await new Deno.Command("chown", {
        args: ["-h", "65534:65534", `${work}/home`, `${work}/home/layer.tar.gz`],
      }).output();
      assert.ok(chowned.success);
      const result = await runCli(["index", `${work}/home/layer.tar.gz`, "-o", `${work}/out`]);
      assertCliError(result, 1, /home\/layer\.tar\.gz is a symlink of uid 65534/);
      assert.throws(() => Deno.statSync(`${work}/out`), Deno.errors.NotFound);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test("index -o DIR holding a directory where an index file goes: refused, no file moved", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-index-dirclash-" });
  try {
    await Deno.mkdir(`${dir}/layer.zinfo`);
    const result = await runCli(["index", `${FIXTURES}/layer.tar.gz`, "-o", dir]);
    assertCliError(result, 1, /cannot write .*layer\.zinfo: a directory is there/);
    // None of the others: a meta without its zinfo and record would be half an index.
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["layer.zinfo"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
