/**
 * openDirTrusted: a directory path resolved without following symlinks other users made (a
 * user who owns a directory on a path root was given could otherwise choose where root writes
 * or mounts); root's own symlinks (/var/run -> /run) and the caller's are followed.
 */
import assert from "node:assert/strict";
import {
  type MadeDir,
  makeDirTrusted,
  openDirTrusted,
  statIdentity,
  UntrustedSymlinkError,
} from "../ffi/path_resolve.ts";
import { closeFd, Errno, SysError } from "../ffi/libc.ts";
import { requires, root } from "./_support/requires.ts";

function sameDir(fd: number, path: string): boolean {
  return statIdentity(fd).ino === BigInt(Deno.statSync(path).ino!);
}

function opened(path: string): number {
  return openDirTrusted(path);
}

Deno.test({
  name: "openDirTrusted: root's symlinks followed (relative, absolute, ..), a user's refused",
  ignore: requires(root()),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-trusted-" });
    try {
      await Deno.mkdir(`${work}/real/inner`, { recursive: true });
      await Deno.mkdir(`${work}/home/user`, { recursive: true });
      await Deno.symlink("real", `${work}/relative`);
      await Deno.symlink(`${work}/real`, `${work}/absolute`);
      await Deno.symlink("../real/inner", `${work}/home/up`);
      for (const path of [`${work}/relative/inner`, `${work}/absolute/inner`, `${work}/home/up`]) {
        const fd = opened(path);
        try {
          assert(sameDir(fd, `${work}/real/inner`), path);
        } finally {
          closeFd(fd);
        }
      }
      const dots = opened(`${work}/home/user/../../real/./inner/..`);
      try {
        assert(sameDir(dots, `${work}/real`));
      } finally {
        closeFd(dots);
      }

      // A symlink a user made (lchown: the link itself) is not followed, wherever it is.
      await Deno.symlink(`${work}/real`, `${work}/home/user/out`);
      const chowned = await new Deno.Command("chown", {
        args: ["-h", "65534:65534", `${work}/home/user/out`],
      }).output();
      assert(chowned.success);
      for (const path of [`${work}/home/user/out`, `${work}/home/user/out/inner`]) {
        assert.throws(
          () => opened(path),
          (error: unknown) =>
            error instanceof UntrustedSymlinkError &&
            error.message.includes(`${work}/home/user/out is a symlink of uid 65534`),
        );
      }

      // Not a directory, missing, a loop: the system's refusal.
      await Deno.writeTextFile(`${work}/file`, "x");
      await Deno.symlink("loop", `${work}/loop`);
      for (
        const [path, code] of [
          [`${work}/file`, Errno.ENOTDIR],
          [`${work}/missing`, Errno.ENOENT],
          [`${work}/loop`, Errno.ELOOP],
        ] as const
      ) {
        assert.throws(
          () => opened(path),
          (error: unknown) => error instanceof SysError && error.errno === code,
          path,
        );
      }
    } finally {
      await Deno.remove(`${work}`, { recursive: true });
    }
  },
});

Deno.test({
  name: "makeDirTrusted: mkdir -p made in each directory's descriptor, a user's symlink refused",
  ignore: requires(root()),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-trusted-" });
    try {
      // Missing levels made, existing ones and root's symlinks gone through.
      await Deno.mkdir(`${work}/real`);
      await Deno.symlink("real", `${work}/link`);
      const made: MadeDir[] = [];
      const fd = makeDirTrusted(`${work}/link/a/b/c`, 0o750, made);
      try {
        assert(sameDir(fd, `${work}/real/a/b/c`));
        // What it made, top first, each with a descriptor of the directory it is in.
        assert.deepEqual(made.map((m) => m.name), ["a", "b", "c"]);
        assert(sameDir(made[0].parentFd, `${work}/real`));
        assert(sameDir(made[2].parentFd, `${work}/real/a/b`));
      } finally {
        closeFd(fd);
        for (const m of made) closeFd(m.parentFd);
      }
      const none: MadeDir[] = [];
      closeFd(makeDirTrusted(`${work}/real/a/b/c`, undefined, none)); // already there
      assert.deepEqual(none, []);

      // A user's symlink on the way: refused, nothing made where it leads.
      await Deno.mkdir(`${work}/home/user`, { recursive: true });
      await Deno.mkdir(`${work}/roots`);
      await Deno.symlink(`${work}/roots`, `${work}/home/user/out`);
      const chowned = await new Deno.Command("chown", {
        args: ["-h", "65534:65534", `${work}/home/user/out`],
      }).output();
      assert(chowned.success);
      assert.throws(
        () => makeDirTrusted(`${work}/home/user/out/made`),
        (error: unknown) => error instanceof UntrustedSymlinkError,
      );
      assert.deepEqual([...Deno.readDirSync(`${work}/roots`)], [], "nothing made through it");

      // A file on the way: the system's refusal.
      Deno.writeTextFileSync(`${work}/file`, "");
      assert.throws(
        () => makeDirTrusted(`${work}/file/below`),
        (error: unknown) => error instanceof SysError && error.errno === Errno.ENOTDIR,
      );
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});
