/**
 * An OCI image layout is data from elsewhere (a USB stick, a shared directory): its files must
 * be opened once without following symlinks, be regular files, be read within bounds and, for
 * layers, match their digests before they are served. Each case runs the CLI as a user would.
 */
import assert from "node:assert/strict";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import { assertCliError, describe, runCli } from "./_support/cli.ts";
import { mountSandbox, mountsBelow } from "./_support/mounts.ts";
import { EROFS_LAYER } from "../lib/oci/media_types.ts";
import { writeOciLayout } from "./_support/oci_layout_writer.ts";
import { OciLayout } from "../lib/oci/oci_layout.ts";
import { openLayoutBlob } from "../lib/oci/layout_file.ts";

/** A layout tagged `v1` with basic.erofs as its one layer; returns the layer blob's path. */
async function writeLayout(dir: string): Promise<{ layerPath: string; layer: Uint8Array }> {
  const layer = await Deno.readFile(`${FIXTURES}/basic.erofs`);
  const { layerPaths } = await writeOciLayout(dir, [{ bytes: layer, mediaType: EROFS_LAYER }]);
  return { layerPath: layerPaths[0], layer };
}

async function withLayout(
  fn: (dir: string, layout: { layerPath: string; layer: Uint8Array }) => Promise<void>,
) {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-layout-trust-" });
  try {
    await fn(`${dir}/layout`, await writeLayout(`${dir}/layout`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function mkfifo(target: string): Promise<void> {
  const out = await new Deno.Command("mkfifo", { args: [target] }).output();
  assert.ok(out.success, `mkfifo ${target}`);
}

Deno.test("oci layout trust: index.json that is a FIFO or huge is refused, not read", async () => {
  await withLayout(async (dir) => {
    await Deno.remove(`${dir}/index.json`);
    await mkfifo(`${dir}/index.json`);
    // Before: the open blocked forever waiting for a writer.
    const fifo = await runCli(["inspect", `oci:${dir}:v1`], { timeoutMs: 15_000 });
    assertCliError(fifo, 1, /index\.json is not a regular file/);

    await Deno.remove(`${dir}/index.json`);
    const huge = await Deno.open(`${dir}/index.json`, { write: true, create: true });
    await huge.truncate(64 << 20); // sparse: reading it whole would take 64 MiB of memory
    huge.close();
    const big = await runCli(["inspect", `oci:${dir}:v1`]);
    assertCliError(big, 1, /index\.json is 67108864 bytes, more than the 4194304 allowed/);
  });
});

Deno.test("oci layout trust: a layer blob that is a symlink is refused by pull", async () => {
  await withLayout(async (dir, { layerPath, layer }) => {
    // Right bytes, but reached through a symlink: what it points to can change at any time.
    await Deno.writeFile(`${dir}/elsewhere`, layer);
    await Deno.remove(layerPath);
    await Deno.symlink(`${dir}/elsewhere`, layerPath);
    const out = `${dir}/pulled.erofs`;
    const pull = await runCli(["pull", `oci:${dir}:v1`, "--layer", "0", "-o", out]);
    assertCliError(pull, 1, /is a symbolic link .*refused in an OCI layout/);
    assert.throws(() => Deno.statSync(out), Deno.errors.NotFound);
    const left = [...Deno.readDirSync(dir)].filter((e) => e.name.endsWith(".partial"));
    assert.deepEqual(left, [], "no partial file left");
  });
});

const mountIgnore = requires(root(), path("/dev/fuse"));

Deno.test({
  name: "oci layout trust: a mounted layout layer is verified against its digest first",
  ignore: mountIgnore,
  async fn() {
    await withLayout(async (dir, { layerPath, layer }) => {
      const sandbox = await mountSandbox();
      try {
        // A valid superblock, one changed byte of file data: only the digest can tell.
        const tampered = layer.slice();
        tampered[tampered.length - 100] ^= 0xff;
        await Deno.writeFile(layerPath, tampered);
        const mounted = await runCli(
          ["mount", `oci:${dir}:v1`, sandbox.target, "--backend", "fuse"],
          { env: sandbox.env, timeoutMs: 60_000 },
        );
        assertCliError(mounted, 1, /failed verification/);
        assert.deepEqual(mountsBelow(sandbox.target), [], describe(mounted));

        await Deno.remove(layerPath);
        await mkfifo(layerPath);
        const fifo = await runCli(
          ["mount", `oci:${dir}:v1`, sandbox.target, "--backend", "fuse"],
          { env: sandbox.env, timeoutMs: 30_000 },
        );
        assertCliError(fifo, 1, /not a regular file/);
        assert.deepEqual(mountsBelow(sandbox.target), [], describe(fifo));

        // The untampered blob still mounts and reads.
        await Deno.remove(layerPath);
        await Deno.writeFile(layerPath, layer);
        const good = await runCli(
          ["mount", `oci:${dir}:v1`, sandbox.target, "--backend", "fuse"],
          { env: sandbox.env, timeoutMs: 60_000 },
        );
        assert.equal(good.code, 0, `${describe(good)}\n${sandbox.serverLogs()}`);
        assert.ok(Deno.readTextFileSync(`${sandbox.target}/dir/a.txt`).length > 0);
        const unmounted = await runCli(["umount", sandbox.target], { env: sandbox.env });
        assert.equal(unmounted.code, 0, describe(unmounted));
      } finally {
        await sandbox.cleanup();
      }
    });
  },
});

/** chown -h of `paths` to nobody (65534). */
async function toNobody(...paths: string[]): Promise<void> {
  const out = await new Deno.Command("chown", { args: ["-h", "65534:65534", ...paths] }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
}

Deno.test({
  name:
    "oci layout trust: another user's symlink to a layout (or its blobs) of root's is not followed",
  ignore: requires(root()),
  async fn() {
    await withLayout(async (rootsLayout, { layerPath }) => {
      const work = rootsLayout.replace(/\/layout$/, "");
      await Deno.chmod(rootsLayout, 0o700);
      // The layout itself: a user's link to root's.
      await Deno.mkdir(`${work}/home`);
      await Deno.symlink(rootsLayout, `${work}/home/layout`);
      await toNobody(`${work}/home`, `${work}/home/layout`);
      const out = `${work}/pulled.erofs`;
      for (
        const args of [["inspect", `oci:${work}/home/layout:v1`], [
          "pull",
          `oci:${work}/home/layout:v1`,
          "--layer",
          "0",
          "-o",
          out,
        ]]
      ) {
        assertCliError(await runCli(args), 1, /home\/layout is a symlink of uid 65534/);
      }
      // The user's own layout whose blobs/sha256 leads to root's blobs.
      const own = `${work}/home/own`;
      await writeLayout(own);
      await Deno.remove(`${own}/blobs/sha256`, { recursive: true });
      await Deno.symlink(layerPath.replace(/\/[^/]*$/, ""), `${own}/blobs/sha256`);
      await toNobody(own, `${own}/blobs`, `${own}/blobs/sha256`, `${own}/index.json`);
      assertCliError(
        await runCli(["pull", `oci:${own}:v1`, "--layer", "0", "-o", out]),
        1,
        /blobs\/sha256 is a symlink of uid 65534/,
      );
      assert.throws(() => Deno.statSync(out), Deno.errors.NotFound);
    });
  },
});

Deno.test("oci layout trust: a config that is not the one the manifest names is refused; unread JSON is not quoted", async () => {
  await withLayout(async (dir) => {
    const manifest = JSON.parse(
      await Deno.readTextFile(
        `${dir}/blobs/sha256/${
          JSON.parse(await Deno.readTextFile(`${dir}/index.json`)).manifests[0].digest.slice(7)
        }`,
      ),
    );
    // Another platform in the config's place: the manifest still names the old digest.
    await Deno.writeTextFile(
      `${dir}/blobs/sha256/${manifest.config.digest.slice(7)}`,
      '{"os":"plan9","architecture":"mips64"}',
    );
    assertCliError(
      await runCli(["inspect", `oci:${dir}:v1`]),
      1,
      /config sha256:[0-9a-f]{64} in .* does not match its digest/,
    );
    await Deno.writeTextFile(`${dir}/index.json`, "TOPSECRET-token-12345");
    const garbled = await runCli(["inspect", `oci:${dir}:v1`]);
    assertCliError(garbled, 1, /index\.json: not JSON/);
    assert.doesNotMatch(garbled.stderr, /TOPSECRET/, describe(garbled));
  });
});

Deno.test("oci layout trust: blobs/sha256 swapped for a link after the layout was resolved is refused, not followed", async () => {
  await withLayout(async (dir, { layerPath }) => {
    const layout = new OciLayout(dir);
    const digest = `sha256:${layerPath.slice(layerPath.lastIndexOf("/") + 1)}`;
    const path = layout.blobPath(digest); // resolved now, as a mount resolves it
    layout.openBlob(digest).close();
    // Another user's layout copy: its blobs dir renamed away, a link to the same blobs in a
    // directory of root's put there (a helper's repro: the server then held root's 0600 blob).
    const blobs = `${dir}/blobs/sha256`;
    Deno.renameSync(blobs, `${dir}/../roots-blobs`);
    Deno.symlinkSync(`${dir}/../roots-blobs`, blobs);
    assert.throws(() => layout.openBlob(digest), /reached through a symbolic link now/);
    await assert.rejects(
      openLayoutBlob({ path, sizeBytes: Deno.statSync(path).size, digest }),
      /reached through a symbolic link now/,
    );
  });
});
