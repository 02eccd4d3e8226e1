/**
 * Images made by `erofs-oci build` on Debian's 6.1 kernel (the VM): a directory with the awkward
 * cases (xattrs, hard links, devices, fifo, socket, 255-byte names, a long symlink, a multi-block
 * directory, ns mtimes, ids over 16 bits, setuid bits, a whiteout device, a sparse file over
 * 4 GiB) mounted through a loop device lists exactly as the source; a tar layer's OCI whiteouts
 * work in an overlayfs stack of two built images; and the same directory pushed with
 * `build --push` and mounted lazily with `erofs-oci mount` over NBD lists as the source too.
 * The guest's /tmp is tmpfs, which on 6.1 keeps trusted.* and security.* xattrs but not user.*.
 */
import assert from "node:assert/strict";
import { command, path, PEER_BIN, requires } from "../_support/requires.ts";
import { runCli } from "../_support/cli.ts";
import {
  fsckImage,
  runOk,
  treeListing,
  withMountedImage,
  withOverlayMount,
} from "../_support/erofs_tree.ts";
import { BIG_SPARSE_MARKS, bigSparseMarks, makeAwkwardTree } from "../_support/awkward_tree.ts";
import { withTempDir } from "../_support/temp_dir.ts";
import { startRegistry } from "../_support/registry.ts";
import { mountSandbox } from "../_support/mounts.ts";
import { NOT_IN_VM } from "../_support/vm.ts";

const ignore = NOT_IN_VM ||
  requires(
    command("python3"),
    command("mknod"),
    command("setfattr"),
    path(`${PEER_BIN}/fsck.erofs`, "fsck.erofs 1.9.3"),
  );
/** Files bigger than this are compared by size and a few bytes, not hashed. */
const HASH_UP_TO_BYTES = 64 << 20;
const BUILD_TIMEOUT_MS = 600_000;

function withWork(fn: (work: string) => Promise<void>): Promise<void> {
  return withTempDir("erofs-oci-build-vm-", fn);
}

Deno.test({
  name: "vm build: awkward directory tree, loop-mounted by the 6.1 kernel, lists as its source",
  ignore,
  async fn() {
    await withWork(async (work) => {
      const src = `${work}/src`;
      await makeAwkwardTree(src, { xattrNamespace: "trusted", bigSparse: true });
      const image = `${work}/awkward.erofs`;
      const built = await runCli(["build", src, "-o", image, "--timestamp", "1700000000"], {
        timeoutMs: BUILD_TIMEOUT_MS,
      });
      assert.equal(built.code, 0, built.stderr);
      await fsckImage(image);
      const expected = await treeListing(src, { hashUpToBytes: HASH_UP_TO_BYTES });
      assert.ok(expected.some((line) => line.startsWith("big.sparse\tf\t")), "big file listed");
      assert.ok(expected.some((line) => line.includes("trusted.shared")), "trusted.* kept");
      const [actual, marks] = await withMountedImage(image, async (dir) => [
        await treeListing(dir, { hashUpToBytes: HASH_UP_TO_BYTES }),
        await bigSparseMarks(`${dir}/big.sparse`),
      ]);
      assert.deepEqual(actual, expected);
      assert.deepEqual(marks, BIG_SPARSE_MARKS);
    });
  },
});

Deno.test({
  name: "vm build: a tar layer's OCI whiteouts hide lower files in an overlayfs stack (6.1)",
  ignore,
  async fn() {
    await withWork(async (work) => {
      const lower = `${work}/lower`;
      Deno.mkdirSync(`${lower}/etc`, { recursive: true });
      Deno.mkdirSync(`${lower}/opaque`);
      Deno.writeTextFileSync(`${lower}/etc/keep`, "keep");
      Deno.writeTextFileSync(`${lower}/etc/gone`, "gone");
      Deno.writeTextFileSync(`${lower}/opaque/hidden`, "hidden");
      const upperTar = `${work}/upper.tar`;
      await runOk("python3", [
        "-c",
        `import io, sys, tarfile
with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT) as t:
    def add(name, data=None, kind=tarfile.REGTYPE):
        info = tarfile.TarInfo(name)
        info.type, info.mtime = kind, 1700000000
        info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        info.size = len(data) if data is not None else 0
        t.addfile(info, io.BytesIO(data) if data is not None else None)
    add("etc", kind=tarfile.DIRTYPE)
    add("etc/.wh.gone", b"")
    add("etc/new", b"new")
    add("opaque", kind=tarfile.DIRTYPE)
    add("opaque/.wh..wh..opq", b"")
    add("opaque/mine", b"mine")`,
        upperTar,
      ]);
      for (const [from, to] of [[lower, "lower.erofs"], [upperTar, "upper.erofs"]]) {
        const built = await runCli(["build", from, "-o", `${work}/${to}`], {
          timeoutMs: BUILD_TIMEOUT_MS,
        });
        assert.equal(built.code, 0, built.stderr);
        await fsckImage(`${work}/${to}`);
      }
      await withMountedImage(
        `${work}/lower.erofs`,
        (lowerDir) =>
          withMountedImage(`${work}/upper.erofs`, async (upperDir) => {
            const gone = Deno.lstatSync(`${upperDir}/etc/gone`);
            assert.ok(gone.isCharDevice && gone.rdev === 0, "whiteout is a 0/0 char device");
            const opaque = await runOk("getfattr", [
              "--only-values",
              "-n",
              "trusted.overlay.opaque",
              `${upperDir}/opaque`,
            ]);
            assert.equal(opaque, "y");
            await withOverlayMount([upperDir, lowerDir], `${work}/merged`, async (merged) => {
              const names = (await runOk("find", [merged, "-mindepth", "1", "-printf", "%P\n"]))
                .trimEnd().split("\n").sort();
              assert.deepEqual(names, ["etc", "etc/keep", "etc/new", "opaque", "opaque/mine"]);
              assert.equal(Deno.readTextFileSync(`${merged}/etc/keep`), "keep");
            });
          }),
      );
    });
  },
});

Deno.test({
  name:
    "vm build: the awkward tree (no 4 GiB file) pushed with build --push, mounted over NBD, lists as its source",
  ignore,
  async fn() {
    await withWork(async (work) => {
      const src = `${work}/src`;
      await makeAwkwardTree(src, { xattrNamespace: "trusted", bigSparse: false });
      const registry = await startRegistry({ auth: "none", startTimeoutMs: 60_000 });
      const sandbox = await mountSandbox();
      try {
        const ref = `${registry.host}/build/awkward:v1`;
        const built = await runCli(
          ["build", src, "-o", `${work}/pushed.erofs`, "--push", ref],
          { timeoutMs: BUILD_TIMEOUT_MS },
        );
        assert.equal(built.code, 0, built.stderr);
        // One layer mounted as it is (an overlay would hide the whiteout and the opaque xattr).
        const mounted = await runCli(
          ["mount", ref, sandbox.target, "--layer", "0", "--backend", "nbd"],
          { env: sandbox.env, timeoutMs: 300_000 },
        );
        assert.equal(mounted.code, 0, `${mounted.stderr}\n${sandbox.serverLogs()}`);
        assert.match(mounted.stdout + mounted.stderr, /nbd/);
        const expected = await treeListing(src);
        const actual = await treeListing(sandbox.target);
        assert.deepEqual(actual, expected);
        const unmounted = await runCli(["umount", sandbox.target], { env: sandbox.env });
        assert.equal(unmounted.code, 0, unmounted.stderr);
      } finally {
        await sandbox.cleanup();
        await registry.stop();
      }
    });
  },
});
