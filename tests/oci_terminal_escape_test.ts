/**
 * Strings a registry chooses (platforms of an index, layer media types) must not reach the
 * terminal as control characters: an ESC sequence could clear the screen, retitle the window or
 * hide what follows, a CR overwrite what was printed, U+009B act as an 8-bit CSI and bidi
 * overrides reorder the line. A real registry stores such an image; `inspect`, `inspect --json`
 * and a failing `pull` (whose error quotes the media type) are checked byte by byte.
 */
import assert from "node:assert/strict";
import { command, requires } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { describe, runCli } from "./_support/cli.ts";
import { OCI_INDEX, OCI_MANIFEST, pushImage, putManifest } from "./_support/oci_raw.ts";
import { hostPlatform, loadFixture } from "./_support/oci_fixtures.ts";

const ignore = requires(command("docker-registry"));

const HOSTILE_MEDIA_TYPE = "application/vnd.erofs\x1b[2J\x1b]0;owned\x07\r\u009b31m\u202eevil";
const HOSTILE_ARCH = "arm64\x1b[8m\u2066hidden";

/** Code points a terminal acts on, as found in `text` (newlines between lines excepted). */
function controlsIn(text: string): string[] {
  return [...text].filter((c) => {
    const code = c.codePointAt(0)!;
    return (code < 0x20 && code !== 0x0a) || (code >= 0x7f && code <= 0x9f) ||
      (code >= 0x202a && code <= 0x202e) || (code >= 0x2066 && code <= 0x2069);
  }).map((c) => `U+${c.codePointAt(0)!.toString(16).padStart(4, "0")}`);
}

Deno.test({
  name: "oci terminal: registry-chosen platforms and media types are printed escaped",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "none" });
    const fixture = await loadFixture("layer2.erofs");
    const platforms = [hostPlatform(), { os: "linux", architecture: HOSTILE_ARCH }];
    const mediaTypes = [HOSTILE_MEDIA_TYPE, "application/vnd.erofs"];
    const manifests = [];
    for (const [i, platform] of platforms.entries()) {
      const layers = [{ bytes: fixture.bytes, mediaType: mediaTypes[i] }];
      const pushed = await pushImage(registry, "escape/app", `part${i}`, layers, platform);
      manifests.push({
        mediaType: OCI_MANIFEST,
        digest: pushed.manifestDigest,
        size: pushed.manifestSize,
        platform,
      });
    }
    await putManifest(registry, "escape/app", "v1", {
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests,
    }, OCI_INDEX);
    const image = `${registry.host}/escape/app:v1`;

    const table = await runCli(["inspect", image]);
    assert.equal(table.code, 0, describe(table));
    assert.deepEqual(controlsIn(table.stdout + table.stderr), [], describe(table));
    assert.match(table.stdout, /application\/vnd\.erofs\\x1b\[2J\\x1b\]0;owned\\x07\\x0d/);
    assert.match(table.stdout, /\\x9b31m\\u\{202e\}evil/);
    assert.match(table.stdout, /arm64\\x1b\[8m\\u\{2066\}hidden/);

    const json = await runCli(["inspect", image, "--json"]);
    assert.equal(json.code, 0, describe(json));
    assert.deepEqual(controlsIn(json.stdout + json.stderr), [], describe(json));
    const doc = JSON.parse(json.stdout);
    assert.equal(doc.layers[0].mediaType, HOSTILE_MEDIA_TYPE, "JSON still carries the value");
    assert.ok(doc.platforms.includes(`linux/${HOSTILE_ARCH}`), json.stdout);

    // The layer is not application/vnd.erofs: pull refuses and names the media type.
    const out = await Deno.makeTempDir({ prefix: "erofs-oci-escape-" });
    try {
      const pull = await runCli(["pull", image, "--layer", "0", "-o", `${out}/layer`]);
      assert.equal(pull.code, 1, describe(pull));
      assert.deepEqual(controlsIn(pull.stdout + pull.stderr), [], describe(pull));
      assert.equal(pull.stderr.trimEnd().split("\n").length <= 2, true, describe(pull));
    } finally {
      await Deno.remove(out, { recursive: true });
    }
  },
});
