/**
 * POSIX ACLs and xattr names a tar can carry but no file system can hold. An ACL the kernel
 * refuses when it reads it made every permission check on the file fail (root's too) and a NUL
 * in an xattr name made listxattr show names getxattr cannot find: both refused, naming the
 * member. An ACL is stored as an extraction leaves it (the ACL, then the member's mode: chmod),
 * so it cannot grant what the mode denies; `--acls` text ACLs (SCHILY.acl.access) are stored
 * too (they were left out without a word). Checked by the kernel, as another user.
 */
import assert from "node:assert/strict";
import { command, requires, root } from "./_support/requires.ts";
import { runCli } from "./_support/cli.ts";
import { encodeTar } from "./_support/tar_encode.ts";
import { assertOneLineError, run, withMountedImage } from "./_support/erofs_tree.ts";
import { withTempDir } from "./_support/temp_dir.ts";
import { ACL_TAG, ACL_UNDEFINED_ID, encodeAcl } from "../lib/tar/acl.ts";

const ignore = requires(root(), command("setpriv"), command("getfattr"));
const text = (s: string) => new TextEncoder().encode(s);
const obj = (tag: number, perm: number) => ({ tag, perm, id: ACL_UNDEFINED_ID });
const { USER_OBJ, GROUP_OBJ, GROUP, MASK, OTHER } = ACL_TAG;

/** Whether uid `uid` (no groups) can read `file`. */
async function readableBy(uid: number, file: string): Promise<boolean> {
  const ids = ["--reuid", String(uid), "--regid", String(uid), "--clear-groups"];
  return (await run("setpriv", [...ids, "cat", file])).code === 0;
}

Deno.test({
  name: "tar ACLs: one the kernel refuses, or a NUL in an xattr name, is refused naming the member",
  ignore,
  fn: () =>
    withTempDir("erofs-oci-tar-acl-", async (work) => {
      const version1 = encodeAcl([obj(USER_OBJ, 6), obj(GROUP_OBJ, 4), obj(OTHER, 4)]);
      version1[0] = 1;
      const cases: [string, [string, string | Uint8Array], RegExp][] = [
        ["version", ["SCHILY.xattr.system.posix_acl_access", version1], /ACL has version 1/],
        [
          "truncated",
          ["SCHILY.xattr.system.posix_acl_access", version1.subarray(0, 10)],
          /not a header and whole 8-byte entries/,
        ],
        ["nul", ["SCHILY.xattr.user.x\0security.capability", "v"], /holds a NUL byte/],
        [
          "text",
          ["SCHILY.acl.access", "user:joe:rwx,user::rwx,group::r-x,other::---"],
          /"joe" without a numeric id/,
        ],
      ];
      for (const [name, record, why] of cases) {
        Deno.writeFileSync(
          `${work}/${name}.tar`,
          encodeTar([{ name: "f", data: text("x"), pax: [record] }]),
        );
        const out = `${work}/${name}.erofs`;
        const built = await runCli(["build", `${work}/${name}.tar`, "-o", out]);
        assert.equal(built.code, 1, `${name}: ${built.stderr}`);
        assertOneLineError(built.stderr);
        assert.match(built.stderr, why, name);
        if (name !== "text") assert.match(built.stderr, /tar member "f"/, name);
        assert.throws(
          () => Deno.statSync(out),
          Deno.errors.NotFound,
          `${name}: output left behind`,
        );
      }
    }),
});

Deno.test({
  name:
    "tar ACLs: stored as chmod after the ACL leaves them; --acls text ACLs kept; kernel-checked",
  ignore,
  fn: () =>
    withTempDir("erofs-oci-tar-acl-", async (work) => {
      const namedGroup = encodeAcl([
        obj(USER_OBJ, 6),
        obj(GROUP_OBJ, 0),
        { tag: GROUP, perm: 4, id: 4321 },
        obj(MASK, 4),
        obj(OTHER, 0),
      ]);
      // The ACL grants others rwx, the member's mode 0670 denies them.
      const wide = encodeAcl([obj(USER_OBJ, 6), obj(GROUP_OBJ, 7), obj(OTHER, 7)]);
      const tar = encodeTar([
        {
          name: "wide",
          mode: 0o670,
          data: text("w\n"),
          pax: [["SCHILY.xattr.system.posix_acl_access", wide]],
        },
        {
          name: "named",
          mode: 0o640,
          data: text("n\n"),
          pax: [[
            "SCHILY.acl.access",
            "user::rw-\nuser:1234:r--\ngroup::r--\nmask::r--\nother::---",
          ]],
        },
        {
          // GNU tar --acls --xattrs: the text ACL (a group by name only) before the binary one
          // (its id): the binary one is taken, the text one not parsed (it was refused).
          name: "both",
          mode: 0o640,
          data: text("b\n"),
          pax: [
            ["SCHILY.acl.access", "user::rw-,group::---,group:staff:r--,mask::r--,other::---"],
            ["SCHILY.xattr.system.posix_acl_access", namedGroup],
          ],
        },
        {
          // As `tar --acls` writes a directory with a default ACL only: its access ACL is the
          // mode again, which an extraction does not keep (the kernel stores only the mode).
          name: "ddir/",
          type: "5",
          mode: 0o755,
          pax: [
            ["SCHILY.acl.access", "user::rwx,group::r-x,other::r-x"],
            ["SCHILY.acl.default", "user::rwx,group::r-x,other::r-x"],
          ],
        },
        {
          name: "dflt",
          mode: 0o644,
          data: text("d\n"),
          pax: [["SCHILY.acl.default", "user::rwx,group::r-x,other::r-x"]],
        },
      ]);
      Deno.writeFileSync(`${work}/acl.tar`, tar);
      const built = await runCli(["build", `${work}/acl.tar`, "-o", `${work}/acl.erofs`]);
      assert.equal(built.code, 0, built.stderr);
      assert.match(
        built.stderr,
        /xattr system\.posix_acl_default of dflt is a default ACL on a non-directory/,
      );
      const seen = await withMountedImage(`${work}/acl.erofs`, async (dir) => ({
        wideByOther: await readableBy(555, `${dir}/wide`),
        namedByUser: await readableBy(1234, `${dir}/named`),
        namedByOther: await readableBy(555, `${dir}/named`),
        namedAcl: (await run("getfattr", ["-n", "system.posix_acl_access", `${dir}/named`])).code,
        bothByGroup: await readableBy(4321, `${dir}/both`),
        bothByOther: await readableBy(555, `${dir}/both`),
        mode: (Deno.statSync(`${dir}/wide`).mode! & 0o777).toString(8),
        ddirAcls: (await run("getfattr", ["-d", "-m", "system.posix_acl", `${dir}/ddir`])).stdout
          .split("\n").filter((line) => line.startsWith("system.")).map((line) =>
            line.split("=")[0]
          ),
      }));
      assert.deepEqual(seen, {
        wideByOther: false, // the mode, not the ACL's other::rwx
        namedByUser: true, // the text ACL is there
        namedByOther: false,
        namedAcl: 0,
        bothByGroup: true, // the binary ACL's group 4321
        bothByOther: false,
        mode: "670",
        ddirAcls: ["system.posix_acl_default"],
      });
    }),
});
