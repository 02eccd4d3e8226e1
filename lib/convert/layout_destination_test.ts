import assert from "node:assert/strict";
import { LayoutDestination } from "./layout_destination.ts";
import { digestOf } from "../oci/digest.ts";
import { requires, root } from "../../tests/_support/requires.ts";

Deno.test("layout destination: an abandoned new layout is removed where it was made, not by path", async () => {
  const work = await Deno.makeTempDir({ prefix: "erofs-oci-layout-abandon-" });
  try {
    await Deno.mkdir(`${work}/a`);
    const destination = new LayoutDestination({ layoutPath: `${work}/a/out`, tag: "v1" });
    const bytes = new TextEncoder().encode("a blob");
    const digest = digestOf(bytes);
    await destination.putBlob({ digest, sizeBytes: bytes.length, mediaType: "x", bytes });
    // The directory holding the layout is moved away and a symlink to another tree (root's,
    // with an out/ of its own) takes its place before the failed run cleans up.
    await Deno.rename(`${work}/a`, `${work}/a2`);
    await Deno.mkdir(`${work}/roots/out/blobs/sha256`, { recursive: true });
    await Deno.writeTextFile(`${work}/roots/out/keep`, "root's\n");
    await Deno.writeTextFile(`${work}/roots/out/oci-layout`, "root's\n");
    await Deno.symlink(`${work}/roots`, `${work}/a`);
    destination.abandon();
    assert.equal(await Deno.readTextFile(`${work}/roots/out/keep`), "root's\n");
    assert.equal(await Deno.readTextFile(`${work}/roots/out/oci-layout`), "root's\n");
    assert.deepEqual([...Deno.readDirSync(`${work}/a2`)], [], "the layout this run made is gone");
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test({
  name:
    "layout destination: a user's `blobs` symlink is refused before anything is made where it points",
  ignore: requires(root()),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-layout-blobs-link-" });
    try {
      // A layout directory of nobody's, whose blobs is a symlink to another directory.
      await Deno.mkdir(`${work}/layout`);
      await Deno.mkdir(`${work}/victim`);
      await Deno.symlink(`${work}/victim`, `${work}/layout/blobs`);
      const chowned = new Deno.Command("chown", {
        args: ["-h", "65534:65534", `${work}/layout`, `${work}/layout/blobs`],
      }).outputSync();
      assert.equal(chowned.code, 0, new TextDecoder().decode(chowned.stderr));
      assert.throws(
        () => new LayoutDestination({ layoutPath: `${work}/layout`, tag: "v1" }),
        /blobs is a symlink of uid 65534/,
      );
      assert.deepEqual([...Deno.readDirSync(`${work}/victim`)], [], "nothing made through it");
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});
