/**
 * What `erofs-oci inspect`/`pull` do when the registry or the network misbehaves: each failure is
 * one clear `erofs-oci: …` line with the right exit code, each transient fault is retried to the
 * exact bytes. Images are set up with plain fetch (tests/_support/oci_raw.ts) so these tests do
 * not depend on `push`, except where push itself is the subject.
 */
import assert from "node:assert/strict";
import { command, requires } from "./_support/requires.ts";
import { startRegistry, type TestRegistry } from "./_support/registry.ts";
import {
  type FaultRule,
  isBlobGetOf,
  isManifestGet,
  type ProxyRecord,
  startFaultProxy,
} from "./_support/fault_proxy.ts";
import { assertCliError, assertSuccess, describe, loginOptions, runCli } from "./_support/cli.ts";
import { getManifest, OCI_MANIFEST, pushImage, pushIndex } from "./_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE, hostPlatform, loadFixture } from "./_support/oci_fixtures.ts";

const ignore = requires(command("docker-registry"), command("htpasswd"), command("openssl"));
const TAR_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar";

/** A registry holding `REPO:v1` = basic.erofs (one layer), for pulls through a fault proxy. */
async function registryWithBasic(auth: "none" | "basic" | "token", tokenTtlSeconds?: number) {
  const registry = await startRegistry({ auth, tokenTtlSeconds });
  try {
    const fixture = await loadFixture("basic.erofs");
    await pushImage(registry, "faults/basic", "v1", [
      { bytes: fixture.bytes, mediaType: EROFS_MEDIA_TYPE },
    ]);
    return { registry, fixture };
  } catch (error) {
    await registry.stop();
    throw error;
  }
}

/** Runs `pull --layer 0` of faults/basic:v1 through `host` into a fresh directory. */
async function pullThrough(
  host: string,
  registry: TestRegistry,
  extra: string[] = [],
  timeoutMs = 30_000,
) {
  const outDir = await Deno.makeTempDir({ prefix: "erofs-oci-faults-" });
  const out = `${outDir}/layer.erofs`;
  const login = loginOptions(registry, "stdin");
  const result = await runCli(
    [
      "pull",
      `${host}/faults/basic:v1`,
      "--layer",
      "0",
      "-o",
      out,
      "--plain-http",
      ...login.args,
      ...extra,
    ],
    { stdin: login.stdin, timeoutMs },
  );
  let bytes: Uint8Array | undefined;
  try {
    bytes = await Deno.readFile(out);
  } catch { /* not written */ }
  const leftovers = [...Deno.readDirSync(outDir)].map((e) => e.name);
  await Deno.remove(outDir, { recursive: true });
  return { result, bytes, leftovers };
}

function assertSameBytes(actual: Uint8Array | undefined, expected: Uint8Array, what: string) {
  assert.ok(actual, `${what}: no output file`);
  assert.equal(actual.length, expected.length, `${what}: size`);
  const firstDiff = actual.findIndex((b, i) => b !== expected[i]);
  assert.equal(firstDiff, -1, `${what}: bytes differ from offset ${firstDiff}`);
}

function blobGets(records: readonly ProxyRecord[]): ProxyRecord[] {
  return records.filter((r) => r.method === "GET" && r.path.includes("/blobs/sha256:"));
}

Deno.test({
  name: "oci faults: unknown repository and unknown tag are one-line 404 errors",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "none" });
    const fixture = await loadFixture("layer2.erofs");
    await pushImage(registry, "faults/known", "v1", [
      { bytes: fixture.bytes, mediaType: EROFS_MEDIA_TYPE },
    ]);
    const missingTag = await runCli([
      "inspect",
      `${registry.host}/faults/known:nope`,
      "--plain-http",
    ]);
    assertCliError(missingTag, 1, /nope/);
    const missingRepo = await runCli([
      "inspect",
      `${registry.host}/faults/no-such-repo:v1`,
      "--plain-http",
    ]);
    assertCliError(missingRepo, 1, /no-such-repo/);
    const missingBlob = await runCli([
      "pull",
      `${registry.host}/faults/known:v1`,
      "--blob",
      `sha256:${"0".repeat(64)}`,
      "-o",
      `${registry.dir}/never.erofs`,
      "--plain-http",
    ]);
    // Not a layer of the image: the command line's mistake, as --layer out of range (exit 2).
    assertCliError(missingBlob, 2, /sha256:0{12}/);
  },
});

