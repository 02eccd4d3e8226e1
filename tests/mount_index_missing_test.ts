/**
 * `mount --index-missing` (FUSE backend, real docker-registry): an ordinary image nobody indexed
 * (umoci-made, copied by skopeo: 3 tar+gzip layers with whiteouts and an opaque directory) is
 * indexed on this host and mounts equal to `umoci unpack`, each layer byte fetched once (the
 * bytes indexing read stay in the disk cache for the lazy reads); a later mount needs neither
 * the flag nor a layer GET, and takes the index made here over one pushed later. A layer that does not match its digest is refused and leaves no
 * index, no mount and no chunk marked present in the disk cache behind; nor does a Ctrl-C while
 * a layer is indexed (the work directory used to stay).
 */
import assert from "node:assert/strict";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";
import {
  assertCliError,
  assertSuccess,
  describe,
  runCli,
  startCli,
  stopCli,
} from "./_support/cli.ts";
import { isBlobGet, startFaultProxy } from "./_support/fault_proxy.ts";
import { waitFor } from "./_support/wait.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { storedBlobPath, type TestRegistry } from "./_support/registry.ts";
import { EROFS_SUPER_END } from "../lib/erofs/superblock.ts";
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

const BLOB_GET = /"GET \/v2\/[^ ]+\/blobs\/sha256:([0-9a-f]{64}) [^"]*" 20[06] (\d+) /;

/** Registry log lines of blob GETs (whole: 200, ranged: 206). */
async function blobGets(
  registry: { accessLog(): Promise<string[]> },
): Promise<{ lines: string[] }> {
  return { lines: (await registry.accessLog()).filter((line) => BLOB_GET.test(line)) };
}

/** The bytes blob GET `lines` sent, per blob (hex digest). */
function blobBytes(lines: string[]): Map<string, number> {
  const bytes = new Map<string, number>();
  for (const line of lines) {
    const [, hex, sent] = BLOB_GET.exec(line)!;
    bytes.set(hex, (bytes.get(hex) ?? 0) + Number(sent));
  }
  return bytes;
}

