/**
 * `mount oci:LAYOUT` of an ordinary image (FUSE backend): the tar+gzip layers of an OCI layout
 * made by umoci are served through an index, as a registry's are — one made on this host
 * (`--index-missing`, found again without the flag) or by `erofs-oci index oci:… -o DIR`
 * (`--index DIR`) — and mount equal to `umoci unpack`. Without an index the error says how to
 * make one; a layer blob that does not match its digest is refused and leaves nothing behind.
 */
import assert from "node:assert/strict";
import { command, path, requires, root } from "./_support/requires.ts";
import { assertCliError, assertSuccess, describe, runCli } from "./_support/cli.ts";
import { treeListing } from "./_support/erofs_tree.ts";
import { mountSandbox } from "./_support/mounts.ts";
import { withTempDir } from "./_support/temp_dir.ts";
import { comparableListing, makeUmociImage } from "./_support/umoci_image.ts";
import { OciLayout } from "../lib/oci/oci_layout.ts";
import { encodeTar } from "./_support/tar_encode.ts";
import { writeOciLayout } from "./_support/oci_layout_writer.ts";

const ignore = requires(root(), path("/dev/fuse"), command("umoci"));
const LONG = { timeoutMs: 120_000 };

/** The blob files of the layout's layers (what the manifest names, bottom first). */
async function layerBlobs(path: string, tag: string): Promise<string[]> {
  const layout = new OciLayout(path);
  try {
    const image = await layout.resolveImage({ layoutPath: path, tag });
    return image.layers.map((layer) => layout.blobPath(layer.digest));
  } finally {
    layout.close();
  }
}

Deno.test({
  name: "mount oci:LAYOUT of tar+gzip layers: indexed here or from --index DIR, equals umoci",
  ignore,
  fn: () =>
    withTempDir("erofs-oci-layout-tar-", async (work) => {
      Deno.mkdirSync(`${work}/umoci`);
      const image = await makeUmociImage(`${work}/umoci`);
      const ref = `oci:${image.layout}:${image.tag}`;
      const expected = comparableListing(await treeListing(image.rootfs));
      const sandbox = await mountSandbox();
      try {
        const { env, target } = sandbox;
        const mount = async (args: string[], extraEnv: Record<string, string> = {}) => {
          const mounted = await runCli(["mount", "--backend", "fuse", ...args, ref, target], {
            env: { ...env, ...extraEnv },
            ...LONG,
          });
          assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
          assert.deepEqual(comparableListing(await treeListing(target)), expected);
          assertSuccess(await runCli(["umount", target], { env: { ...env, ...extraEnv } }));
          return mounted;
        };

        const refused = await runCli(["mount", "--backend", "fuse", ref, target], { env });
        assertCliError(refused, 1, /layer 0 .* is tar\+gzip and has no index/);
        assert.match(refused.stderr, /`erofs-oci index oci:.* -o DIR` and pass --index DIR/);
        assert.match(refused.stderr, /or mount with --index-missing/);

        const indexed = await mount(["--index-missing"]);
        assert.match(indexed.stderr, /3 layers have no index: indexing here/);
        const again = await mount([]);
        assert.doesNotMatch(again.stderr, /indexing here/, "found without the flag");

        // Made elsewhere by `index -o DIR`; a state directory that has indexed nothing.
        const dir = `${work}/index`;
        assertSuccess(await runCli(["index", ref, "-o", dir], LONG));
        const fresh = { EROFS_OCI_STATE_DIR: `${work}/state-fresh` };
        const fromDir = await mount(["--index", dir], fresh);
        assert.doesNotMatch(fromDir.stderr, /indexing here/);
      } finally {
        await sandbox.cleanup();
      }
    }),
});

