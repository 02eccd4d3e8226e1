/**
 * `build SOURCE` run by root where SOURCE's path goes through a user's symlink to something of
 * root's: refused, nothing written. A directory SOURCE was checked without following a symlink
 * and then resolved again by path (a user who swapped a symlink in between, or a `link/` given
 * with a trailing slash, had root's 0700 directory put into a 0644 image); a tar SOURCE was
 * opened through any symlink (a user's link to root's 0600 tar: the tar's files in the image).
 */
import assert from "node:assert/strict";
import { assertCliError, runCli } from "./_support/cli.ts";
import { command, requires, root } from "./_support/requires.ts";
import { encodeTar } from "./_support/tar_encode.ts";
import { withTempDir } from "./_support/temp_dir.ts";

const NOBODY = "65534";

/** A symlink at `link` to `target`, owned by uid 65534 (as if that user had made it). */
async function usersSymlink(target: string, link: string): Promise<void> {
  Deno.symlinkSync(target, link);
  const chown = await new Deno.Command("chown", { args: ["-h", `${NOBODY}:${NOBODY}`, link] })
    .output();
  assert.ok(chown.success, new TextDecoder().decode(chown.stderr));
}

Deno.test({
  name: "build through a user's symlink to root's directory or tar: refused, no image",
  ignore: requires(root(), command("chown")),
  fn: () =>
    withTempDir("erofs-oci-build-trust-", async (work) => {
      // Root's: a 0700 directory with a secret, and a 0600 tar of it.
      Deno.mkdirSync(`${work}/secret`, { mode: 0o700 });
      Deno.chmodSync(`${work}/secret`, 0o700);
      Deno.writeTextFileSync(`${work}/secret/secret.txt`, "ROOT ONLY\n", { mode: 0o600 });
      const tar = encodeTar([{
        name: "secret.txt",
        type: "0",
        data: new TextEncoder().encode("ROOT ONLY\n"),
      }]);
      Deno.writeFileSync(`${work}/secret.tar`, tar, { mode: 0o600 });
      // The user's directory, with the user's links to them.
      Deno.mkdirSync(`${work}/user`);
      await new Deno.Command("chown", { args: [`${NOBODY}:${NOBODY}`, `${work}/user`] }).output();
      await usersSymlink(`${work}/secret`, `${work}/user/proj`);
      await usersSymlink(`${work}/secret.tar`, `${work}/user/layer.tar`);
      for (const source of ["proj/", "proj/.", "layer.tar"]) {
        const output = `${work}/out-${source.replace(/\W/g, "_")}.erofs`;
        const result = await runCli(["build", `${work}/user/${source}`, "-o", output]);
        assertCliError(result, 1, /is a symlink of uid 65534 .*not followed/);
        await assert.rejects(Deno.stat(output), `no image from ${source}`);
      }
      // The symlink itself (no trailing slash) is refused too, saying what it is.
      const direct = await runCli(["build", `${work}/user/proj`, "-o", `${work}/out.erofs`]);
      assertCliError(direct, 1, /proj is a symlink of uid 65534/);
    }),
});

Deno.test({
  name: "build --order through a user's symlink to root's file: refused, nothing of it shown",
  ignore: requires(root(), command("chown")),
  fn: () =>
    withTempDir("erofs-oci-build-order-trust-", async (work) => {
      Deno.mkdirSync(`${work}/secret`, { mode: 0o700 });
      Deno.chmodSync(`${work}/secret`, 0o700);
      Deno.writeTextFileSync(`${work}/secret/lines`, "ROOT-ONLY-LINE\n", { mode: 0o600 });
      Deno.mkdirSync(`${work}/user/tree`, { recursive: true });
      Deno.writeTextFileSync(`${work}/user/tree/a.txt`, "a\n");
      await new Deno.Command("chown", { args: ["-R", `${NOBODY}:${NOBODY}`, `${work}/user`] })
        .output();
      await usersSymlink(`${work}/secret/lines`, `${work}/user/order.txt`);
      const output = `${work}/out.erofs`;
      const result = await runCli([
        "build",
        `${work}/user/tree`,
        "-o",
        output,
        "--order",
        `${work}/user/order.txt`,
      ]);
      // It followed the link: the line was quoted in the "names no regular file" warning (and
      // a line naming a file of the tree would have ordered the image by it).
      assertCliError(result, 1, /order\.txt is a symlink of uid 65534 .*not followed/);
      assert.doesNotMatch(result.stderr, /ROOT-ONLY-LINE/);
      await assert.rejects(Deno.stat(output));
    }),
});
