/**
 * `inspect` of an image with tar layers says which have an index pushed (`index --push`): a
 * tar layer mounts lazily only through one, and nothing showed whether it was there.
 */
import assert from "node:assert/strict";
import { command, FIXTURES, path, requires } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { pushImage } from "./_support/oci_raw.ts";

Deno.test({
  name: "inspect: a TAR INDEX column says which tar layers have an index pushed",
  ignore: requires(command("docker-registry"), path(FIXTURES)),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    await pushImage(registry, "gz/inspect", "v1", [
      {
        bytes: await Deno.readFile(`${FIXTURES}/layer.tar.gz`),
        mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
      },
      { bytes: await Deno.readFile(`${FIXTURES}/basic.erofs`), mediaType: "application/vnd.erofs" },
    ]);
    const ref = `${registry.host}/gz/inspect:v1`;
    const column = async () => {
      const shown = await runCli(["inspect", ref], { timeoutMs: 60_000 });
      assertSuccess(shown);
      const lines = shown.stdout.split("\n");
      assert.match(lines.find((l) => l.startsWith("INDEX")) ?? "", /TAR INDEX\s*$/);
      return lines.filter((l) => /^\d+\s/.test(l)).map((l) => l.trim().split(/\s+/).at(-1));
    };
    assert.deepEqual(await column(), ["none", "-"]);
    assertSuccess(await runCli(["index", ref, "--push"], { timeoutMs: 60_000 }));
    assert.deepEqual(await column(), ["pushed", "-"]);
    const json = await runCli(["inspect", ref, "--json"], { timeoutMs: 60_000 });
    assertSuccess(json);
    const layers = JSON.parse(json.stdout).layers;
    assert.equal(layers[0].tarIndexPushed, true);
    assert.equal(layers[1].tarIndexPushed, undefined, "an EROFS layer needs none");
  },
});

Deno.test({
  name:
    "index --push of an image whose tar layers have an index pushed does nothing (--force does)",
  ignore: requires(command("docker-registry"), path(FIXTURES)),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    await pushImage(registry, "gz/again", "v1", [{
      bytes: await Deno.readFile(`${FIXTURES}/layer.tar.gz`),
      mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
    }]);
    const ref = `${registry.host}/gz/again:v1`;
    const first = await runCli(["index", ref, "--push"], { timeoutMs: 60_000 });
    assertSuccess(first);
    assert.match(first.stdout, /pushed index sha256:/);
    // It read every layer again and pushed a second artifact.
    const again = await runCli(["index", ref, "--push"], { timeoutMs: 60_000 });
    assertSuccess(again);
    assert.match(again.stdout, /has an index pushed already: nothing done/);
    assert.doesNotMatch(again.stdout + again.stderr, /pushed index|indexed/);
    const forced = await runCli(["index", ref, "--push", "--force"], { timeoutMs: 60_000 });
    assertSuccess(forced);
    assert.match(forced.stdout, /pushed index sha256:/);
  },
});

Deno.test({
  name: "index --push --layer N keeps the indexes pushed for the image's other layers",
  ignore: requires(command("docker-registry"), path(FIXTURES)),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const tar = "application/vnd.oci.image.layer.v1.tar";
    await pushImage(registry, "tar/three", "v1", [
      { bytes: await Deno.readFile(`${FIXTURES}/layer1.tar`), mediaType: tar },
      { bytes: await Deno.readFile(`${FIXTURES}/layer2.tar`), mediaType: tar },
      { bytes: await Deno.readFile(`${FIXTURES}/layer3.tar`), mediaType: tar },
    ]);
    const ref = `${registry.host}/tar/three:v1`;
    const pushed = async () => {
      const json = await runCli(["inspect", ref, "--json"], { timeoutMs: 60_000 });
      assertSuccess(json);
      return JSON.parse(json.stdout).layers.map((l: { tarIndexPushed?: boolean }) =>
        l.tarIndexPushed
      );
    };
    // A layer indexed alone first, then the others: the second artifact replaced the first.
    assertSuccess(await runCli(["index", ref, "--push", "--layer", "2"], { timeoutMs: 60_000 }));
    assert.deepEqual(await pushed(), [false, false, true]);
    assertSuccess(await runCli(["index", ref, "--push"], { timeoutMs: 60_000 }));
    assert.deepEqual(await pushed(), [true, true, true]);
    // Forced again for one layer: the two others stay pushed.
    const forced = await runCli(["index", ref, "--push", "--force", "--layer", "1"], {
      timeoutMs: 60_000,
    });
    assertSuccess(forced);
    assert.deepEqual(await pushed(), [true, true, true], forced.stdout + forced.stderr);
  },
});
