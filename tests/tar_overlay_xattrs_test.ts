/**
 * overlayfs's own xattrs (trusted.overlay.*) in a layer's tar are left out, with a warning: in
 * a stack they would bring back a directory an OCI whiteout deleted (redirect) or hide lower
 * files no `.wh.` member deletes (opaque), so a mount would differ from what the OCI rules,
 * `convert --flatten` and every scanner see. Checked with the kernel's overlay of two built
 * layers; `--literal-whiteouts` (the tar as it is, not a layer) keeps them.
 */
import assert from "node:assert/strict";
import { command, path, requires, root } from "./_support/requires.ts";
import { runCli } from "./_support/cli.ts";
import { encodeTar } from "./_support/tar_encode.ts";
import { runOk, withMountedImage, withOverlayMount } from "./_support/erofs_tree.ts";
import { withTempDir } from "./_support/temp_dir.ts";

const ignore = requires(
  root(),
  command("getfattr"),
  path("/sys/module/overlay", "overlay module"),
);
const text = (s: string) => new TextEncoder().encode(s);

const LOWER = encodeTar([
  { name: "hidden/", type: "5", mode: 0o755 },
  { name: "hidden/evil", data: text("deleted by the upper layer\n") },
  { name: "keep/", type: "5", mode: 0o755 },
  { name: "keep/k", data: text("lower keeps this\n") },
]);
const UPPER = encodeTar([
  { name: ".wh.hidden", data: new Uint8Array() },
  {
    name: "pub/",
    type: "5",
    mode: 0o755,
    pax: [["SCHILY.xattr.trusted.overlay.redirect", "/hidden"]],
  },
  { name: "pub/marker", data: text("m\n") },
  { name: "keep/", type: "5", mode: 0o755, pax: [["SCHILY.xattr.trusted.overlay.opaque", "y"]] },
  { name: "keep/new", data: text("n\n"), pax: [["SCHILY.xattr.user.kept", "yes"]] },
]);

async function listing(dir: string): Promise<string[]> {
  const out = await runOk("find", [dir, "-mindepth", "1", "-printf", "%P\\n"]);
  return out.trimEnd().split("\n").sort();
}

Deno.test({
  name: "tar layers: trusted.overlay.* xattrs left out with a warning; the stack obeys .wh. only",
  ignore,
  fn: () =>
    withTempDir("erofs-oci-overlay-xattrs-", async (work) => {
      Deno.writeFileSync(`${work}/lower.tar`, LOWER);
      Deno.writeFileSync(`${work}/upper.tar`, UPPER);
      for (const name of ["lower", "upper"]) {
        const built = await runCli(["build", `${work}/${name}.tar`, "-o", `${work}/${name}.erofs`]);
        assert.equal(built.code, 0, built.stderr);
        if (name === "upper") {
          assert.match(
            built.stderr,
            /xattr trusted\.overlay\.redirect of pub is overlayfs's own \(a layer deletes files by \.wh\. members\): left out/,
          );
          assert.match(built.stderr, /xattr trusted\.overlay\.opaque of keep is overlayfs's own/);
          assert.doesNotMatch(built.stderr, /user\.kept/);
        }
      }
      const seen = await withMountedImage(`${work}/lower.erofs`, (lower) =>
        withMountedImage(`${work}/upper.erofs`, (upper) =>
          withOverlayMount([upper, lower], `${work}/merged`, async (merged) => ({
            tree: await listing(merged),
            kept: await runOk("getfattr", [
              "--only-values",
              "-n",
              "user.kept",
              `${merged}/keep/new`,
            ]),
          }))));
      assert.deepEqual(seen.tree, ["keep", "keep/k", "keep/new", "pub", "pub/marker"]);
      assert.equal(seen.kept, "yes");

      // The tar taken as it is: kept.
      const literal = await runCli([
        "build",
        "--literal-whiteouts",
        `${work}/upper.tar`,
        "-o",
        `${work}/literal.erofs`,
      ]);
      assert.equal(literal.code, 0, literal.stderr);
      assert.doesNotMatch(literal.stderr, /left out/);
      const redirect = await withMountedImage(`${work}/literal.erofs`, (dir) =>
        runOk("getfattr", ["--only-values", "-n", "trusted.overlay.redirect", `${dir}/pub`]));
      assert.equal(redirect, "/hidden");
    }),
});
