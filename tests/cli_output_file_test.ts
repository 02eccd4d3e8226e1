/**
 * `-o FILE` mistakes of pull and build: a directory, a device node, FIFO or symlink, or the
 * command's own input is refused up front (exit 2, one line), and a file system that refuses the
 * file (here read-only) gives one line naming it. Before, the directory was an internal error
 * after the whole download or build, and the others were replaced by the output.
 */
import assert from "node:assert/strict";
import { assertCliError, runCli } from "./_support/cli.ts";
import { encodeTar } from "./_support/tar_encode.ts";
import { command, FIXTURES, REPO_ROOT, requires, root } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";

async function withTmpfs(options: string, fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-tmpfs-" });
  try {
    const mounted = await new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", options, "erofs-oci-test", dir],
    }).output();
    if (!mounted.success) throw new Error(new TextDecoder().decode(mounted.stderr));
    try {
      await fn(dir);
    } finally {
      await new Deno.Command("umount", { args: [dir] }).output();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test({
  name: "pull -o DIR or onto a read-only file system: one line, no internal error",
  ignore: requires(root(), command("docker-registry"), command("mount")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const image = `${registry.host}/out/app:v1`;
    const pushed = await runCli(["push", image, `${FIXTURES}/basic.erofs`, "--plain-http"]);
    if (pushed.code !== 0) throw new Error(pushed.stderr);
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-pull-out-" });
    try {
      const pull = (output: string) =>
        runCli(["pull", image, "--layer", "0", "-o", output, "--plain-http"]);
      assertCliError(await pull(work), 2, /pull: -o .* is a directory/);
      await withTmpfs("ro,size=1m", async (dir) => {
        assertCliError(await pull(`${dir}/layer.erofs`), 1, /cannot write .*Read-only/);
      });
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test("build -o DIR: refused before building, one line", async () => {
  const work = await Deno.makeTempDir({ prefix: "erofs-oci-build-out-" });
  try {
    await Deno.mkdir(`${work}/tree`);
    await Deno.writeTextFile(`${work}/tree/file`, "x");
    await Deno.mkdir(`${work}/out`);
    assertCliError(
      await runCli(["build", `${work}/tree`, "-o", `${work}/out`]),
      2,
      /build: -o .* is a directory/,
    );
    // A missing directory on the way: said before the work, not after it.
    assertCliError(
      await runCli(["build", `${work}/tree`, "-o", `${work}/no-such-dir/x.erofs`]),
      2,
      /build: -o .*no-such-dir\/x\.erofs: directory .*no-such-dir does not exist/,
    );
    assertCliError(
      await runCli(["build", `${work}/tree`, "-o", `${work}/tree/file/x.erofs`]),
      2,
      /build: -o .*: .*tree\/file is not a directory/,
    );
    // Said after the whole scan before ("cannot write nodir/: No such file or directory").
    assertCliError(
      await runCli(["build", `${work}/tree`, "-o", `${work}/nodir/`]),
      2,
      /build: -o .*nodir\/ names a directory/,
    );
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test({
  name: "pull/build -o a device node, FIFO or symlink: refused, the node left as it was",
  ignore: requires(root(), command("docker-registry"), command("mknod")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const image = `${registry.host}/out/nodes:v1`;
    const pushed = await runCli(["push", image, `${FIXTURES}/basic.erofs`, "--plain-http"]);
    if (pushed.code !== 0) throw new Error(pushed.stderr);
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-out-nodes-" });
    try {
      await Deno.mkdir(`${work}/tree`);
      await Deno.writeTextFile(`${work}/tree/file`, "x");
      const made = await new Deno.Command("mknod", { args: [`${work}/null`, "c", "1", "3"] })
        .output();
      if (!made.success) throw new Error(new TextDecoder().decode(made.stderr));
      await new Deno.Command("mkfifo", { args: [`${work}/fifo`] }).output();
      await Deno.writeTextFile(`${work}/target`, "kept");
      await Deno.symlink(`${work}/target`, `${work}/link`);
      const pull = (output: string) =>
        runCli(["pull", image, "--layer", "0", "-o", output, "--plain-http"]);
      const build = (output: string) => runCli(["build", `${work}/tree`, "-o", output]);
      for (
        const [run, name, kind] of [
          [pull, "null", /a character device, not a regular file/],
          [build, "null", /a character device/],
          [pull, "fifo", /a FIFO, not a regular file/],
          [build, "link", /a symlink, not a regular file/],
          [pull, "link", /a symlink/],
        ] as const
      ) {
        assertCliError(await run(`${work}/${name}`), 2, kind);
      }
      assert.ok(Deno.lstatSync(`${work}/null`).isCharDevice, "the device node is still there");
      assert.ok(Deno.lstatSync(`${work}/fifo`).isFifo, "the FIFO is still there");
      assert.ok(Deno.lstatSync(`${work}/link`).isSymlink, "the symlink is still there");
      assert.equal(await Deno.readTextFile(`${work}/target`), "kept");
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test("build -o the input tar: refused, the tar left as it was", async () => {
  const work = await Deno.makeTempDir({ prefix: "erofs-oci-build-same-" });
  try {
    const tar = `${work}/layer.tar`;
    await Deno.writeFile(
      tar,
      encodeTar([{ name: "hello.txt", type: "0", data: new TextEncoder().encode("hi\n") }]),
    );
    const before = await Deno.readFile(tar);
    assertCliError(
      await runCli(["build", tar, "-o", tar]),
      2,
      /build: -o .*layer\.tar is the input/,
    );
    // Also through another name for the same file.
    await Deno.link(tar, `${work}/same.tar`);
    assertCliError(await runCli(["build", `${work}/same.tar`, "-o", tar]), 2, /is the input/);
    assert.deepEqual(await Deno.readFile(tar), before);
    // And as standard input (`build - -o X < X` replaced X with its image).
    const piped = await new Deno.Command("sh", {
      args: ["-c", 'exec "$0" build - -o "$1" < "$1"', `${REPO_ROOT}/scripts/erofs-oci-dev`, tar],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(piped.stderr);
    assert.equal(piped.code, 2, stderr);
    assert.match(stderr, /build: -o .*layer\.tar is the input \(standard input\)/);
    assert.deepEqual(await Deno.readFile(tar), before);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test({
  name: "two pulls to one -o at once: each writes its own partial file, the result is whole",
  ignore: requires(command("docker-registry")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const images = ["basic.erofs", "layer1.erofs"].map((name, i) => ({
      image: `${registry.host}/out/both${i}:v1`,
      file: `${FIXTURES}/${name}`,
    }));
    for (const { image, file } of images) {
      const pushed = await runCli(["push", image, file, "--plain-http"]);
      if (pushed.code !== 0) throw new Error(pushed.stderr);
    }
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-pull-both-" });
    try {
      const output = `${work}/layer.erofs`;
      const results = await Promise.all(
        images.map(({ image }) =>
          runCli(["pull", image, "--layer", "0", "-o", output, "--plain-http"])
        ),
      );
      for (const result of results) assert.equal(result.code, 0, result.stderr);
      const got = await Deno.readFile(output);
      const whole = await Promise.all(images.map(({ file }) => Deno.readFile(file)));
      assert.ok(
        whole.some((bytes) => bytes.length === got.length && bytes.every((b, i) => b === got[i])),
        "the output is one of the two layers, whole",
      );
      assert.deepEqual([...Deno.readDirSync(work)].map((e) => e.name), ["layer.erofs"]);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test({
  name: "a full or read-only file system, a directory to push: one line naming the path",
  ignore: requires(root(), command("mount")),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-out-refused-" });
    try {
      await Deno.mkdir(`${work}/tree`);
      await Deno.writeFile(`${work}/tree/big`, crypto.getRandomValues(new Uint8Array(65536)));
      for (let i = 1; i < 40; i++) {
        await Deno.copyFile(`${work}/tree/big`, `${work}/tree/big${i}`);
      }
      const tar = await new Deno.Command("tar", {
        args: ["-C", `${work}/tree`, "-czf", `${work}/layer.tar.gz`, "."],
      }).output();
      assert.ok(tar.success);
      await withTmpfs("ro,size=1m", async (dir) => {
        const result = await runCli(["index", `${work}/layer.tar.gz`, "-o", dir]);
        assertCliError(
          result,
          1,
          // Its work directory in DIR is the first thing it writes.
          new RegExp(`^erofs-oci: index: cannot write ${dir}: Read-only file system$`),
        );
        assert.doesNotMatch(result.stderr, /internal error/);
        // Before the traced command runs, not after (its trace was lost).
        const traced = await runCli([
          "trace",
          `${FIXTURES}/basic.erofs`,
          "-o",
          `${dir}/t.json`,
          "--",
          "touch",
          `${work}/ran`,
        ], { timeoutMs: 60_000 });
        assertCliError(
          traced,
          1,
          /^erofs-oci: trace: cannot write .*t\.json: Read-only file system/,
        );
        await assert.rejects(Deno.stat(`${work}/ran`), "the traced command was not run");
        const unnamed = [
          "trace",
          `${FIXTURES}/basic.erofs`,
          "-o",
          "",
          "--",
          "touch",
          `${work}/ran`,
        ];
        assertCliError(await runCli(unnamed), 2, /trace: --output was given an empty value/);
        await assert.rejects(Deno.stat(`${work}/ran`), "the traced command was not run");
      });
      await withTmpfs("size=1m", async (dir) => {
        const result = await runCli(["build", `${work}/tree`, "-o", `${dir}/x.erofs`]);
        assertCliError(result, 1, /cannot write .*x\.erofs: No space left on device/);
        assert.deepEqual([...Deno.readDirSync(dir)], [], "nothing left on the full file system");
      });
      const pushed = await runCli(["push", "127.0.0.1:1/x:v1", `${work}/tree`]);
      assertCliError(pushed, 1, /tree is a directory$/);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test({
  name: "build of a tar.gz onto a full file system: one line naming where the tar's data went",
  ignore: requires(root(), command("mount")),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-spool-full-" });
    try {
      // Random data does not compress: the spool of the gzip's file data needs its 3 MiB.
      const data = new Uint8Array(3 << 20);
      for (let at = 0; at < data.length; at += 65536) {
        crypto.getRandomValues(data.subarray(at, at + 65536));
      }
      const gz = `${work}/layer.tar.gz`;
      const zipped = new Blob([new Uint8Array(encodeTar([{ name: "random.bin", data }]))]).stream()
        .pipeThrough(new CompressionStream("gzip"));
      Deno.writeFileSync(gz, new Uint8Array(await new Response(zipped).arrayBuffer()));
      await withTmpfs("size=1m", async (dir) => {
        const built = await runCli(["build", gz, "-o", `${dir}/out.erofs`]);
        assertCliError(
          built,
          1,
          /cannot hold the tar's file data in .* while building: No space left on device/,
        );
        assert.match(
          built.stderr,
          /hint: .*free space there, or write OUT on a larger file system/,
        );
        assert.deepEqual([...Deno.readDirSync(dir)], [], "nothing left behind");
      });
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test({
  name: "build -o under a symlink another user made: refused, nothing written where it led",
  ignore: requires(root()),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-out-symlink-" });
    try {
      // A user's directory holding a symlink of theirs to a directory of root's: root asked
      // to write into the user's directory must not write into root's.
      await Deno.mkdir(`${work}/roots`);
      await Deno.mkdir(`${work}/home`);
      await Deno.mkdir(`${work}/tree`);
      await Deno.writeTextFile(`${work}/tree/hello.txt`, "hi\n");
      await Deno.symlink(`${work}/roots`, `${work}/home/d`);
      const chowned = await new Deno.Command("chown", {
        args: ["-h", "65534:65534", `${work}/home/d`],
      }).output();
      assert(chowned.success);
      const built = await runCli(["build", `${work}/tree`, "-o", `${work}/home/d/x.erofs`]);
      assertCliError(built, 1, /home\/d is a symlink of uid 65534 .*not followed/);
      assert.deepEqual([...Deno.readDirSync(`${work}/roots`)], [], "written through the link");
      // A tar.gz is spooled next to the output: not through the link either, not even a file
      // made and removed at once (the directory's mtime would move).
      const tarGz = `${work}/layer.tar.gz`;
      const tar = encodeTar([{ name: "hello.txt", data: new TextEncoder().encode("hi\n") }]);
      await Deno.writeFile(
        tarGz,
        new Uint8Array(
          await new Response(
            new Blob([new Uint8Array(tar)]).stream().pipeThrough(new CompressionStream("gzip")),
          ).arrayBuffer(),
        ),
      );
      await Deno.utime(`${work}/roots`, 1_000_000, 1_000_000);
      const spooled = await runCli(["build", tarGz, "-o", `${work}/home/d/x.erofs`]);
      assertCliError(spooled, 1, /home\/d is a symlink of uid 65534 .*not followed/);
      assert.equal(Deno.statSync(`${work}/roots`).mtime?.getTime(), 1_000_000_000, "spooled there");
      // Root's own symlinks are followed.
      await Deno.symlink(`${work}/roots`, `${work}/home/mine`);
      const mine = await runCli(["build", `${work}/tree`, "-o", `${work}/home/mine/x.erofs`]);
      assert.equal(mine.code, 0, mine.stderr);
      assert(Deno.statSync(`${work}/roots/x.erofs`).isFile);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});