/** The hex digest of the config blob of `repository:tag`. */
async function configHex(registry: TestRegistry, repository: string, tag: string) {
  const response = await fetch(`http://${registry.host}/v2/${repository}/manifests/${tag}`, {
    headers: { accept: "application/vnd.oci.image.manifest.v1+json" },
  });
  const manifest = await response.json();
  return String(manifest.config.digest).slice("sha256:".length);
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
      const beforeIndexing = (await blobGets(registry)).lines.length;

      const mounted = await mountFuseOk(rig, ["--index-missing", ref]);
      assert.match(mounted.stderr, /3 layers have no index: indexing here \(reads .* once/);
      assert.match(mounted.stdout, /3 layers/);
      const expected = comparableListing(await treeListing(image.rootfs));
      // The listing reads every file: the lazy reads find the bytes indexing read on disk.
      assert.deepEqual(comparableListing(await treeListing(sandbox.target)), expected);
      assertSuccess(await runCli(["umount", sandbox.target], { env }));
      const first = await blobGets(registry);
      const indexing = blobBytes(first.lines.slice(beforeIndexing));
      const config = await configHex(registry, "src/app", "v1");
      indexing.delete(config);
      assert.equal(indexing.size, 3, `the three layers were read: ${first.lines.join("\n")}`);
      for (const [hex, bytes] of indexing) {
        // Each byte once, besides the head `mount` reads of each layer before it looks for
        // an index (the superblock area).
        const size = Deno.statSync(storedBlobPath(registry, `sha256:${hex}`)).size;
        assert.ok(
          bytes >= size && bytes <= size + Math.min(size, EROFS_SUPER_END),
          `layer ${hex} (${size} bytes): ${bytes} bytes fetched`,
        );
      }
      const here = [...Deno.readDirSync(`${stateEnv.EROFS_OCI_STATE_DIR}/indexed-here`)]
        .map((e) => e.name).sort();
      assert.equal(here.length, 3, `one directory per layer: ${here}`);
      // Each named by its layer, and (above the bottom one) by the layers below it.
      assert.ok(
        here.every((name) => /^sha256-[0-9a-f]{64}(\.over-[0-9a-f]{64})?$/.test(name)),
        `${here}`,
      );
      assert.equal(here.filter((name) => !name.includes(".over-")).length, 1, `${here}`);

      // Without the flag: the index is found here, every byte on disk: no layer GET at all.
      const again = await mountFuseOk(rig, [ref]);
      assert.doesNotMatch(again.stderr, /indexing here/);
      assert.deepEqual(comparableListing(await treeListing(sandbox.target)), expected);
      assertSuccess(await runCli(["umount", sandbox.target], { env }));
      const later = await blobGets(registry);
      assert.deepEqual(later.lines.slice(first.lines.length), [], "no layer GET on remount");

      // Without a disk cache, and nothing indexed yet (another state directory), indexing
      // streams each layer whole: one GET each.
      const bareEnv = { ...env, EROFS_OCI_STATE_DIR: `${work}/state-bare` };
      const bare = await mountFuseOk({ ...rig, env: bareEnv }, [
        "--index-missing",
        "--no-disk-cache",
        ref,
      ]);
      assert.match(bare.stderr, /3 layers have no index: indexing here/);
      assert.deepEqual(comparableListing(await treeListing(sandbox.target)), expected);
      assertSuccess(await runCli(["umount", sandbox.target], { env: bareEnv }));
      const streamed = (await blobGets(registry)).lines.slice(later.lines.length);
      assert.equal(
        streamed.filter((line) => /" 200 /.test(line) && !line.includes(config)).length,
        3,
        `one whole GET per layer: ${streamed.join("\n")}`,
      );

      // Once someone pushes an index artifact, the index made here still comes first: its
      // piece digests came from checked bytes, the registry's are its maker's.
      assertSuccess(
        await runCli(["index", ref, "--push"], { env: bareEnv, timeoutMs: 120_000 }),
      );
      const hereFirst = await mountFuseOk(rig, [ref]);
      assert.doesNotMatch(hereFirst.stderr, /from the registry|not bound/);
      assert.deepEqual(comparableListing(await treeListing(sandbox.target)), expected);
      assertSuccess(await runCli(["umount", sandbox.target], { env }));
      // A host with no index of its own takes the registry's, and says what it is.
      const noneEnv = { ...env, EROFS_OCI_STATE_DIR: `${work}/state-none` };
      const elsewhere = await mountFuseOk({ ...rig, env: noneEnv }, [ref]);
      assert.match(elsewhere.stderr, /from the registry \(a referrer\), not bound/);
      assertSuccess(await runCli(["umount", sandbox.target], { env: noneEnv }));

      // Chunk tables by referrer only (checksums --push): reads through the index made here are
      // checked piece by piece, so --require-verified mounts without saying they are not.
      assertSuccess(await runCli(["checksums", ref, "--push"], { env, timeoutMs: 120_000 }));
      const verified = await mountFuseOk(rig, ["--require-verified", ref]);
      assert.doesNotMatch(verified.stderr, /chunk-digest table not bound by the manifest/);
      assertSuccess(await runCli(["umount", sandbox.target], { env }));
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
      const data = storedBlobPath(registry, pushed.layers[0].digest);
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
      // The bytes indexing read went through the disk cache: none of them stays usable.
      const blobs = `${env.EROFS_OCI_CACHE_DIR}/blobs`;
      const maps = [...Deno.readDirSync(blobs)].map((e) => e.name)
        .filter((name) => name.startsWith(`sha256-${hex}.`) && name.endsWith(".map"));
      assert.equal(maps.length, 1, `the layer's presence map: ${maps}`);
      const presence = Deno.readFileSync(`${blobs}/${maps[0]}`);
      assert.ok(presence.length > 0 && presence.every((byte) => byte === 0), `map: ${presence}`);
    }),
});