Deno.test({
  name: "oci faults: a manifest nested thousands of levels deep is refused in one line, unparsed",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "none" });
    const fixture = await loadFixture("layer2.erofs");
    const pushed = await pushImage(registry, "faults/nested", "v1", [
      { bytes: fixture.bytes, mediaType: EROFS_MEDIA_TYPE },
    ]);
    const manifest = await getManifest(registry, "faults/nested", pushed.manifestDigest);
    // Valid JSON the registry stores (Go's decoder takes up to 10,000 levels), with a member
    // V8 takes ~100 bytes a level to parse: a few MiB of such nesting took hundreds of MB.
    const deep = "[".repeat(5000) + "]".repeat(5000);
    const text = JSON.stringify(manifest.json).replace(/^\{/, `{"x":${deep},`);
    const put = await fetch(`http://${registry.host}/v2/faults/nested/manifests/deep`, {
      method: "PUT",
      headers: { "content-type": OCI_MANIFEST },
      body: text,
    });
    assert.equal(put.status, 201, await put.text());
    const inspected = await runCli(["inspect", `${registry.host}/faults/nested:deep`]);
    assertCliError(inspected, 1, /not JSON \(JSON nested deeper than 64 levels\)/);
  },
});

for (const auth of ["basic", "token"] as const) {
  Deno.test({
    name: `oci faults: wrong or missing credentials are a one-line 401 error (${auth})`,
    ignore,
    fn: async () => {
      const { registry } = await registryWithBasic(auth);
      await using _ = registry;
      const image = `${registry.host}/faults/basic:v1`;
      const wrong = await runCli([
        "inspect",
        image,
        "--plain-http",
        "--username",
        registry.username,
        "--password-stdin",
      ], { stdin: "not-the-password\n" });
      assertCliError(wrong, 1, /401|unauthori[sz]ed|authentication|credential|denied/i);
      assert.ok(!wrong.stderr.includes("not-the-password"), "password echoed in the error");
      const anonymous = await runCli(["inspect", image, "--plain-http"]);
      assertCliError(anonymous, 1, /401|unauthori[sz]ed|authentication|credential|denied/i);
      if (auth === "token") {
        assert.ok(registry.tokenServer!.requests.some((r) => r.account === registry.username));
        assert.equal(registry.tokenServer!.grantedCount(), 0);
      }
    },
  });
}

Deno.test({
  name: "oci faults: a platform that is not in the index is refused, listing the available ones",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "none" });
    const layer = await loadFixture("layer3.erofs");
    await pushIndex(registry, "faults/multi", "v1", [
      {
        platform: { os: "linux", architecture: "amd64" },
        layers: [{ bytes: layer.bytes, mediaType: EROFS_MEDIA_TYPE }],
      },
      {
        platform: { os: "linux", architecture: "arm64" },
        layers: [{ bytes: layer.bytes, mediaType: EROFS_MEDIA_TYPE }],
      },
    ]);
    const multi = await runCli([
      "inspect",
      `${registry.host}/faults/multi:v1`,
      "--platform",
      "linux/s390x",
      "--plain-http",
    ]);
    const line = assertCliError(multi, 1, /linux\/s390x/);
    assert.match(multi.stderr, /linux\/amd64/, describe(multi));
    assert.match(multi.stderr, /linux\/arm64/, describe(multi));
    assert.ok(line);

    // An image pushed by erofs-oci records one platform (the host's); another is refused.
    const push = await runCli([
      "push",
      `${registry.host}/faults/pushed:v1`,
      layer.path,
      "--plain-http",
    ]);
    assertSuccess(push);
    const host = hostPlatform();
    const other = host.architecture === "s390x" ? "linux/ppc64le" : "linux/s390x";
    const pull = await runCli([
      "pull",
      `${registry.host}/faults/pushed:v1`,
      "--layer",
      "0",
      "-o",
      `${registry.dir}/never.erofs`,
      "--platform",
      other,
      "--plain-http",
    ]);
    assertCliError(pull, 1, new RegExp(other.replace("/", "\\/")));
    assert.match(pull.stderr, new RegExp(`${host.os}/${host.architecture}`), describe(pull));
    await assert.rejects(Deno.stat(`${registry.dir}/never.erofs`));
  },
});