Deno.test({
  name: "mount oci:LAYOUT --index-missing: a layer blob that fails its digest is refused",
  ignore,
  fn: () =>
    withTempDir("erofs-oci-layout-tar-bad-", async (work) => {
      Deno.mkdirSync(`${work}/umoci`);
      const image = await makeUmociImage(`${work}/umoci`);
      const [bottom] = await layerBlobs(image.layout, image.tag);
      const bytes = Deno.readFileSync(bottom);
      bytes[4] ^= 0x5a; // the gzip header's MTIME: still gzip, other bytes than the digest
      Deno.writeFileSync(bottom, bytes);
      const sandbox = await mountSandbox();
      try {
        const bad = await runCli(
          [
            "mount",
            "--backend",
            "fuse",
            "--index-missing",
            `oci:${image.layout}:${image.tag}`,
            sandbox.target,
          ],
          { env: sandbox.env, ...LONG },
        );
        assert.equal(bad.code, 1, describe(bad));
        assert.match(bad.stderr, /\nerofs-oci: .*sha256:[0-9a-f]{64}.*(verification|digest)/);
        assert.doesNotMatch(bad.stderr, /^\s+at /m, "no stack trace");
        assert.deepEqual([...Deno.readDirSync(sandbox.target)], [], "nothing mounted");
        assert.ok(!Deno.readTextFileSync("/proc/self/mountinfo").includes(sandbox.target));
        const here = `${sandbox.env.EROFS_OCI_STATE_DIR}/indexed-here`;
        const left = [...Deno.readDirSync(here)].map((e) => e.name);
        assert.deepEqual(left, [], "no index (and no work directory) left");
      } finally {
        await sandbox.cleanup();
      }
    }),
});

Deno.test({
  name: "a 0-byte tar layer (legal: Go's archive/tar reads an empty archive) adds nothing: " +
    "mount --index-missing, convert and build IMAGE take it",
  ignore: requires(root(), path("/dev/fuse")),
  fn: () =>
    withTempDir("erofs-oci-empty-layer-", async (work) => {
      const tar = encodeTar([{ name: "a.txt", data: new TextEncoder().encode("a\n") }]);
      const layout = `${work}/layout`;
      await writeOciLayout(layout, [
        { bytes: tar, mediaType: "application/vnd.oci.image.layer.v1.tar" },
        { bytes: new Uint8Array(0), mediaType: "application/vnd.oci.image.layer.v1.tar" },
      ]);
      const sandbox = await mountSandbox();
      try {
        const mounted = await runCli(
          ["mount", "--backend", "fuse", "--index-missing", `oci:${layout}:v1`, sandbox.target],
          { env: sandbox.env, ...LONG },
        );
        assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
        try {
          assert.deepEqual([...Deno.readDirSync(sandbox.target)].map((e) => e.name), ["a.txt"]);
          assert.equal(Deno.readTextFileSync(`${sandbox.target}/a.txt`), "a\n");
        } finally {
          assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
        }
      } finally {
        await sandbox.cleanup();
      }
      // A layer that is no tar at all: the error names it (it named none).
      const bad = `${work}/bad`;
      await writeOciLayout(bad, [
        { bytes: tar, mediaType: "application/vnd.oci.image.layer.v1.tar" },
        {
          bytes: new Uint8Array(1024).fill(0x41),
          mediaType: "application/vnd.oci.image.layer.v1.tar",
        },
      ]);
      const badSandbox = await mountSandbox();
      try {
        const refused = await runCli(
          ["mount", "--backend", "fuse", "--index-missing", `oci:${bad}:v1`, badSandbox.target],
          { env: badSandbox.env, ...LONG },
        );
        assert.equal(refused.code, 1, describe(refused));
        assert.match(
          refused.stderr,
          /^erofs-oci: layer 1 \(sha256:[0-9a-f]{12}…\): tar header at byte 0/m,
        );
      } finally {
        await badSandbox.cleanup();
      }
      const converted = await runCli(["convert", `oci:${layout}:v1`, `oci:${work}/out:v1`], LONG);
      assert.equal(converted.code, 0, describe(converted));
      const built = await runCli(["build", `oci:${layout}:v1`, "-o", `${work}/image.erofs`], LONG);
      assert.equal(built.code, 0, describe(built));
      // A file given as a tar stays refused when it is empty: probably the wrong file.
      Deno.writeFileSync(`${work}/empty.tar`, new Uint8Array(0));
      assertCliError(
        await runCli(["build", `${work}/empty.tar`, "-o", `${work}/e.erofs`]),
        1,
        /empty input: not a tar archive/,
      );
    }),
});
