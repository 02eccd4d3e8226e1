/**
 * `erofs-oci push` specifics against a real registry: the recorded platform, refusing files that
 * are not EROFS images (nothing is tagged then), and `--debug` adding the stack trace that plain
 * errors leave out (checked with inspect).
 */
import assert from "node:assert/strict";
import { command, requires } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { assertCliError, assertSuccess, describe, runCli } from "./_support/cli.ts";
import { getManifest, pushImage as pushRaw } from "./_support/oci_raw.ts";
import { hostPlatform, loadFixture } from "./_support/oci_fixtures.ts";
import { startFaultProxy } from "./_support/fault_proxy.ts";

const ignore = requires(command("docker-registry"), command("htpasswd"), command("openssl"));

Deno.test({
  name: "oci push: --platform is recorded; another explicit platform is refused",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "none" });
    const layer = await loadFixture("layer1.erofs");
    const host = hostPlatform();
    const pushed = host.architecture === "s390x" ? "linux/ppc64le" : "linux/s390x";
    const image = `${registry.host}/push/platform:v1`;
    assertSuccess(await runCli(["push", image, layer.path, "--platform", pushed, "--plain-http"]));

    const chosen = await runCli(["inspect", image, "--json", "--platform", pushed, "--plain-http"]);
    assertSuccess(chosen);
    assert.equal(JSON.parse(chosen.stdout).platform, pushed, describe(chosen));

    // A one-platform image is used as is when no platform is asked for...
    const defaulted = await runCli(["inspect", image, "--plain-http"]);
    assertSuccess(defaulted);
    assert.match(defaulted.stdout, new RegExp(`Platform:\\s+${pushed}`), describe(defaulted));
    // ...but an explicit other platform is refused, naming what the image has.
    const hostName = `${host.os}/${host.architecture}`;
    const other = await runCli(["inspect", image, "--platform", hostName, "--plain-http"]);
    assertCliError(other, 1, new RegExp(hostName));
    assert.ok(other.stderr.includes(pushed), describe(other));
  },
});

Deno.test({
  name: "oci push: missing or non-EROFS files are refused before anything is tagged",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "none" });
    const layer = await loadFixture("layer1.erofs");
    const tar = await loadFixture("layer1.tar");
    const image = `${registry.host}/push/refused:v1`;

    const missing = await runCli([
      "push",
      image,
      layer.path,
      `${registry.dir}/no-such-file.erofs`,
      "--plain-http",
    ]);
    assertCliError(missing, 1, /no-such-file\.erofs/);

    const notErofs = await runCli(["push", image, layer.path, tar.path, "--plain-http"]);
    assertCliError(notErofs, 1, /layer1\.tar/);
    assert.match(notErofs.stderr, /EROFS/i, describe(notErofs));

    assert.equal((await getManifest(registry, "push/refused", "v1")).status, 404);
  },
});

Deno.test({
  name: "oci cli: --debug adds a stack trace to an error, plain runs do not",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "none" });
    const image = `${registry.host}/push/none:missing`;
    const plain = await runCli(["inspect", image, "--plain-http"]);
    assertCliError(plain, 1);
    const debug = await runCli(["inspect", image, "--plain-http", "--debug"]);
    assert.equal(debug.code, 1, describe(debug));
    assert.match(debug.stderr, /^erofs-oci: /m, describe(debug));
    assert.match(debug.stderr, /^\s+at /m, `no stack trace with --debug:\n${describe(debug)}`);
  },
});

Deno.test({
  name: "oci push: a file above 8 MiB goes up in chunks and pulls back identical (token auth)",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "token" });
    const dir = await Deno.makeTempDir({ prefix: "erofs-oci-big-" });
    try {
      // basic.erofs followed by random bytes: still starts like an EROFS image.
      const basic = await loadFixture("basic.erofs");
      const big = new Uint8Array(8 * 1024 * 1024 + 12_345);
      big.set(basic.bytes);
      for (let at = basic.bytes.length; at < big.length; at += 65_536) {
        crypto.getRandomValues(big.subarray(at, Math.min(at + 65_536, big.length)));
      }
      await Deno.writeFile(`${dir}/big.erofs`, big);
      const image = `${registry.host}/push/big:v1`;
      const login = ["--username", registry.username, "--password-stdin", "--plain-http"];
      const push = await runCli(["push", image, `${dir}/big.erofs`, ...login], {
        stdin: registry.password,
      });
      assertSuccess(push);
      const patches = (await registry.accessLog()).filter((l) =>
        l.includes('"PATCH /v2/push/big/blobs/uploads/')
      );
      assert.ok(patches.length >= 2, `expected chunked PATCH uploads, saw ${patches.length}`);

      const pull = await runCli(
        ["pull", image, "--layer", "0", "-o", `${dir}/pulled.erofs`, ...login],
        { stdin: registry.password },
      );
      assertSuccess(pull);
      const pulled = await Deno.readFile(`${dir}/pulled.erofs`);
      assert.equal(pulled.length, big.length);
      assert.ok(pulled.every((b, i) => b === big[i]), "pulled bytes differ");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "oci push: a write the registry refuses says the registry's reason and what to check",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "none" });
    const layer = await loadFixture("layer1.erofs");
    const refusing = (method: string, part: string) =>
      startFaultProxy(registry.host, [{
        match: (r) => r.method === method && r.path.includes(part),
        fault: { kind: "status", status: 403 },
        times: 100,
      }]);
    {
      await using proxy = await refusing("POST", "/blobs/uploads/");
      const refused = await runCli(["push", `${proxy.host}/ro/app:v1`, layer.path, "--plain-http"]);
      assertCliError(
        refused,
        1,
        /answered 403 starting the upload of .*layer1\.erofs: UNKNOWN: injected HTTP 403/,
      );
      assert.match(refused.stderr, /hint: no rights to write there: check the credentials/);
    }
    {
      // The blobs there already: the manifest PUT is what is refused.
      assertSuccess(
        await runCli(["push", `${registry.host}/ro/app:v0`, layer.path, "--plain-http"]),
      );
      await using proxy = await refusing("PUT", "/manifests/");
      const refused = await runCli(["push", `${proxy.host}/ro/app:v1`, layer.path, "--plain-http"]);
      assertCliError(refused, 1, /answered 403 storing the manifest of v1: UNKNOWN: injected/);
    }
  },
});

Deno.test({
  name: "oci push: a file given twice is said once uploaded, then 'same as above'; checksums of " +
    "an image without layers pushes nothing",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "none" });
    const layer = await loadFixture("layer1.erofs");
    const twice = await runCli([
      "push",
      `${registry.host}/push/twice:v1`,
      layer.path,
      layer.path,
      "--plain-http",
    ]);
    assertSuccess(twice);
    assert.equal(twice.stderr.match(/^uploaded /gm)?.length, 1, twice.stderr);
    assert.equal(twice.stderr.match(/^same as above /gm)?.length, 1, twice.stderr);

    await pushRaw(registry, "push/empty", "v1", []);
    const sums = await runCli([
      "checksums",
      `${registry.host}/push/empty:v1`,
      "--push",
      "--plain-http",
    ]);
    assertSuccess(sums);
    assert.match(sums.stderr, /has no layers: no chunk-digest table to push/);
    assert.doesNotMatch(sums.stderr, /pushed 0/);
  },
});
