/**
 * `-o FILE` mistakes of pull and build: a directory is refused up front (exit 2, one line), and
 * a file system that refuses the file (here read-only) gives one line naming it. Before, both
 * were internal errors, the directory only after the whole download or build.
 */
import { assertCliError, runCli } from "./_support/cli.ts";
import { command, FIXTURES, requires, root } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";

async function withReadOnlyDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-ro-" });
  try {
    const mounted = await new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", "ro,size=1m", "erofs-oci-test", dir],
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
      await withReadOnlyDir(async (dir) => {
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
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});
