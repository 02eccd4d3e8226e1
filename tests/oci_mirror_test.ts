/**
 * Registry mirrors from containerd hosts.toml against two real docker-registry instances (an
 * upstream and a mirror holding a copy), each behind a counting proxy: layer reads go to the
 * mirror, tags only to hosts with `resolve`, a stopped mirror falls back to the upstream,
 * `_default/hosts.toml`, `override_path` below a prefix, `ca` for a TLS mirror (and
 * `skip_verify`, which Deno cannot honour, leaving the mirror out); a FUSE mount reads through
 * the mirror, and a recovery record (upstream reference) is checked through it again.
 */
import assert from "node:assert/strict";
import { command, path, requires, root } from "./_support/requires.ts";
import { assertCliError, assertSuccess, runCli } from "./_support/cli.ts";
import { selfSignedP256 } from "./_support/certs.ts";
import { expectedManifest, manifestOf, mountSandbox } from "./_support/mounts.ts";
import { layerForRecord, recordForLayer } from "../lib/recovery/layer_record.ts";
import { startRegistry, type TestRegistry } from "./_support/registry.ts";
import { type FaultProxy, startFaultProxy } from "./_support/fault_proxy.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE, loadFixture } from "./_support/oci_fixtures.ts";
import { RegistryClient } from "../lib/oci/client.ts";
import { pushImage as pushImageTo } from "../lib/convert/push_image.ts";
import { parseReference } from "../lib/oci/reference.ts";

const ignore = requires(command("docker-registry"));

interface Pair {
  upstream: TestRegistry;
  mirror: TestRegistry;
  up: FaultProxy;
  mir: FaultProxy;
  configDir: string;
  fixture: Uint8Array<ArrayBuffer>;
  layerDigest: string;
  [Symbol.asyncDispose](): Promise<void>;
}

async function startPair(mirrorTls = false): Promise<Pair> {
  const upstream = await startRegistry({ auth: "none" });
  const mirror = await startRegistry(
    mirrorTls ? { auth: "none", tls: { dnsName: "localhost" } } : { auth: "none" },
  );
  const { bytes } = await loadFixture("basic.erofs");
  const pushed = await pushImage(upstream, "app", "v1", [
    { bytes, mediaType: EROFS_MEDIA_TYPE },
  ]);
  if (!mirrorTls) {
    await pushImage(mirror, "app", "v1", [{ bytes, mediaType: EROFS_MEDIA_TYPE }]);
  }
  const up = await startFaultProxy(upstream.host, []);
  const mir = await startFaultProxy(mirror.host, []);
  const configDir = await Deno.makeTempDir({ prefix: "erofs-oci-certs.d-" });
  return {
    upstream,
    mirror,
    up,
    mir,
    configDir,
    fixture: bytes,
    layerDigest: pushed.layers[0].digest,
    async [Symbol.asyncDispose]() {
      await up.stop();
      await mir.stop();
      await upstream.stop();
      await mirror.stop();
      await Deno.remove(configDir, { recursive: true });
    },
  };
}

function writeHosts(configDir: string, name: string, text: string): void {
  Deno.mkdirSync(`${configDir}/${name}`, { recursive: true });
  Deno.writeTextFileSync(`${configDir}/${name}/hosts.toml`, text);
}

/** hosts.toml of the pair's upstream: pull through the pair's mirror (plain HTTP). */
function useMirrorForPulls(pair: Pair): void {
  writeHosts(
    pair.configDir,
    pair.up.host,
    `[host."http://${pair.mir.host}"]\n  capabilities = ["pull"]\n`,
  );
}

const blobGets = (proxy: FaultProxy, digest: string) => proxy.blobGets(digest).length;
const tagGets = (proxy: FaultProxy) =>
  proxy.requests.filter((r) => r.method === "GET" && r.path.endsWith("/manifests/v1")).length;

async function readAll(client: RegistryClient, pair: Pair): Promise<void> {
  const image = await client.resolveImage(parseReference(`${pair.up.host}/app:v1`));
  assert.equal(image.layers[0].digest, pair.layerDigest);
  const size = pair.fixture.byteLength;
  const half = Math.floor(size / 2);
  const a = await client.readBlobRange("app", pair.layerDigest, 0, half);
  const b = await client.readBlobRange("app", pair.layerDigest, half, size - half);
  assert.deepEqual(new Uint8Array([...a, ...b]), pair.fixture);
}

Deno.test({
  name: "mirror: layer reads at the mirror, tags at the upstream, fallback when it stops",
  ignore,
  async fn() {
    await using pair = await startPair();
    useMirrorForPulls(pair);
    const client = new RegistryClient(pair.up.host, { hostsConfigDir: pair.configDir });
    await readAll(client, pair);
    assert.equal(blobGets(pair.up, pair.layerDigest), 0, "no layer GET at the upstream");
    assert.equal(blobGets(pair.mir, pair.layerDigest), 2, "both ranges from the mirror");
    assert.equal(tagGets(pair.mir), 0, "a pull-only mirror never resolves tags");
    assert.equal(tagGets(pair.up), 1);
    // The mirror registry's own access log agrees (not only our proxy).
    const mirrorLog = await pair.mirror.accessLogOnce(
      (l) => l.includes(`GET /v2/app/blobs/${pair.layerDigest}`),
      2,
    );
    assert.equal(mirrorLog.length, 2, mirrorLog.join("\n"));

    await pair.mir.stop();
    const started = Date.now();
    const again = new RegistryClient(pair.up.host, { hostsConfigDir: pair.configDir });
    await readAll(again, pair);
    assert(blobGets(pair.up, pair.layerDigest) >= 1, "fell back to the upstream");
    assert(Date.now() - started < 5_000, `fallback took ${Date.now() - started} ms`);
  },
});

