/**
 * End-to-end tests of `erofs-oci push`, `inspect` and `pull` against a real registry (no auth,
 * htpasswd Basic, token auth), run as subprocesses the way a user runs them. Every EROFS fixture
 * goes up and comes back byte for byte; a second push uploads nothing.
 */
import assert from "node:assert/strict";
import { command, requires } from "./_support/requires.ts";
import { type RegistryAuth, startRegistry, type TestRegistry } from "./_support/registry.ts";
import { assertCliError, assertSuccess, describe, loginOptions, runCli } from "./_support/cli.ts";
import {
  EROFS_MEDIA_TYPE,
  type Fixture,
  hostPlatform,
  loadFixture,
  platformManifestDigest,
} from "./_support/oci_fixtures.ts";

const ignore = requires(command("docker-registry"), command("htpasswd"), command("openssl"));

/** The fields of `erofs-oci inspect --json` these tests rely on. */
interface InspectJson {
  reference: string;
  repository: string;
  manifestDigest: string;
  platform: string;
  platforms: string[];
  layers: { index: number; digest: string; size: number; mediaType: string }[];
}

/** Size as the table may print it: bytes, or `formatBytes`-style KiB/MiB with one decimal. */
function sizeSpellings(bytes: number): string[] {
  const spellings = [String(bytes)];
  let value = bytes;
  for (const unit of ["KiB", "MiB", "GiB"]) {
    value /= 1024;
    if (value < 1) break;
    spellings.push(`${value.toFixed(1)} ${unit}`);
  }
  return spellings;
}

async function pushAndCheck(
  registry: TestRegistry,
  repository: string,
  fixtures: Fixture[],
  login: { args: string[]; stdin?: string },
): Promise<void> {
  const image = `${registry.host}/${repository}:v1`;
  const push = await runCli(
    ["push", image, ...fixtures.map((f) => f.path), "--plain-http", ...login.args],
    { stdin: login.stdin, timeoutMs: 30_000 },
  );
  assertSuccess(push);

  const expectedManifest = await platformManifestDigest(registry, repository, "v1");
  const json = await runCli(["inspect", image, "--json", "--plain-http", ...login.args], {
    stdin: login.stdin,
  });
  assertSuccess(json);
  const doc = JSON.parse(json.stdout) as InspectJson;
  const platform = `${hostPlatform().os}/${hostPlatform().architecture}`;
  assert.equal(doc.repository, repository, describe(json));
  assert.equal(doc.manifestDigest, expectedManifest, describe(json));
  assert.equal(doc.platform, platform, describe(json));
  assert.deepEqual(doc.platforms, [platform], describe(json));
  assert.deepEqual(
    doc.layers.map((l) => ({ index: l.index, digest: l.digest, size: l.size, type: l.mediaType })),
    fixtures.map((f, index) => ({
      index,
      digest: f.digest,
      size: f.bytes.length,
      type: EROFS_MEDIA_TYPE,
    })),
    describe(json),
  );

  const table = await runCli(["inspect", image, "--plain-http", ...login.args], {
    stdin: login.stdin,
  });
  assertSuccess(table);
  assert.ok(table.stdout.includes(platform), describe(table));
  assert.ok(table.stdout.includes(expectedManifest), describe(table));
  for (const fixture of fixtures) {
    const lines = table.stdout.split("\n").filter((l) => l.includes(fixture.digest));
    assert.ok(lines.length > 0, `layer ${fixture.name} not in table:\n${describe(table)}`);
    assert.ok(
      lines.some((l) =>
        l.includes(EROFS_MEDIA_TYPE) &&
        sizeSpellings(fixture.bytes.length).some((s) => l.includes(s))
      ),
      `layer ${fixture.name} row lacks media type or size:\n${describe(table)}`,
    );
  }

  const outDir = await Deno.makeTempDir({ prefix: "erofs-oci-pull-" });
  try {
    for (const [index, fixture] of fixtures.entries()) {
      const out = `${outDir}/layer${index}.erofs`;
      const pull = await runCli(
        ["pull", image, "--layer", String(index), "-o", out, "--plain-http", ...login.args],
        { stdin: login.stdin },
      );
      assertSuccess(pull);
      assert.ok(
        (await Deno.readFile(out)).every((b, i) => b === fixture.bytes[i]) &&
          (await Deno.stat(out)).size === fixture.bytes.length,
        `pulled layer ${index} differs from ${fixture.name}`,
      );
    }
    const last = fixtures[fixtures.length - 1];
    const byDigest = `${outDir}/by-digest.erofs`;
    const pull = await runCli(
      ["pull", image, "--blob", last.digest, "-o", byDigest, "--plain-http", ...login.args],
      { stdin: login.stdin },
    );
    assertSuccess(pull);
    assert.deepEqual(await Deno.readFile(byDigest), last.bytes, `--blob ${last.name}`);
  } finally {
    await Deno.remove(outDir, { recursive: true });
  }
}

function blobUploadStarts(log: string[], repository: string): string[] {
  return log.filter((l) => l.includes(`"POST /v2/${repository}/blobs/uploads/`));
}