Deno.test({
  name: "mount --index-missing: SIGINT while a layer is indexed removes the work, exit 130",
  ignore,
  fn: () =>
    withIndexMountRig("erofs-oci-index-missing-int-", async (rig) => {
      const { registry, sandbox, env, stateEnv } = rig;
      const gz = await Deno.readFile(`${FIXTURES}/layer.tar.gz`);
      await pushImage(registry, "gz/slow", "v1", [{ bytes: gz, mediaType: GZIP_LAYER }]);
      // Blob GETs wait 5 s: the mount sits in its work directory, waiting for the layer.
      await using proxy = await startFaultProxy(registry.host, [
        { match: isBlobGet, fault: { kind: "delay", ms: 5_000 } },
      ]);
      const here = `${stateEnv.EROFS_OCI_STATE_DIR}/indexed-here`;
      const names = () => {
        try {
          return [...Deno.readDirSync(here)].map((e) => e.name);
        } catch {
          return [];
        }
      };
      const mounting = startCli([
        "mount",
        "--backend",
        "fuse",
        "--index-missing",
        `${proxy.host}/gz/slow:v1`,
        sandbox.target,
      ], env);
      try {
        await waitFor("the work directory", () => names().some((n) => n.startsWith(".indexing-")));
        mounting.child.kill("SIGINT");
        const result = await mounting.result;
        // The notice that indexing starts comes first, then the one line.
        assert.equal(result.code, 130, describe(result));
        assert.match(result.stderr, /\nerofs-oci: mount interrupted: nothing is left mounted/);
        assert.doesNotMatch(result.stderr, /^\s+at /m, "no stack trace");
      } finally {
        await stopCli(mounting);
      }
      assert.deepEqual(names(), [], "no work directory (nor index) left");
      assert.deepEqual([...Deno.readDirSync(sandbox.target)], [], "nothing mounted");
      assert.ok(!Deno.readTextFileSync("/proc/self/mountinfo").includes(sandbox.target));
    }),
});

Deno.test({
  name: "mount --index-missing: a state dir too small for the index leaves no partial copy",
  ignore,
  fn: () =>
    withIndexMountRig("erofs-oci-index-missing-full-", async (rig) => {
      const { registry, sandbox, env } = rig;
      const gz = await Deno.readFile(`${FIXTURES}/layer.tar.gz`);
      await pushImage(registry, "gz/full", "v1", [{ bytes: gz, mediaType: GZIP_LAYER }]);
      // Room for the records, not for the index's copy into the kept indexes.
      const small = await Deno.makeTempDir({ prefix: "erofs-oci-small-state-" });
      const mounted = await new Deno.Command("mount", {
        args: ["-t", "tmpfs", "-o", "size=130k,mode=0700", "tmpfs", small],
      }).output();
      assert.equal(mounted.code, 0, new TextDecoder().decode(mounted.stderr));
      try {
        const state = `${small}/state`;
        const full = await runCli([
          "mount",
          "--backend",
          "fuse",
          "--index-missing",
          `${registry.host}/gz/full:v1`,
          sandbox.target,
        ], { env: { ...env, EROFS_OCI_STATE_DIR: state }, timeoutMs: 120_000 });
        assert.equal(full.code, 1, describe(full));
        assert.match(full.stderr, /\nerofs-oci: .*No space left on device/);
        const partial = [...walkNames(state)].filter((name) => name.endsWith(".tmp"));
        assert.deepEqual(partial, [], "no partial file left in the state dir");
        assert.ok(!Deno.readTextFileSync("/proc/self/mountinfo").includes(sandbox.target));
      } finally {
        await new Deno.Command("umount", { args: [small] }).output();
        await Deno.remove(small, { recursive: true });
      }
    }),
});

/** Every path under `dir` (none when it is missing). */
function* walkNames(dir: string): Generator<string> {
  let entries: Deno.DirEntry[];
  try {
    entries = [...Deno.readDirSync(dir)];
  } catch {
    return;
  }
  for (const entry of entries) {
    yield `${dir}/${entry.name}`;
    if (entry.isDirectory) yield* walkNames(`${dir}/${entry.name}`);
  }
}