Deno.test({
  name: "mirror: resolve capability, a mirror without the blob (404), _default/hosts.toml",
  ignore,
  async fn() {
    await using pair = await startPair();
    await using empty = await startRegistry({ auth: "none" });
    writeHosts(
      pair.configDir,
      "_default",
      `[host."http://${empty.host}"]\n  capabilities = ["pull"]\n` +
        `[host."http://${pair.mir.host}"]\n  capabilities = ["pull", "resolve"]\n`,
    );
    const client = new RegistryClient(pair.up.host, { hostsConfigDir: pair.configDir });
    await readAll(client, pair);
    assert.equal(tagGets(pair.up), 0, "the resolve mirror answered the tag");
    assert.equal(tagGets(pair.mir), 1);
    assert.equal(blobGets(pair.up, pair.layerDigest), 0);
    assert.equal(blobGets(pair.mir, pair.layerDigest), 2, "past the empty mirror's 404s");
    const emptyLog = await empty.accessLogOnce((l) => l.includes("/blobs/"), 2);
    assert(
      emptyLog.length >= 2 && emptyLog.every((l) => l.includes('" 404 ')),
      emptyLog.join("\n"),
    );
  },
});

Deno.test({
  name: "mirror: override_path puts the API root below a prefix",
  ignore,
  async fn() {
    await using pair = await startPair();
    // A mirror published below /cache/ without /v2 (what override_path exists for).
    const prefixed = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
      const url = new URL(req.url);
      if (!url.pathname.startsWith("/cache/")) return new Response("no", { status: 404 });
      const path = "/v2/" + url.pathname.slice("/cache/".length) + url.search;
      const headers = new Headers(req.headers);
      headers.delete("host");
      return fetch(`http://${pair.mir.host}${path}`, { method: req.method, headers });
    });
    try {
      const prefix = `http://127.0.0.1:${prefixed.addr.port}/cache`;
      writeHosts(
        pair.configDir,
        pair.up.host,
        `[host."${prefix}"]\n  capabilities = ["pull", "resolve"]\n  override_path = true\n`,
      );
      const client = new RegistryClient(pair.up.host, { hostsConfigDir: pair.configDir });
      await readAll(client, pair);
      assert.equal(blobGets(pair.up, pair.layerDigest), 0);
      assert.equal(blobGets(pair.mir, pair.layerDigest), 2);
      assert.equal(tagGets(pair.up), 0);
    } finally {
      await prefixed.shutdown();
    }
  },
});

Deno.test({
  name: "mirror: a TLS mirror is used with its ca; skip_verify alone leaves it out",
  ignore: requires(command("docker-registry"), command("openssl")),
  async fn() {
    await using pair = await startPair(true);
    // Filled through `server` + `ca` of its own hosts.toml: our push over verified TLS.
    const pushDir = `${pair.configDir}/push`;
    writeHosts(
      pushDir,
      pair.mirror.host,
      `server = "https://${pair.mirror.host}"\nca = "${pair.mirror.certPath}"\n`,
    );
    const layerFile = `${pair.configDir}/layer.erofs`;
    Deno.writeFileSync(layerFile, pair.fixture);
    await pushImageTo(
      new RegistryClient(pair.mirror.host, { hostsConfigDir: pushDir }),
      parseReference(`${pair.mirror.host}/app:v1`),
      [{ path: layerFile }],
    );
    const mirrorUrl = `https://${pair.mirror.host}`;
    const layerGetsAtMirror = async () =>
      (await pair.mirror.accessLog()).filter((l) =>
        l.includes(`GET /v2/app/blobs/${pair.layerDigest}`)
      ).length;
    writeHosts(
      pair.configDir,
      pair.up.host,
      `[host."${mirrorUrl}"]\n  capabilities = ["pull"]\n  skip_verify = true\n`,
    );
    await readAll(new RegistryClient(pair.up.host, { hostsConfigDir: pair.configDir }), pair);
    assert.equal(await layerGetsAtMirror(), 0, "skip_verify without ca: mirror not used");
    assert.equal(blobGets(pair.up, pair.layerDigest), 2);

    const caDir = `${pair.configDir}/${pair.up.host}`;
    Deno.copyFileSync(pair.mirror.certPath!, `${caDir}/mirror-ca.pem`);
    writeHosts(
      pair.configDir,
      pair.up.host,
      `[host."${mirrorUrl}"]\n  capabilities = ["pull"]\n  ca = "mirror-ca.pem"\n`,
    );
    await readAll(new RegistryClient(pair.up.host, { hostsConfigDir: pair.configDir }), pair);
    assert.equal(await layerGetsAtMirror(), 2, "ca: both ranges from the TLS mirror");
    assert.equal(blobGets(pair.up, pair.layerDigest), 2, "no more upstream layer GETs");
  },
});