Deno.test({
  name: "oci faults: layer index out of range names the layer count (a usage error, exit 2)",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "none" });
    const layers = await Promise.all(["layer1.erofs", "layer2.erofs"].map(loadFixture));
    await pushImage(
      registry,
      "faults/two",
      "v1",
      layers.map((f) => ({ bytes: f.bytes, mediaType: EROFS_MEDIA_TYPE })),
    );
    const out = `${registry.dir}/never.erofs`;
    const result = await runCli([
      "pull",
      `${registry.host}/faults/two:v1`,
      "--layer",
      "2",
      "-o",
      out,
      "--plain-http",
    ]);
    assertCliError(result, 2, /layer 2 out of range: the image has 2 layers \(0\.\.1\)/);
    await assert.rejects(Deno.stat(out));
    // So is a --blob that is none of its layers (it was exit 1).
    const notLayer = await runCli([
      "pull",
      `${registry.host}/faults/two:v1`,
      "--blob",
      `sha256:${"0".repeat(64)}`,
      "-o",
      out,
      "--plain-http",
    ]);
    assertCliError(notLayer, 2, /blob sha256:0{64} is not a layer of this image/);
    await assert.rejects(Deno.stat(out));
  },
});

Deno.test({
  name: "oci faults: a non-EROFS layer is refused by media type unless --any-media-type",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "none" });
    const erofs = await loadFixture("layer1.erofs");
    const tar = await loadFixture("layer1.tar");
    await pushImage(registry, "faults/mixed", "v1", [
      { bytes: erofs.bytes, mediaType: EROFS_MEDIA_TYPE },
      { bytes: tar.bytes, mediaType: TAR_MEDIA_TYPE },
    ]);
    const image = `${registry.host}/faults/mixed:v1`;
    const out = `${registry.dir}/layer.out`;
    const refused = await runCli(["pull", image, "--layer", "1", "-o", out, "--plain-http"]);
    assertCliError(refused, 1, new RegExp(TAR_MEDIA_TYPE.replaceAll(".", "\\.")));
    await assert.rejects(Deno.stat(out));
    const byDigest = await runCli(["pull", image, "--blob", tar.digest, "-o", out, "--plain-http"]);
    assertCliError(byDigest, 1, new RegExp(TAR_MEDIA_TYPE.replaceAll(".", "\\.")));
    await assert.rejects(Deno.stat(out));

    const forced = await runCli([
      "pull",
      image,
      "--layer",
      "1",
      "-o",
      out,
      "--any-media-type",
      "--plain-http",
    ]);
    assertSuccess(forced);
    assertSameBytes(await Deno.readFile(out), tar.bytes, "--any-media-type pull");
  },
});

Deno.test({
  name: "oci faults: wrong bytes from the registry fail the digest check and leave no file",
  ignore,
  fn: async () => {
    const { registry, fixture } = await registryWithBasic("basic");
    await using _ = registry;
    await using proxy = await startFaultProxy(registry.host, [
      { match: isBlobGetOf(fixture.digest), fault: { kind: "corrupt" } },
    ]);
    const { result, bytes, leftovers } = await pullThrough(proxy.host, registry);
    assertCliError(result, 1, new RegExp(`${fixture.digest}.*(verif|digest|hash)`, "i"));
    assert.equal(bytes, undefined, "output file written despite the digest mismatch");
    assert.deepEqual(leftovers, [], "temporary files left beside the output");
    assert.ok(blobGets(proxy.requests).length >= 1);
  },
});

Deno.test({
  name: "oci faults: HTTP 500 on manifest and blob reads is retried",
  ignore,
  fn: async () => {
    const { registry, fixture } = await registryWithBasic("token");
    await using _ = registry;
    const plan: FaultRule[] = [
      { match: isManifestGet, fault: { kind: "status", status: 500 }, times: 1 },
      { match: isBlobGetOf(fixture.digest), fault: { kind: "status", status: 500 }, times: 2 },
    ];
    await using proxy = await startFaultProxy(registry.host, plan);
    const { result, bytes } = await pullThrough(proxy.host, registry);
    assertSuccess(result);
    assertSameBytes(bytes, fixture.bytes, "pull after 500s");
    assert.equal(proxy.hits(0), 1, describe(result));
    assert.equal(proxy.hits(1), 2, describe(result));
  },
});

