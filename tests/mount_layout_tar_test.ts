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
