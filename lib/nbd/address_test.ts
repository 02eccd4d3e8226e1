/**
 * The unix socket files of `serve --listen` and `--metrics-listen` (listenUnix, claimSocketPath)
 * in directories other users could change. Before: a chmod by name after the socket was linked
 * into place followed a symlink swapped in for it (root made any file 0600), a dead socket was
 * removed through another user's symlinked directory, and a socket went into a directory of
 * another user's, who could replace it.
 */
import assert from "node:assert/strict";
import { claimSocketPath, listenUnix } from "./address.ts";
import { UserError } from "../errors.ts";
import { requires, root } from "../../tests/_support/requires.ts";

const NOBODY = 65534;

async function withDir(fn: (dir: string) => Promise<void> | void): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-socket-path-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A socket file at `path` nobody accepts on (left by a killed server). */
function deadSocket(path: string): void {
  const listener = Deno.listen({ transport: "unix", path: `${path}.live` });
  Deno.linkSync(`${path}.live`, path);
  listener.close(); // unlinks only the .live name
}

Deno.test("listenUnix: a symlink swapped in for the socket after it is linked is not followed", async () => {
  await withDir((dir) => {
    const path = `${dir}/s.sock`;
    const victim = `${dir}/victim`;
    Deno.writeTextFileSync(victim, "root's file\n", { mode: 0o644 });
    Deno.chmodSync(victim, 0o644);
    // The moment a user who could write the directory would act: right after the link.
    const link = Deno.linkSync;
    Deno.linkSync = (from: string, to: string) => {
      link(from, to);
      Deno.removeSync(to);
      Deno.symlinkSync(victim, to);
    };
    let listener: Deno.Listener | undefined;
    try {
      ({ listener } = listenUnix(path));
    } finally {
      Deno.linkSync = link;
      listener?.close();
    }
    assert.equal(Deno.statSync(victim).mode! & 0o777, 0o644, "the symlink's target untouched");
    assert.ok(Deno.lstatSync(path).isSymlink, "the swapped-in symlink is left where it was");
  });
});

Deno.test({
  name: "listenUnix as root: a directory another user can change is refused, a sticky one not",
  ignore: requires(root()),
  async fn() {
    await withDir((dir) => {
      Deno.mkdirSync(`${dir}/theirs`, { mode: 0o755 });
      Deno.chownSync(`${dir}/theirs`, NOBODY, NOBODY);
      assert.throws(
        () => listenUnix(`${dir}/theirs/s.sock`),
        (error: Error) =>
          error instanceof UserError &&
          error.message.includes(`${dir}/theirs can be changed by uid ${NOBODY}`),
      );
      assert.deepEqual([...Deno.readDirSync(`${dir}/theirs`)], [], "nothing bound there");
      Deno.mkdirSync(`${dir}/open`, { mode: 0o777 });
      Deno.chmodSync(`${dir}/open`, 0o777);
      assert.throws(() => listenUnix(`${dir}/open/s.sock`), /can be changed by other users/);
      // Sticky (as /tmp): others cannot remove or rename root's socket there.
      Deno.chmodSync(`${dir}/open`, 0o1777);
      const { listener } = listenUnix(`${dir}/open/s.sock`);
      listener.close();
    });
  },
});

Deno.test({
  name: "claimSocketPath as root: a dead socket is not removed through another user's symlink",
  ignore: requires(root()),
  async fn() {
    await withDir(async (dir) => {
      Deno.mkdirSync(`${dir}/real`, { mode: 0o700 });
      deadSocket(`${dir}/real/s.sock`);
      Deno.symlinkSync(`${dir}/real`, `${dir}/link`);
      const chown = await new Deno.Command("chown", { args: ["-h", `${NOBODY}`, `${dir}/link`] })
        .output();
      assert.equal(chown.code, 0);
      assert.throws(() => claimSocketPath(`${dir}/link/s.sock`), /symlink of uid 65534/);
      assert.ok(Deno.lstatSync(`${dir}/real/s.sock`).isSocket, "root's socket is still there");
      // Its own path: the dead socket is cleared for a new server.
      assert.equal(claimSocketPath(`${dir}/real/s.sock`), `${dir}/real/s.sock`);
      assert.throws(() => Deno.lstatSync(`${dir}/real/s.sock`), Deno.errors.NotFound);
    });
  },
});
