/**
 * Plain (uncompressed) tar layers mounted lazily from a real docker-registry (FUSE backend):
 * `index IMAGE --push` makes meta + pieces and no zinfo, `mount` serves [meta][tar] straight
 * from the blob; a registry that answers a range with other bytes fails the read instead of
 * serving them; a zstd layer is refused with the `convert` hint.
 */
import assert from "node:assert/strict";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";
import { assertCliError, assertSuccess, runCli } from "./_support/cli.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { manifestOf } from "./_support/mounts.ts";
import {
  expectedTarListing,
  type IndexMountRig,
  mountFuseOk,
  withIndexMountRig,
} from "./_support/index_mounts.ts";
import { isBlobGetOf, startFaultProxy } from "./_support/fault_proxy.ts";

const TAR_LAYER = "application/vnd.oci.image.layer.v1.tar";
const GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd";
const LONG = { timeoutMs: 120_000 };
const ignore = requires(
  root(),
  path("/dev/fuse"),
  command("docker-registry"),
  command("python3"),
  path(`${FIXTURES}/big.tar.gz`, "shared fixtures"),
);

async function gunzip(file: string): Promise<Uint8Array<ArrayBuffer>> {
  const stream = (await Deno.open(file)).readable.pipeThrough(new DecompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function withRig(fn: (rig: IndexMountRig) => Promise<void>): Promise<void> {
  return withIndexMountRig("erofs-oci-plain-tar-", fn);
}

Deno.test({
  name: "mount plain tar image: no index → hint; index --push (no zinfo) → lazy mount equals tree",
  ignore,
  fn: () =>
    withRig(async (rig) => {
      const { registry, sandbox, env, work } = rig;
      const tar = await gunzip(`${FIXTURES}/big.tar.gz`);
      await pushImage(registry, "plain/app", "v1", [{ bytes: tar, mediaType: TAR_LAYER }]);
      const ref = `${registry.host}/plain/app:v1`;
      const none = await runCli(["mount", "--backend", "fuse", ref, sandbox.target], { env });
      assertCliError(none, 1, /layer 0 .* is a tar layer and has no index/);

      const indexed = await runCli(
        ["index", ref, "--push", "-o", `${work}/idx`, "--timestamp", "1700000000"],
        LONG,
      );
      assertSuccess(indexed);
      assert.match(indexed.stderr, /plain tar, no zinfo/);
      const written = [...Deno.readDirSync(`${work}/idx`)].map((e) => e.name).sort();
      assert.deepEqual(written.map((n) => n.replace(/^sha256-[0-9a-f]{64}/, "L")), [
        "L.index.json",
        "L.meta.erofs",
        "L.pieces",
      ]);
      const record = JSON.parse(
        Deno.readTextFileSync(`${work}/idx/${written[0]}`),
      );
      assert.equal(record.zinfo, undefined);
      assert.equal(record.diffId, record.layer.digest, "a plain tar is its own diff_id");

      await mountFuseOk(rig, ["--no-disk-cache", ref]);
      assert.equal(await manifestOf(sandbox.target), expectedTarListing("big.meta.txt"));
      assertSuccess(await runCli(["umount", sandbox.target], { env }));
    }),
});

Deno.test({
  name:
    "mount plain tar + tar.gz layers: stacked; a registry range with other bytes fails the read",
  ignore,
  fn: () =>
    withRig(async (rig) => {
      const { registry, sandbox, env } = rig;
      const tar = await gunzip(`${FIXTURES}/big.tar.gz`);
      const gz = await Deno.readFile(`${FIXTURES}/layer.tar.gz`);
      const pushed = await pushImage(registry, "plain/mixed", "v1", [
        { bytes: gz, mediaType: GZIP_LAYER },
        { bytes: tar, mediaType: TAR_LAYER },
      ]);
      assertSuccess(await runCli(["index", `${registry.host}/plain/mixed:v1`, "--push"], LONG));
      // Every ranged GET of the plain layer past its head has one byte flipped (byte 100 of the
      // body: inside a-text.txt for the range at 2 MiB). The head stays intact: the kernel's
      // first page of the device spans the meta image and the tar's first bytes.
      const plainGet = isBlobGetOf(pushed.layers[1].digest);
      await using proxy = await startFaultProxy(registry.host, [{
        match: (r) => plainGet(r) && !/^bytes=0-/.test(r.headers.get("range") ?? ""),
        fault: { kind: "corrupt" },
      }]);
      const ref = `${proxy.host}/plain/mixed:v1`;
      const mounted = await mountFuseOk(rig, ["--no-disk-cache", ref]);
      assert.match(mounted.stdout, /2 layers/);
      // The gzip layer below is intact; the plain layer's data is not served.
      const names = [...Deno.readDirSync(sandbox.target)].map((e) => e.name).sort();
      assert.ok(names.includes("a-text.txt") && names.includes("b-random.bin"), `${names}`);
      let read: Uint8Array | undefined;
      let failure: unknown;
      try {
        read = await Deno.readFile(`${sandbox.target}/a-text.txt`);
      } catch (error) {
        failure = error;
      }
      // (No deep-equal: a diff of 5 MB of bytes takes minutes to format.)
      assert.ok(read === undefined, `a-text.txt: ${read?.length} bytes served from bad ranges`);
      assert.match(String(failure), /Input\/output error|os error 5/);
      assert.match(sandbox.serverLogs(), /do not match their recorded digest/);
      assertSuccess(await runCli(["umount", sandbox.target], { env }));
    }),
});

Deno.test({
  name: "index/mount: a tar+zstd layer is refused with the convert hint",
  ignore,
  fn: () =>
    withRig(async ({ registry, sandbox, env }) => {
      // The bytes are never read: the media type alone decides.
      const fake = new TextEncoder().encode("not really zstd");
      await pushImage(registry, "plain/zstd", "v1", [{ bytes: fake, mediaType: ZSTD_LAYER }]);
      const ref = `${registry.host}/plain/zstd:v1`;
      const indexed = await runCli(["index", ref, "--push"], LONG);
      assertCliError(indexed, 1, /layer 0 \(.*tar\+zstd\) is neither tar nor tar\+gzip/);
      assert.match(indexed.stderr, /erofs-oci convert/);
      const mounted = await runCli(["mount", "--backend", "fuse", ref, sandbox.target], { env });
      assertCliError(mounted, 1, /only tar and tar\+gzip layers mount through an index/);
      assert.match(mounted.stderr, /erofs-oci convert/);
    }),
});
