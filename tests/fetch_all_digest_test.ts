/**
 * `--fetch-all` on a layer without a chunk-digest table: once the whole layer is in the disk
 * cache it is hashed against the layer digest. A registry (here a proxy) that flips one byte
 * of file data makes the check fail: reads of the layer return EIO instead of the wrong
 * bytes, `list --json` shows the layer's digest mismatch, and the cached bytes are dropped.
 */
import assert from "node:assert/strict";
import { command, path, PEER_BIN, requires, root } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { isBlobGetOf, startFaultProxy } from "./_support/fault_proxy.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE } from "./_support/oci_fixtures.ts";
import { mountSandbox } from "./_support/mounts.ts";

const FILE_BYTES = 4 << 20;

/** mkfs.erofs (1.9.3) of two files of random bytes: a few MiB of file data after metadata. */
async function randomDataImage(dir: string): Promise<Uint8Array<ArrayBuffer>> {
  Deno.mkdirSync(`${dir}/tree`);
  for (const name of ["a", "b"]) {
    const bytes = new Uint8Array(FILE_BYTES);
    for (let at = 0; at < bytes.length; at += 65536) {
      crypto.getRandomValues(bytes.subarray(at, at + 65536));
    }
    Deno.writeFileSync(`${dir}/tree/${name}`, bytes);
  }
  const made = await new Deno.Command(`${PEER_BIN}/mkfs.erofs`, {
    args: ["--quiet", `${dir}/image.erofs`, `${dir}/tree`],
  }).output();
  assert(made.success, new TextDecoder().decode(made.stderr));
  return Deno.readFileSync(`${dir}/image.erofs`);
}

Deno.test({
  name: "--fetch-all: a layer whose fetched bytes miss its digest reads EIO, list shows it",
  ignore: requires(
    root(),
    path("/dev/fuse"),
    command("docker-registry"),
    path(`${PEER_BIN}/mkfs.erofs`),
  ),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-fetch-all-digest-" });
    await using registry = await startRegistry({ auth: "none" });
    const image = await randomDataImage(work);
    const pushed = await pushImage(registry, "fa/flip", "v1", [
      { bytes: image, mediaType: EROFS_MEDIA_TYPE },
    ]);
    const digest = pushed.layers[0].digest;
    // One byte inside the file data near the end of the image, wherever a reply covers it.
    await using proxy = await startFaultProxy(registry.host, [
      { match: isBlobGetOf(digest), fault: { kind: "corrupt", blobOffset: image.length - 8192 } },
    ]);
    const sandbox = await mountSandbox();
    const env = { ...sandbox.env, EROFS_OCI_CACHE_DIR: `${work}/cache` };
    try {
      assertSuccess(
        await runCli(
          [
            "mount",
            `${proxy.host}/fa/flip:v1`,
            sandbox.target,
            "--plain-http",
            "--backend",
            "fuse",
            "--fetch-all",
          ],
          { env, timeoutMs: 60_000 },
        ),
      );
      try {
        const settled = () => /do not match the digest|bytes local/.test(sandbox.serverLogs());
        for (let waited = 0; waited < 30_000 && !settled(); waited += 200) {
          await new Promise((resolve) => setTimeout(resolve, 200));
        }
        const logs = sandbox.serverLogs();
        assert.match(logs, /do not match the digest/, logs);
        assert.doesNotMatch(logs, /bytes local/, logs);

        // Neither the flipped file nor the other one: the layer as a whole is not trusted.
        for (const name of ["a", "b"]) {
          const read = await new Deno.Command("cat", {
            args: [`${sandbox.target}/${name}`],
            stdout: "null",
            stderr: "piped",
          }).output();
          assert(!read.success, `reading ${name} must fail`);
          assert.match(new TextDecoder().decode(read.stderr), /Input\/output error/);
        }

        const listed = JSON.parse((await runCli(["list", "--json"], { env })).stdout);
        const layer = listed[0].layers[0];
        assert.equal(layer.digestMismatch, true, JSON.stringify(layer));
        assert(layer.verifyFailures >= 1, JSON.stringify(layer));
        const metrics = await runCli(["metrics"], { env });
        assertSuccess(metrics);
        assert.match(
          metrics.stdout,
          /^erofs_oci_layer_digest_mismatch\{[^}]*layer="0"[^}]*\} 1$/m,
          metrics.stdout,
        );

        // The bytes that failed are not left marked present for the next mount.
        const mapName = [...Deno.readDirSync(`${work}/cache/blobs`)].map((e) => e.name)
          .find((name) => name.startsWith(digest.replace(":", "-")) && name.endsWith(".map"))!;
        const map = Deno.readFileSync(`${work}/cache/blobs/${mapName}`);
        assert.equal(map.filter((byte) => byte === 1).length, 0);
      } finally {
        assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
      }
    } finally {
      await sandbox.cleanup();
      await Deno.remove(work, { recursive: true });
    }
  },
});
