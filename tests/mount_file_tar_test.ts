/**
 * `mount FILE DIR` of a tar.gz or tar file (FUSE backend): served through an index as an
 * image's tar layer — one made here (`--index-missing`, found again without the flag by the
 * file's digest), by `erofs-oci index FILE -o DIR` (`--index DIR`) or by mkfs.erofs 1.9.3
 * (`--tarindex/--zinfo`) — it mounts the fixture's tree; an index not made here is said to be
 * unbound, and refused by --require-verified. Without an index the error says what
 * the file is and how to mount it; a file that is neither EROFS nor tar still gets the EROFS
 * error (with --index-missing: that it is neither), a v7 tar mounts, and a FIFO is refused
 * without waiting.
 */
import assert from "node:assert/strict";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import { assertCliError, assertSuccess, describe, runCli } from "./_support/cli.ts";
import { manifestOf, mountSandbox } from "./_support/mounts.ts";
import { expectedTarListing } from "./_support/index_mounts.ts";
import { withTempDir } from "./_support/temp_dir.ts";

const ignore = requires(
  root(),
  path("/dev/fuse"),
  path(`${FIXTURES}/layer.tar.gz`, "shared fixtures"),
);
const LONG = { timeoutMs: 120_000 };

Deno.test({
  name: "mount FILE: a tar.gz or tar file mounts through an index made here or by index -o DIR",
  ignore,
  fn: () =>
    withTempDir("erofs-oci-file-tar-", async (work) => {
      // Copies: the mount's recovery and index records name the file's own path.
      const gz = `${work}/layer.tar.gz`;
      const tar = `${work}/layer.tar`;
      Deno.copyFileSync(`${FIXTURES}/layer.tar.gz`, gz);
      Deno.copyFileSync(`${FIXTURES}/layer.tar`, tar);
      // The tar has no entry for its root: its mtime is the time of indexing, left out.
      const withoutRoot = (listing: string) => listing.replace(/^\.\t[^\n]*\n/, "");
      const expected = withoutRoot(expectedTarListing("layer.meta.txt"));
      const sandbox = await mountSandbox();
      try {
        const { env, target } = sandbox;
        const mountOk = async (args: string[], file: string) => {
          const mounted = await runCli(["mount", "--backend", "fuse", ...args, file, target], {
            env,
            ...LONG,
          });
          assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
          assert.equal(withoutRoot(await manifestOf(target)), expected);
          assertSuccess(await runCli(["umount", target], { env }));
          return mounted;
        };

        const refused = await runCli(["mount", "--backend", "fuse", gz, target], { env });
        assertCliError(
          refused,
          1,
          /layer\.tar\.gz is a tar\.gz file, not an EROFS image, and has no index/,
        );
        assert.match(refused.stderr, /mount it with --index-missing/);
        assert.deepEqual([...Deno.readDirSync(target)], [], "nothing mounted");

        const indexed = await mountOk(["--index-missing"], gz);
        assert.match(indexed.stderr, /layer 0 has no index: indexing here/);
        const again = await mountOk([], gz);
        assert.doesNotMatch(again.stderr, /indexing here/, "found by the file's digest");

        const refusedTar = await runCli(["mount", "--backend", "fuse", tar, target], { env });
        assertCliError(refusedTar, 1, /layer\.tar is a tar file, not an EROFS image/);
        const dir = `${work}/index`;
        assertSuccess(await runCli(["index", tar, "-o", dir], LONG));
        const fromDir = await mountOk(["--index", dir], tar);
        assert.doesNotMatch(fromDir.stderr, /indexing here/);
        // An index from elsewhere: its piece digests are its maker's, said once; one made here
        // is not (its pieces come from bytes checked against the digest).
        assert.match(fromDir.stderr, /layer 0: tar index from --index DIR, not bound by the layer/);
        assert.doesNotMatch(again.stderr, /not bound/);
        assertCliError(
          await runCli([
            "mount",
            "--backend",
            "fuse",
            "--require-verified",
            "--index",
            dir,
            tar,
            target,
          ], {
            env,
          }),
          1,
          /--require-verified: layer 0 is a tar layer with no index made on this host/,
        );
        assert.deepEqual([...Deno.readDirSync(target)], [], "nothing mounted");
        const verified = await mountOk(
          ["--require-verified", "--index-missing", "--index", dir],
          tar,
        );
        assert.match(verified.stderr, /indexing here/, "indexed here instead of taking DIR's");
        assert.doesNotMatch(verified.stderr, /not bound/);
        // A name with a space and a leading dot: index names its files so mount reads them.
        const spaced = `${work}/.my layer.tar.gz`;
        Deno.copyFileSync(gz, spaced);
        assertSuccess(await runCli(["index", spaced, "-o", `${work}/idx sp`], LONG));
        assert(Deno.statSync(`${work}/idx sp/_my layer.index.json`).isFile);
        await mountOk(["--index", `${work}/idx sp`], spaced);

        // The one index of the file's size is taken unhashed and the server checks the file
        // before serving it (one pass over it, not two): a file that only has the size of an
        // index's layer fails there, and says so.
        const other = `${work}/other.tar`;
        const otherBytes = Deno.readFileSync(tar);
        otherBytes[1000] ^= 0xff; // in big-1m3.bin's data: still a tar, other content
        Deno.writeFileSync(other, otherBytes);
        const sameSize = await runCli(
          ["mount", "--backend", "fuse", "--index", dir, other, target],
          { env, ...LONG },
        );
        assertCliError(sameSize, 1, /other\.tar does not match its index \(made for sha256:/);
        assert.match(sameSize.stderr, /--index-missing/);
        assert.deepEqual([...Deno.readDirSync(target)], [], "nothing mounted");
        // Changed past its first piece since it was indexed: the file is not read whole to
        // mount it, so the mount is up (its metadata is the index's), and a read of the changed
        // piece gets EIO, never the changed bytes.
        const changed = `${work}/changed.tar`;
        const changedBytes = Deno.readFileSync(tar);
        changedBytes[1_048_600] ^= 0xff; // big-1m3.bin, in the tar's second 1 MiB piece
        Deno.writeFileSync(changed, changedBytes);
        const onlyTar = `${work}/index-of-tar`;
        assertSuccess(await runCli(["index", tar, "-o", onlyTar], LONG));
        const changedMount = await runCli(
          ["mount", "--backend", "fuse", "--index", onlyTar, changed, target],
          { env, ...LONG },
        );
        assert.equal(changedMount.code, 0, `${describe(changedMount)}\n${sandbox.serverLogs()}`);
        try {
          assert.ok(Deno.statSync(`${target}/dir/a.txt`).isFile, "metadata from the index");
          assert.throws(() => Deno.readFileSync(`${target}/big-1m3.bin`), /os error 5/);
        } finally {
          assertSuccess(await runCli(["umount", target], { env }));
        }
        // With two indexes of that size, each file is hashed and gets its own.
        assertSuccess(await runCli(["index", other, "-o", dir], LONG));
        await mountOk(["--index", dir], tar);
        const otherMounted = await runCli(
          ["mount", "--backend", "fuse", "--index", dir, other, target],
          { env, ...LONG },
        );
        assert.equal(otherMounted.code, 0, `${describe(otherMounted)}\n${sandbox.serverLogs()}`);
        try {
          const big = Deno.readFileSync(`${target}/big-1m3.bin`);
          assert.deepEqual(big, otherBytes.subarray(512, 512 + big.length));
        } finally {
          assertSuccess(await runCli(["umount", target], { env }));
        }

        // erofs-utils' own index of the file (mkfs.erofs --tar=i --gzinfo): unverified reads.
        const erofsUtils = ["--tarindex", `${FIXTURES}/layer.meta.erofs`, "--zinfo"];
        const given = await mountOk([...erofsUtils, `${FIXTURES}/layer.zinfo`], gz);
        assert.match(given.stderr, /tar index from --tarindex\/--zinfo, not bound/);
        assertCliError(
          await runCli(
            ["mount", "--require-verified", ...erofsUtils, `${FIXTURES}/layer.zinfo`, gz, target],
            { env },
          ),
          1,
          /--require-verified: layer 0: tar index from --tarindex\/--zinfo/,
        );

        // Said as an index of another layer before ("refers to 1703936 bytes of tar, the tar
        // has 1129602": the gzip stream's size).
        assertCliError(
          await runCli(["mount", "--tarindex", `${FIXTURES}/layer.meta.erofs`, gz, target], {
            env,
          }),
          2,
          /the layer is a tar\.gz: --tarindex over it needs its --zinfo too/,
        );

        const erofsWithIndex = await runCli([
          "mount",
          "--backend",
          "fuse",
          "--tarindex",
          `${FIXTURES}/layer.meta.erofs`,
          `${FIXTURES}/basic.erofs`,
          target,
        ], { env });
        assertCliError(erofsWithIndex, 2, /--tarindex goes with a tar or tar\.gz file/);
        // Options that pick from an image's layers: a file is one image (they were ignored).
        for (
          const [picks, named] of [
            [["--blob", `sha256:${"0".repeat(64)}`], "--blob"],
            [["--layer", "3"], "--layer"],
            [["--platform", "linux/arm64"], "--platform"],
          ]
        ) {
          const picked = await runCli(
            ["mount", "--backend", "fuse", ...picks, `${FIXTURES}/basic.erofs`, target],
            { env },
          );
          assertCliError(
            picked,
            2,
            new RegExp(`${named} picks from a registry image .* local file`),
          );
          assert.deepEqual([...Deno.readDirSync(target)], [], "nothing mounted");
        }

        const junk = `${work}/junk.bin`;
        Deno.writeFileSync(junk, new Uint8Array(8192).fill(7));
        const notErofs = await runCli(["mount", "--backend", "fuse", junk, target], { env });
        assertCliError(notErofs, 1, /not an EROFS image: .*junk\.bin has magic/);
        // Asked to mount a tar, it says it is none (it said what EROFS magic it lacked).
        assertCliError(
          await runCli(["mount", "--backend", "fuse", "--index-missing", junk, target], { env }),
          1,
          /junk\.bin is neither an EROFS image nor a tar or tar\.gz file/,
        );
        // A v7 tar (no ustar magic: its header checksum says it is one).
        Deno.mkdirSync(`${work}/v7/d`, { recursive: true });
        Deno.writeTextFileSync(`${work}/v7/d/f`, "v7 file\n");
        const v7 = `${work}/v7.tar`;
        const tarred = await new Deno.Command("tar", {
          args: ["-C", `${work}/v7`, "--format=v7", "-cf", v7, "."],
        }).output();
        assert.ok(tarred.success, new TextDecoder().decode(tarred.stderr));
        const v7Mount = await runCli(
          ["mount", "--backend", "fuse", "--index-missing", v7, target],
          { env, ...LONG },
        );
        assert.equal(v7Mount.code, 0, describe(v7Mount));
        try {
          assert.equal(Deno.readTextFileSync(`${target}/d/f`), "v7 file\n");
        } finally {
          assertSuccess(await runCli(["umount", target], { env }));
        }
        // A FIFO is refused at once (its open used to wait for a writer forever).
        const fifo = `${work}/fifo`;
        const made = await new Deno.Command("mkfifo", { args: [fifo] }).output();
        assert.ok(made.success, "mkfifo");
        const fromFifo = await runCli(["mount", "--backend", "fuse", fifo, target], {
          env,
          timeoutMs: 30_000,
        });
        assertCliError(fromFifo, 1, /image file is not a regular file .*refused as an image/);
      } finally {
        await sandbox.cleanup();
      }
    }),
});

Deno.test({
  name: "index FILE: its whiteouts and opaque markers delete nothing (a file is an image of its " +
    "own), so mount --index DIR shows the tree --index-missing shows",
  ignore,
  fn: () =>
    withTempDir("erofs-oci-file-tar-wh-", async (work) => {
      Deno.mkdirSync(`${work}/src/d/opq`, { recursive: true });
      Deno.writeTextFileSync(`${work}/src/d/.wh.gone`, "");
      Deno.writeTextFileSync(`${work}/src/d/opq/.wh..wh..opq`, "");
      Deno.writeTextFileSync(`${work}/src/d/opq/kept`, "k\n");
      const gz = `${work}/wh.tar.gz`;
      const tarred = await new Deno.Command("tar", { args: ["-C", `${work}/src`, "-czf", gz, "."] })
        .output();
      assert.ok(tarred.success, new TextDecoder().decode(tarred.stderr));
      assertSuccess(await runCli(["index", gz, "-o", `${work}/idx`], LONG));
      const sandbox = await mountSandbox();
      try {
        const { env, target } = sandbox;
        const seen: Record<string, string[]> = {};
        for (const how of [["--index", `${work}/idx`], ["--index-missing"]]) {
          const mounted = await runCli(["mount", "--backend", "fuse", ...how, gz, target], {
            env,
            ...LONG,
          });
          assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
          try {
            const opaque = await new Deno.Command("getfattr", {
              args: ["--absolute-names", "-d", "-m", "trusted.overlay", `${target}/d/opq`],
            }).output();
            seen[how[0]] = [
              ...[...Deno.readDirSync(`${target}/d`)].map((e) => e.name).sort(),
              ...[...Deno.readDirSync(`${target}/d/opq`)].map((e) => `opq/${e.name}`),
              new TextDecoder().decode(opaque.stdout).trim(),
            ];
          } finally {
            assertSuccess(await runCli(["umount", target], { env }));
          }
        }
        assert.deepEqual(seen["--index"], ["opq", "opq/kept", ""], JSON.stringify(seen));
        assert.deepEqual(seen["--index"], seen["--index-missing"]);
      } finally {
        await sandbox.cleanup();
      }
    }),
});
