/**
 * `mount --index-missing` (FUSE backend, real docker-registry): an ordinary image nobody indexed
 * (umoci-made, copied by skopeo: 3 tar+gzip layers with whiteouts and an opaque directory) is
 * indexed on this host and mounts equal to `umoci unpack`; a later mount needs neither the flag
 * nor another whole read of a layer. A layer that does not match its digest is refused and
 * leaves no index and no mount behind.
 */
import assert from "node:assert/strict";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";
import { assertCliError, assertSuccess, runCli } from "./_support/cli.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { treeListing } from "./_support/erofs_tree.ts";
import { mountFuseOk, withIndexMountRig } from "./_support/index_mounts.ts";
import { comparableListing, copyToRegistry, makeUmociImage } from "./_support/umoci_image.ts";

const GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip";
const ignore = requires(
  root(),
  path("/dev/fuse"),
  command("docker-registry"),
  command("umoci"),
  command("skopeo"),
  path(`${FIXTURES}/layer.tar.gz`, "shared fixtures"),
);

/** Registry log lines of GETs that sent a whole blob (200; a lazy read gets 206). */
async function wholeBlobGets(registry: { accessLog(): Promise<string[]> }): Promise<string[]> {
  return (await registry.accessLog()).filter((line) =>
    /"GET \/v2\/[^ ]+\/blobs\/sha256:[0-9a-f]{64} [^"]*" 200 /.test(line)
  );
}

Deno.test({
  name:
    "mount --index-missing: a umoci image indexed here equals umoci unpack; a remount reuses it",
  ignore,
  fn: () =>
    withIndexMountRig("erofs-oci-index-missing-", async (rig) => {
      const { registry, sandbox, env, work, stateEnv } = rig;
      Deno.mkdirSync(`${work}/umoci`);
      const image = await makeUmociImage(`${work}/umoci`);
      await copyToRegistry(image, registry, "src/app:v1");
      const ref = `${registry.host}/src/app:v1`;

      const refused = await runCli(["mount", "--backend", "fuse", ref, sandbox.target], { env });
      assertCliError(refused, 1, /layer 0 .* is tar\+gzip and has no index/);
      assert.match(refused.stderr, /or mount with --index-missing to index it on this host/);

      const mounted = await mountFuseOk(rig, ["--index-missing", ref]);
      assert.match(mounted.stderr, /3 layers have no index: indexing here \(reads .* once/);
      assert.match(mounted.stdout, /3 layers/);
      const expected = comparableListing(await treeListing(image.rootfs));
      assert.deepEqual(comparableListing(await treeListing(sandbox.target)), expected);
      assertSuccess(await runCli(["umount", sandbox.target], { env }));
      const here = [...Deno.readDirSync(`${stateEnv.EROFS_OCI_STATE_DIR}/indexed-here`)]
        .map((e) => e.name).sort();
      assert.equal(here.length, 3, `one directory per layer: ${here}`);
      assert.ok(here.every((name) => /^sha256-[0-9a-f]{64}$/.test(name)), `${here}`);

      // Without the flag: found here, no layer read whole again.
      const before = (await wholeBlobGets(registry)).length;
      assert.ok(before >= 3, `indexing read each layer whole: ${before} GETs`);
      const again = await mountFuseOk(rig, [ref]);
      assert.doesNotMatch(again.stderr, /indexing here/);
      assert.deepEqual(comparableListing(await treeListing(sandbox.target)), expected);
      assertSuccess(await runCli(["umount", sandbox.target], { env }));
      assert.equal((await wholeBlobGets(registry)).length, before, "no whole-blob GET on remount");
    }),
});

Deno.test({
  name: "mount --index-missing: a layer that does not match its digest is refused, nothing left",
  ignore,
  fn: () =>
    withIndexMountRig("erofs-oci-index-missing-bad-", async (rig) => {
      const { registry, sandbox, env, stateEnv } = rig;
      const gz = await Deno.readFile(`${FIXTURES}/layer.tar.gz`);
      const pushed = await pushImage(registry, "gz/bad", "v1", [
        { bytes: gz, mediaType: GZIP_LAYER },
      ]);
      // Still a valid gzip (its header's MTIME changed), but not the bytes the digest names.
      const hex = pushed.layers[0].digest.slice("sha256:".length);
      const data = `${registry.storageDir}/docker/registry/v2/blobs/sha256/${
        hex.slice(0, 2)
      }/${hex}/data`;
      const bytes = Deno.readFileSync(data);
      bytes[4] ^= 0x5a;
      Deno.writeFileSync(data, bytes);

      const bad = await runCli(
        [
          "mount",
          "--backend",
          "fuse",
          "--index-missing",
          `${registry.host}/gz/bad:v1`,
          sandbox
            .target,
        ],
        { env, timeoutMs: 120_000 },
      );
      // The notice that indexing starts comes first, then the one-line error.
      assert.equal(bad.code, 1, bad.stderr);
      assert.match(
        bad.stderr,
        /\nerofs-oci: layer sha256:[0-9a-f]{64} failed verification: its content hashes to sha256:/,
      );
      assert.doesNotMatch(bad.stderr, /^\s+at /m, "no stack trace");
      assert.deepEqual([...Deno.readDirSync(sandbox.target)], [], "nothing mounted at the target");
      const mounts = Deno.readTextFileSync("/proc/self/mountinfo");
      assert.ok(!mounts.includes(sandbox.target), "no mount left");
      const here = `${stateEnv.EROFS_OCI_STATE_DIR}/indexed-here`;
      const left = (() => {
        try {
          return [...Deno.readDirSync(here)].map((e) => e.name);
        } catch {
          return [];
        }
      })();
      assert.deepEqual(left, [], "no index (and no work directory) left");
    }),
});