const AUTH_MODES: { auth: RegistryAuth; via: "argument" | "stdin" }[] = [
  { auth: "none", via: "argument" },
  { auth: "basic", via: "argument" },
  { auth: "token", via: "stdin" },
];

for (const { auth, via } of AUTH_MODES) {
  Deno.test({
    name: `oci cli: push, inspect, pull every EROFS fixture (${auth} auth)`,
    ignore,
    fn: async () => {
      await using registry = await startRegistry({ auth });
      const login = loginOptions(registry, via);
      const layers = await Promise.all(
        ["layer1.erofs", "layer2.erofs", "layer3.erofs"].map(loadFixture),
      );
      await pushAndCheck(registry, "rt/layers", layers, login);
      await pushAndCheck(registry, "rt/basic", [await loadFixture("basic.erofs")], login);
      await pushAndCheck(registry, "rt/basic-lz4", [await loadFixture("basic-lz4.erofs")], login);

      // Pushing the same image again finds every blob and uploads none.
      const before = blobUploadStarts(await registry.accessLog(), "rt/layers");
      assert.ok(before.length >= 3, `first push started ${before.length} uploads`);
      const again = await runCli([
        "push",
        `${registry.host}/rt/layers:v1`,
        ...layers.map((f) => f.path),
        "--plain-http",
        ...login.args,
      ], { stdin: login.stdin });
      assertSuccess(again);
      const after = blobUploadStarts(await registry.accessLog(), "rt/layers");
      assert.deepEqual(after, before, "second push uploaded blobs again");
      if (auth === "token") assert.ok(registry.tokenServer!.grantedCount() > 0);
    },
  });
}

Deno.test({
  name: "oci cli: usage errors exit 2",
  fn: async () => {
    const image = "127.0.0.1:1/app:v1";
    const cases: [string[], RegExp?][] = [
      [["pull", image, "--layer", "0"], /-o|output/],
      [["pull", image, "-o", "/tmp/never-written.erofs"]],
      [["inspect", image, "--no-such-option"], /no-such-option/],
      [["pull", image, "--layer", "0", "-o", "/tmp/never-written.erofs", "--bogus"], /bogus/],
      [["push", image]],
      [["inspect"]],
      [["inspect", image, "--platform", "not-a-platform"], /platform/],
      // Before any request (127.0.0.1:1 answers nothing: "cannot reach" hid it, exit 1).
      [["pull", image, "--blob", "md5:abc", "-o", "/tmp/never-written.erofs"], /--blob digest/],
      [["mount", image, "/tmp", "--blob", "sha256:12"], /--blob digest/],
      [["serve", image, "--listen", "unix:/tmp/never.sock", "--blob", "sha256"], /--blob digest/],
      // It refused every layer, after the download began.
      [["convert", image, "oci:/tmp/never-written", "--max-layer-size", "0"], /would refuse every/],
      [["cache", "--older-than", "1d"], /--older-than goes with prune/],
      [["cache", "prne"], /cache: unknown action 'prne' \(did you mean prune\?\)/],
      [["--version", "extra"], /--version takes no argument \(got 'extra'\)/],
    ];
    // Read whole before: `cat /dev/zero |` filled memory.
    const flood = await runCli(["inspect", image, "-u", "a", "--password-stdin"], {
      stdin: "x".repeat(100_000),
      timeoutMs: 20_000,
    });
    assertCliError(flood, 2, /--password-stdin: more than 64 KiB on stdin/);
    for (const [args, message] of cases) {
      const line = assertCliError(await runCli(args, { timeoutMs: 20_000 }), 2, message);
      // "unknown command" also exits 2: it must not pass for a command that is missing.
      assert.doesNotMatch(line, /unknown command/);
    }
    await assert.rejects(Deno.stat("/tmp/never-written.erofs"));
    // No command at all: the help, as a usage error, on stderr (it went to stdout).
    const bare = await runCli([]);
    assert.equal(bare.code, 2);
    assert.equal(bare.stdout, "");
    assert.match(bare.stderr, /^erofs-oci .*\n\nUsage: erofs-oci <command>/);
  },
});

Deno.test({
  name: "oci cli: malformed reference is a usage error naming the reference",
  fn: async () => {
    for (const reference of ["127.0.0.1:5000/Upper/Case:v1", "host/app:bad tag", "app@sha256:12"]) {
      assertCliError(
        await runCli(["inspect", reference], { timeoutMs: 20_000 }),
        2,
        /invalid image reference/,
      );
    }
    // A file path is not taken for a reference (it used to fail as one with an empty name).
    const pull = ["pull", "./layer.erofs", "--layer", "0", "-o", "/tmp/never-written.erofs"];
    for (const args of [["inspect", "/tmp/some.tar.gz"], pull]) {
      const result = await runCli(args, { timeoutMs: 20_000 });
      assertCliError(result, 2, /is a file path, not an image reference/);
      assert.match(result.stderr, /or an OCI layout \(oci:PATH\[:TAG\]\)/);
    }
  },
});