Deno.test({
  name: "mirror: a FUSE mount reads its layer through the mirror; recovery keeps the upstream",
  ignore: requires(root(), path("/dev/fuse"), command("docker-registry")),
  async fn() {
    await using pair = await startPair();
    useMirrorForPulls(pair);
    const sandbox = await mountSandbox();
    const env = { ...sandbox.env, EROFS_OCI_REGISTRY_CONFIG_DIR: pair.configDir };
    try {
      assertSuccess(
        await runCli(
          [
            "mount",
            `${pair.up.host}/app:v1`,
            sandbox.target,
            "--plain-http",
            "--backend",
            "fuse",
            "--no-disk-cache",
          ],
          { env, timeoutMs: 60_000 },
        ),
      );
      try {
        assert.equal(
          await manifestOf(sandbox.target),
          expectedManifest("basic.txt"),
          sandbox.serverLogs(),
        );
      } finally {
        assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 30_000 }));
      }
      assert(blobGets(pair.mir, pair.layerDigest) > 0, "the mount server read the mirror");
      assert.equal(blobGets(pair.up, pair.layerDigest), 0, "and never the upstream");
    } finally {
      await sandbox.cleanup();
    }

    // What reattach does with a device's record: it names the upstream, keeps the mount's
    // hosts.toml directory, and the check of the blob (then every read of the new server)
    // goes through the mirror configured there, even from a process without the variable.
    const previous = Deno.env.get("EROFS_OCI_REGISTRY_CONFIG_DIR");
    try {
      Deno.env.set("EROFS_OCI_REGISTRY_CONFIG_DIR", pair.configDir);
      const { record, extra } = recordForLayer(
        {
          kind: "registry",
          registry: pair.up.host,
          repository: "app",
          reference: `${pair.up.host}/app:v1`,
          platform: "",
          layerIndex: 0,
          digest: pair.layerDigest,
          mediaType: EROFS_MEDIA_TYPE,
          sizeBytes: pair.fixture.byteLength,
          plainHttp: true,
        },
        undefined,
        "mount-1",
        0,
      );
      assert.equal(
        record.kind === "OCI_NATIVE_BLOB" && record.reference,
        `${pair.up.host}/app:v1`,
      );
      assert.equal(extra.registryConfigDir, pair.configDir);
      Deno.env.delete("EROFS_OCI_REGISTRY_CONFIG_DIR");
      const heads = () => pair.mir.requests.filter((r) => r.method === "HEAD").length;
      const upHeads = pair.up.requests.filter((r) => r.method === "HEAD").length;
      const device = Math.ceil(pair.fixture.byteLength / 4096) * 4096;
      const { layer } = await layerForRecord(record, JSON.parse(JSON.stringify(extra)), device);
      assert.equal(layer.kind === "registry" && layer.registry, pair.up.host);
      assert.equal(heads(), 1, "the recovery check asked the mirror");
      assert.equal(pair.up.requests.filter((r) => r.method === "HEAD").length, upHeads);
    } finally {
      if (previous === undefined) Deno.env.delete("EROFS_OCI_REGISTRY_CONFIG_DIR");
      else Deno.env.set("EROFS_OCI_REGISTRY_CONFIG_DIR", previous);
    }
  },
});

Deno.test({
  name: "hosts.toml: a client certificate or key the TLS library cannot use is one line naming " +
    "the files, not an internal error",
  ignore: requires(command("openssl")),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "erofs-oci-client-pem-" });
    try {
      await selfSignedP256({
        subject: "/CN=client",
        keyPath: `${dir}/key.pem`,
        certPath: `${dir}/cert.pem`,
      });
      Deno.writeTextFileSync(
        `${dir}/bad.key`,
        "-----BEGIN PRIVATE KEY-----\nU0VDUkVUS0VZ\n-----END PRIVATE KEY-----\n",
      );
      // Port 1: nothing there; the client is made before any connection.
      for (const [cert, key] of [["cert.pem", "bad.key"], ["key.pem", "cert.pem"]]) {
        writeHosts(
          dir,
          "127.0.0.1:1",
          `[host."https://127.0.0.1:1"]\n  capabilities = ["pull", "resolve"]\n` +
            `  client = [["${dir}/${cert}", "${dir}/${key}"]]\n`,
        );
        const result = await runCli(["inspect", "127.0.0.1:1/x/y:v1"], {
          env: { EROFS_OCI_REGISTRY_CONFIG_DIR: dir },
        });
        assertCliError(
          result,
          1,
          new RegExp(
            `hosts\\.toml of .*: cannot use client certificate .*${cert}, client key .*${key}: `,
          ),
        );
        assert.doesNotMatch(result.stderr, /internal error|U0VDUkVUS0VZ/, result.stderr);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