Deno.test({
  name: "oci faults: a connection reset mid-body is resumed from where it stopped",
  ignore,
  fn: async () => {
    const { registry, fixture } = await registryWithBasic("basic");
    await using _ = registry;
    const afterBytes = 300_000;
    await using proxy = await startFaultProxy(registry.host, [
      { match: isBlobGetOf(fixture.digest), fault: { kind: "reset", afterBytes }, times: 1 },
    ]);
    const { result, bytes } = await pullThrough(proxy.host, registry);
    assertSuccess(result);
    assertSameBytes(bytes, fixture.bytes, "pull after a reset");
    const gets = blobGets(proxy.requests);
    const resetIndex = gets.findIndex((r) => r.fault === "reset");
    assert.ok(resetIndex >= 0, "the reset was never injected");
    const resetStart = Number(gets[resetIndex].range?.match(/^bytes=(\d+)-/)?.[1] ?? 0);
    const later = gets.slice(resetIndex + 1).map((r) => r.range);
    // Resumed, not restarted: the next range starts after the reset request's start and no
    // later than the bytes the proxy sent (a few may be lost in flight).
    const resumedAt = later.map((range) => Number(range?.match(/^bytes=(\d+)-/)?.[1] ?? -1));
    assert.ok(
      resumedAt.some((at) => at > resetStart && at <= resetStart + afterBytes),
      `no resume within (${resetStart}, ${resetStart + afterBytes}]; later ranges: ${
        JSON.stringify(later)
      }`,
    );
  },
});

Deno.test({
  name: "oci faults: a 200 with the whole blob instead of 206 still gives the right bytes",
  ignore,
  fn: async () => {
    const { registry, fixture } = await registryWithBasic("none");
    await using _ = registry;
    await using proxy = await startFaultProxy(registry.host, [
      // The reset forces a ranged request even from a client that pulls with one plain GET.
      {
        match: isBlobGetOf(fixture.digest),
        fault: { kind: "reset", afterBytes: 250_000 },
        times: 1,
      },
      {
        match: (r) => isBlobGetOf(fixture.digest)(r) && r.headers.has("range"),
        fault: { kind: "ignore-range" },
      },
    ]);
    const { result, bytes } = await pullThrough(proxy.host, registry);
    assertSuccess(result);
    assertSameBytes(bytes, fixture.bytes, "pull with ignored ranges");
    assert.ok(proxy.hits(1) >= 1, "no ranged request was answered with 200");
  },
});

Deno.test({
  name: "oci faults: blob redirects to another host are followed without Authorization",
  ignore,
  fn: async () => {
    const { registry, fixture } = await registryWithBasic("token");
    await using _ = registry;
    await using proxy = await startFaultProxy(registry.host, [
      { match: isBlobGetOf(fixture.digest), fault: { kind: "redirect" } },
    ]);
    const { result, bytes } = await pullThrough(proxy.host, registry);
    assertSuccess(result);
    assertSameBytes(bytes, fixture.bytes, "pull through a redirect");
    assert.ok(proxy.redirected.length >= 1, "redirect target never asked");
    assert.deepEqual(
      proxy.redirected.filter((r) => r.hasAuthorization).map((r) => r.path),
      [],
      "Authorization sent to the redirect target",
    );
  },
});

Deno.test({
  name: "oci faults: a token that expires during a long read is renewed",
  ignore,
  fn: async () => {
    const ttlSeconds = 2;
    const { registry, fixture } = await registryWithBasic("token", ttlSeconds);
    await using _ = registry;
    await using proxy = await startFaultProxy(registry.host, [
      // The body stalls past the token's lifetime, then breaks: the rest needs a new token.
      {
        match: isBlobGetOf(fixture.digest),
        fault: { kind: "reset", afterBytes: 200_000, stallMs: ttlSeconds * 1000 + 1500 },
        times: 1,
      },
    ]);
    const { result, bytes } = await pullThrough(proxy.host, registry, [], 40_000);
    assertSuccess(result);
    assertSameBytes(bytes, fixture.bytes, "pull across token expiry");
    const granted = registry.tokenServer!.requests.filter((r) => r.granted);
    assert.ok(granted.length >= 2, `token requests: ${JSON.stringify(granted)}`);
    // The read really outlived the first token.
    const lastBlobGet = blobGets(proxy.requests).at(-1)!;
    assert.ok(lastBlobGet.timeMs >= granted[0].timeMs + ttlSeconds * 1000);
  },
});
