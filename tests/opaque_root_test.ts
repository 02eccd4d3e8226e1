/**
 * A layer whose tar has `.wh..wh..opq` at its root (no `./` entry: the root only implied)
 * hides every layer below it, as `umoci unpack` shows: through a lazy tar-index mount, a
 * converted image's overlay of EROFS layers, and a flattened conversion. overlayfs itself
 * ignores an opaque marker on a lower layer's root, so the mount leaves those layers out.
 */
import assert from "node:assert/strict";
import { command, path, requires, root } from "./_support/requires.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { encodeTar } from "./_support/tar_encode.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { mountFuseOk, withIndexMountRig } from "./_support/index_mounts.ts";

const GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip";
const enc = new TextEncoder();

async function gzip(bytes: Uint8Array): Promise<Uint8Array<ArrayBuffer>> {
  const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream()
    .pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function listing(dir: string): string[] {
  const names: string[] = [];
  const walk = (at: string, prefix: string) => {
    for (const entry of Deno.readDirSync(at)) {
      names.push(prefix + entry.name);
      if (entry.isDirectory) walk(`${at}/${entry.name}`, `${prefix}${entry.name}/`);
    }
  };
  walk(dir, "");
  return names.sort();
}

Deno.test({
  name: "a layer with an opaque root hides the layers below: tar-index mount, convert, flatten",
  ignore: requires(root(), path("/dev/fuse"), command("docker-registry")),
  fn: () =>
    withIndexMountRig("erofs-oci-opaque-root-", async (rig) => {
      const { registry, sandbox, env } = rig;
      const bottom = await gzip(encodeTar([
        { name: "gone.txt", data: enc.encode("below\n") },
        { name: "dir/", type: "5", mode: 0o755 },
        { name: "dir/also-gone", data: enc.encode("below too\n") },
      ]));
      const middle = await gzip(encodeTar([
        { name: "middle.txt", data: enc.encode("middle\n") },
      ]));
      const opaque = await gzip(encodeTar([
        { name: ".wh..wh..opq", data: new Uint8Array() },
        { name: "only", data: enc.encode("the opaque layer's\n") },
      ]));
      const top = await gzip(encodeTar([{ name: "top.txt", data: enc.encode("top\n") }]));
      const layers = (...blobs: Uint8Array<ArrayBuffer>[]) =>
        blobs.map((bytes) => ({ bytes, mediaType: GZIP_LAYER }));
      await pushImage(registry, "o/app", "v1", layers(bottom, middle, opaque, top));
      await pushImage(registry, "o/last", "v1", layers(bottom, opaque));
      const host = registry.host;
      const expectMounted = async (args: string[], want: string[]) => {
        await mountFuseOk(rig, args);
        try {
          assert.deepEqual(listing(sandbox.target), want, sandbox.serverLogs());
          assert.equal(
            await Deno.readTextFile(`${sandbox.target}/only`),
            "the opaque layer's\n",
          );
        } finally {
          assertSuccess(await runCli(["umount", sandbox.target], { env }));
        }
      };

      // Lazy, through tar indexes made here.
      await expectMounted([`${host}/o/app:v1`, "--index-missing"], ["only", "top.txt"]);
      // The opaque layer on top: one layer left to show.
      await expectMounted([`${host}/o/last:v1`, "--index-missing"], ["only"]);
      // Converted layer by layer (EROFS layers with the opaque root), and flattened.
      const convert = (dst: string, extra: string[] = []) =>
        runCli(["convert", `${host}/o/app:v1`, `${host}/${dst}`, ...extra], {
          env,
          timeoutMs: 120_000,
        });
      assertSuccess(await convert("o/erofs:v1"));
      await expectMounted([`${host}/o/erofs:v1`], ["only", "top.txt"]);
      assertSuccess(await convert("o/flat:v1", ["--flatten"]));
      await expectMounted([`${host}/o/flat:v1`], ["only", "top.txt"]);
    }),
});
