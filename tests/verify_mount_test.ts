/**
 * Verified reads through real mounts (FUSE backend) and `serve`, with a real docker-registry
 * behind a fault proxy that flips a byte of layer replies: readers get EIO, never wrong
 * bytes; a single flipped reply is fetched again and reads correctly; a tampered table is
 * refused at mount; `--require-verified` refuses an image without tables; `checksums --push`
 * makes tables for an image pushed by another client; `inspect` shows them.
 */
import assert from "node:assert/strict";
import { command, path, requires, root } from "./_support/requires.ts";
import {
  type FaultRule,
  isBlobGetOf,
  isManifestGet,
  startFaultProxy,
} from "./_support/fault_proxy.ts";
import { assertCliError, assertSuccess, runCli } from "./_support/cli.ts";
import {
  getBlob,
  getManifest,
  OCI_INDEX,
  OCI_MANIFEST,
  pushImage,
  putManifestDescriptor,
  uploadBlob,
} from "./_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE } from "./_support/oci_fixtures.ts";
import { type MountSandbox, mountSandbox, mountsBelow } from "./_support/mounts.ts";
import { serve } from "./_support/serve_process.ts";
import { waitFor } from "./_support/wait.ts";
import {
  flipRule,
  layerDigestOf,
  MKFS,
  pushWithTables,
  readError,
  setup,
  SMALL_TEXT,
} from "./_support/verify_image.ts";

const ignore = requires(root(), path("/dev/fuse"), path(MKFS, "mkfs.erofs 1.9.3"));

/** The sandbox's environment with its own disk cache and state dir beside its runtime dir. */
function isolatedEnv(sandbox: MountSandbox): Record<string, string> {
  return {
    ...sandbox.env,
    EROFS_OCI_CACHE_DIR: `${sandbox.runtimeDir}-cache`,
    EROFS_OCI_STATE_DIR: `${sandbox.runtimeDir}-state`,
  };
}

Deno.test({
  name:
    "verified mount (FUSE): flipped layer bytes → EIO, never wrong bytes; one flip is refetched",
  ignore,
  async fn() {
    await using s = await setup();
    const cli = (args: string[], env: Record<string, string> = {}) =>
      runCli(args, { env, timeoutMs: 60_000 });
    const layer = await pushWithTables(s, "v/app", 60_000);
    assert.match(layer.annotations?.["io.github.erofs-oci.chunk-digests"] ?? "", /^sha256:/);

    const mountWith = async (
      rules: FaultRule[],
      check: (mnt: string, logs: () => string, env: Record<string, string>) => Promise<void>,
    ) => {
      await using proxy = await startFaultProxy(s.registry.host, rules);
      const sandbox = await mountSandbox();
      const env = isolatedEnv(sandbox);
      try {
        const mounted = await cli([
          "mount",
          `${proxy.host}/v/app:v1`,
          sandbox.target,
          "--plain-http",
          "--backend",
          "fuse",
          "--require-verified",
        ], env);
        assertSuccess(mounted);
        assert.doesNotMatch(mounted.stderr, /not verified|not bound/);
        await check(sandbox.target, () => sandbox.serverLogs(), env);
        assertSuccess(await cli(["umount", sandbox.target], env));
      } finally {
        await sandbox.cleanup();
        await Deno.remove(env.EROFS_OCI_CACHE_DIR, { recursive: true }).catch(() => {});
        await Deno.remove(env.EROFS_OCI_STATE_DIR, { recursive: true }).catch(() => {});
      }
      return proxy;
    };

    // Every reply covering the byte is flipped: that part of big.bin is EIO, the rest reads.
    await mountWith([flipRule(layer.digest, s.flipOffset)], async (mnt, logs, env) => {
      assert.equal(await Deno.readTextFile(`${mnt}/small.txt`), SMALL_TEXT);
      const error = await readError(`${mnt}/big.bin`);
      assert.match(error ?? "read succeeded", /Input\/output error|EIO/, logs());
      // The failed read is counted, for list and metrics.
      const listed = JSON.parse((await cli(["list", "--json"], env)).stdout)[0];
      assert(listed.readErrors > 0, JSON.stringify(listed));
      assert(listed.layers[0].readErrors > 0);
      const table = await cli(["list"], env);
      assert.match(table.stdout, /serving, \d+ read\(s\) failed/);
      const metrics = await cli(["metrics"], env);
      assert.match(metrics.stdout, /^erofs_oci_layer_read_errors_total\{[^}]*\} [1-9]\d*$/m);
      using file = await Deno.open(`${mnt}/big.bin`);
      const head = new Uint8Array(64 * 1024);
      assert.equal(await file.read(head), head.length);
      assert.deepEqual(head, s.big.subarray(0, head.length));
      const log = logs();
      assert.match(log, new RegExp(`layer ${layer.digest}: bytes at offset \\d+ \\(chunk 2\\)`));
      assert.match(log, /again; the read fails \(EIO\)/);
    });

    // One flipped reply: fetched again, verified, and the file reads whole.
    const proxy = await mountWith([flipRule(layer.digest, s.flipOffset, 1)], async (mnt, logs) => {
      assert.deepEqual(await Deno.readFile(`${mnt}/big.bin`), s.big, logs());
      assert.match(logs(), /fetching it again/);
    });
    assert.equal(proxy.hits(0), 1);
  },
});

Deno.test({
  name: "verified serve: flipped layer bytes fail the client's read (nbdcopy), never wrong bytes",
  ignore: requires(root(), path(MKFS, "mkfs.erofs 1.9.3"), command("nbdcopy")),
  async fn() {
    await using s = await setup();
    const layer = await pushWithTables(s, "v/served");
    await using proxy = await startFaultProxy(s.registry.host, [
      flipRule(layer.digest, s.flipOffset),
    ]);
    await using served = await serve(`${proxy.host}/v/served:v1`, [
      "--plain-http",
      "--no-disk-cache",
      "--require-verified",
    ]);
    const out = await new Deno.Command("nbdcopy", { args: [served.uri, `${s.work}/out.img`] })
      .output();
    assert(!out.success, "nbdcopy copied an image with a flipped byte");
    let copied = new Uint8Array();
    try {
      copied = Deno.readFileSync(`${s.work}/out.img`);
    } catch { /* nothing written */ }
    // Whatever reached the client is the image's bytes (zeros where nothing was written).
    if (copied.length > s.flipOffset) {
      assert.notEqual(copied[s.flipOffset], s.image[s.flipOffset] ^ 0xff);
    }
    assert.match(served.stderr(), /do not match the chunk-digest table again/);
    // The server says the client's read failed, and why (one line, not per read). It is said
    // once the reply is sent: the client may have ended before the line reaches the pipe.
    const said = /warning: a client's READ of/;
    await waitFor("the server's failed-read warning", () => said.test(served.stderr()), 10_000)
      .catch(() => {});
    assert.match(
      served.stderr(),
      /warning: a client's READ of \d+ bytes at \d+ failed \(EIO\): layer sha256:[0-9a-f]{64}: bytes at/,
    );
    assert(proxy.hits(0) >= 2, "the chunk was fetched again before failing");
  },
});

Deno.test({
  name: "verified serve: a superblock the registry keeps flipping fails the start with one line",
  ignore: requires(root(), path(MKFS, "mkfs.erofs 1.9.3")),
  async fn() {
    await using s = await setup();
    const layer = await pushWithTables(s, "v/head");
    // Every GET of the superblock's chunk is wrong (was "internal error … report it").
    await using proxy = await startFaultProxy(s.registry.host, [flipRule(layer.digest, 1100)]);
    const result = await runCli(
      [
        "serve",
        `${proxy.host}/v/head:v1`,
        "--plain-http",
        "--no-disk-cache",
        "--listen",
        "tcp:127.0.0.1:0",
      ],
      { timeoutMs: 60_000 },
    );
    // The mismatches are logged as they happen (digest, offset, source); then one error line.
    assert.equal(result.code, 1, result.stderr);
    assert.doesNotMatch(result.stderr, /internal error|\n\s+at /);
    const lines = result.stderr.trimEnd().split("\n");
    assert.match(lines.at(-2)!, /^erofs-oci: layer .* do not match the chunk-digest table$/);
    assert.match(lines.at(-1)!, /^ {2}hint: the registry \(or a mirror or proxy on the way\)/);
  },
});

Deno.test({
  name:
    "verified mount: a tampered table is refused; --require-verified refuses an image without tables; checksums --push and inspect",
  ignore,
  async fn() {
    await using s = await setup();
    const sandbox = await mountSandbox();
    const env = isolatedEnv(sandbox);
    const cli = (args: string[]) => runCli(args, { env, timeoutMs: 60_000 });
    const mount = (host: string, repo: string, extra: string[] = []) =>
      cli([
        "mount",
        `${host}/${repo}:v1`,
        sandbox.target,
        "--plain-http",
        "--backend",
        "fuse",
        ...extra,
      ]);
    try {
      // Tampered table: the registry answers other bytes for the table the manifest names.
      const table = (await pushWithTables(s, "v/t", 60_000))
        .annotations!["io.github.erofs-oci.chunk-digests"];
      {
        await using proxy = await startFaultProxy(s.registry.host, [
          { match: isBlobGetOf(table), fault: { kind: "corrupt" } },
        ]);
        assertCliError(
          await mount(proxy.host, "v/t"),
          1,
          /chunk table .* does not match its digest/,
        );
        assert.deepEqual(mountsBelow(sandbox.target), []);
      }
      // A table kept by an earlier mount is read back instead of fetched (no GET of it), and
      // only while it still hashes to the digest the manifest names.
      assertSuccess(await mount(s.registry.host, "v/t"));
      assertSuccess(await cli(["umount", sandbox.target]));
      {
        await using proxy = await startFaultProxy(s.registry.host, [
          { match: isBlobGetOf(table), fault: { kind: "corrupt" } },
        ]);
        assertSuccess(await mount(proxy.host, "v/t"));
        assert.equal(proxy.hits(0), 0, "the kept table was fetched again");
        assertSuccess(await cli(["umount", sandbox.target]));
        const kept = `${env.EROFS_OCI_STATE_DIR}/tables/${table.replace(":", "-")}.json`;
        const bytes = Deno.readFileSync(kept);
        bytes[bytes.length >> 1] ^= 1;
        Deno.writeFileSync(kept, bytes);
        assertCliError(
          await mount(proxy.host, "v/t"),
          1,
          /chunk table .* does not match its digest/,
        );
        assert.equal(proxy.hits(0), 1, "a damaged kept table is fetched again");
        assert.deepEqual(mountsBelow(sandbox.target), []);
      }
      const inspected = await cli(["inspect", `${s.registry.host}/v/t:v1`, "--plain-http"]);
      assertSuccess(inspected);
      assert.match(inspected.stdout, /TABLE[\s\S]*application\/vnd\.erofs\s+bound/);

      // An image pushed by another client: no table.
      await pushImage(s.registry, "v/other", "v1", [{
        bytes: s.image,
        mediaType: EROFS_MEDIA_TYPE,
      }]);
      assertCliError(
        await mount(s.registry.host, "v/other", ["--require-verified"]),
        1,
        /--require-verified: layer 0 of this image has no chunk-digest table/,
      );
      assert.deepEqual(mountsBelow(sandbox.target), []);
      const unverified = await mount(s.registry.host, "v/other");
      assertSuccess(unverified);
      assert.match(
        unverified.stderr,
        /no chunk-digest table, bytes read from the registry are not verified/,
      );
      assertSuccess(await cli(["umount", sandbox.target]));
      const before = await cli(["inspect", `${s.registry.host}/v/other:v1`, "--plain-http"]);
      assert.match(before.stdout, /application\/vnd\.erofs\s+-/);

      // checksums --push: a table found by referrer, not bound by the manifest; reads verified.
      const made = await cli([
        "checksums",
        `${s.registry.host}/v/other:v1`,
        "--plain-http",
        "--push",
      ]);
      assertSuccess(made);
      const after = await cli([
        "inspect",
        `${s.registry.host}/v/other:v1`,
        "--plain-http",
        "--json",
      ]);
      assert.equal(JSON.parse(after.stdout).layers[0].chunkTable.bound, false);
      const layer = await layerDigestOf(s.registry, "v/other");
      await using proxy = await startFaultProxy(s.registry.host, [
        flipRule(layer.digest, s.flipOffset),
      ]);
      const verified = await mount(proxy.host, "v/other", ["--require-verified"]);
      assertSuccess(verified);
      assert.match(verified.stderr, /table not bound by the manifest/);
      assert.equal(await Deno.readTextFile(`${sandbox.target}/small.txt`), SMALL_TEXT);
      assert.match(
        await readError(`${sandbox.target}/big.bin`) ?? "read succeeded",
        /Input\/output error|EIO/,
      );
      assertSuccess(await cli(["umount", sandbox.target]));
    } finally {
      await sandbox.cleanup();
      await Deno.remove(env.EROFS_OCI_CACHE_DIR, { recursive: true }).catch(() => {});
      await Deno.remove(env.EROFS_OCI_STATE_DIR, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "verified mount: bytes a mirror flips are fetched again from the registry itself",
  ignore,
  async fn() {
    await using s = await setup();
    const layer = await pushWithTables(s, "v/mirrored", 60_000);
    // The mirror: a proxy in front of the same registry that flips a byte of big.bin, always.
    await using mirror = await startFaultProxy(s.registry.host, [
      flipRule(layer.digest, s.flipOffset),
    ]);
    const configDir = await Deno.makeTempDir({ prefix: "erofs-oci-certs.d-" });
    Deno.mkdirSync(`${configDir}/${s.registry.host}`);
    Deno.writeTextFileSync(
      `${configDir}/${s.registry.host}/hosts.toml`,
      `[host."http://${mirror.host}"]\n  capabilities = ["pull"]\n`,
    );
    const sandbox = await mountSandbox();
    const env = { ...sandbox.env, EROFS_OCI_REGISTRY_CONFIG_DIR: configDir };
    const cli = (args: string[]) => runCli(args, { env, timeoutMs: 60_000 });
    try {
      assertSuccess(
        await cli([
          "mount",
          `${s.registry.host}/v/mirrored:v1`,
          sandbox.target,
          "--plain-http",
          "--backend",
          "fuse",
        ]),
      );
      assert.deepEqual(
        await Deno.readFile(`${sandbox.target}/big.bin`),
        s.big,
        sandbox.serverLogs(),
      );
      assert(mirror.hits(0) >= 1, "the mirror answered the first read");
      assert.match(sandbox.serverLogs(), /do not match the chunk-digest table; fetching it again/);
      assertSuccess(await cli(["umount", sandbox.target]));
    } finally {
      await sandbox.cleanup();
      await Deno.remove(configDir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "verified mount: an image copied by skopeo without its tables is refused with the way out; inspect says missing",
  ignore: requires(root(), path("/dev/fuse"), path(MKFS, "mkfs.erofs 1.9.3"), command("skopeo")),
  async fn() {
    await using s = await setup();
    const sandbox = await mountSandbox();
    const env = isolatedEnv(sandbox);
    const cli = (args: string[]) => runCli(args, { env, timeoutMs: 60_000 });
    const copy = `${s.registry.host}/v/copied:v1`;
    const mount = () => cli(["mount", copy, sandbox.target, "--plain-http", "--backend", "fuse"]);
    try {
      await pushWithTables(s, "v/orig", 60_000);
      // A copy by a tool that knows the manifest, config and layers only.
      const copied = await new Deno.Command("skopeo", {
        args: [
          "copy",
          "--quiet",
          "--src-tls-verify=false",
          "--dest-tls-verify=false",
          `docker://${s.registry.host}/v/orig:v1`,
          `docker://${copy}`,
        ],
      }).output();
      assert(copied.success, new TextDecoder().decode(copied.stderr));

      const inspected = await cli(["inspect", copy]);
      assertSuccess(inspected);
      assert.match(inspected.stdout, /\smissing\n?$/);
      assert.match(inspected.stderr, /registry does not have 1 chunk-digest table/);
      // The image named (it said "IMAGE").
      assert.ok(inspected.stderr.includes(`erofs-oci checksums ${copy} --push`), inspected.stderr);

      const refused = await mount();
      assertCliError(refused, 1, /answered 404 for the chunk table sha256:/);
      assert.match(
        refused.stderr,
        /copied without its chunk-digest tables.*checksums \S+\/v\/copied:v1 --push/,
      );
      assert.deepEqual(mountsBelow(sandbox.target), [], "nothing mounted");

      // The way out the hint gives: the same tables again, and the copy mounts.
      const remade = await cli(["checksums", copy, "--push"]);
      assertSuccess(remade);
      // It said "(bound one exists)", as if the registry had it.
      assert.match(remade.stdout, /\(the one the manifest names\)/);
      assert.match((await cli(["inspect", copy])).stdout, /\sbound\n?$/);
      assertSuccess(await mount());
      assert.equal(await Deno.readTextFile(`${sandbox.target}/small.txt`), SMALL_TEXT);
      assertSuccess(await cli(["umount", sandbox.target]));
    } finally {
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "mount: a referrers fallback tag holding something else is no referrer, not a failure",
  ignore,
  async fn() {
    await using s = await setup();
    const sandbox = await mountSandbox();
    const env = isolatedEnv(sandbox);
    const cli = (args: string[]) => runCli(args, { env, timeoutMs: 60_000 });
    try {
      // Pushed by another client: no tables, so the referrers tag is looked up.
      const pushed = await pushImage(s.registry, "v/tagged", "v1", [
        { bytes: s.image, mediaType: EROFS_MEDIA_TYPE },
      ]);
      // Another image under the fallback tag `sha256-<hex>`: a manifest, not an index.
      await pushImage(s.registry, "v/tagged", pushed.manifestDigest.replace(":", "-"), [
        { bytes: s.image, mediaType: EROFS_MEDIA_TYPE },
      ]);
      // docker-registry answers 404 for a tag that holds no index when only an index is
      // accepted; other registries send what the tag holds, as the proxy makes it do here.
      const tag = pushed.manifestDigest.replace(":", "-");
      await using proxy = await startFaultProxy(s.registry.host, [{
        match: (r) => isManifestGet(r) && r.path.endsWith(`/manifests/${tag}`),
        fault: { kind: "accept", value: `${OCI_INDEX}, ${OCI_MANIFEST}` },
      }]);
      const image = `${proxy.host}/v/tagged:v1`;
      const mounted = await cli([
        "mount",
        image,
        sandbox.target,
        "--plain-http",
        "--backend",
        "fuse",
      ]);
      assertSuccess(mounted);
      assert.match(
        mounted.stderr,
        /referrers tag sha256-[0-9a-f]{64} .* not an image index; taken as no referrers/,
      );
      assert.match(mounted.stderr, /no chunk-digest table/);
      assert.equal(await Deno.readTextFile(`${sandbox.target}/small.txt`), SMALL_TEXT);
      assertSuccess(await cli(["umount", sandbox.target]));
      const refused = await cli([
        "mount",
        image,
        sandbox.target,
        "--plain-http",
        "--backend",
        "fuse",
        "--require-verified",
      ]);
      assert.equal(refused.code, 1, refused.stderr);
      assert.match(
        refused.stderr,
        /--require-verified: layer 0 of this image has no chunk-digest table/,
      );

      // Adding tables there would replace what another tool keeps under the tag: refused.
      const pushTables = await cli(["checksums", `${s.registry.host}/v/tagged:v1`, "--push"]);
      assertCliError(
        pushTables,
        1,
        /referrers tag sha256-[0-9a-f]{64} .* holds something else .*not replaced/,
      );
      const kept = await getManifest(s.registry, "v/tagged", tag);
      assert.equal(kept.mediaType, OCI_MANIFEST, "the other image is still under the tag");
    } finally {
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name:
    "a 1 MiB chunk-table annotation: mount refuses in one short line, inspect asks no such blob",
  ignore,
  async fn() {
    await using s = await setup();
    const sandbox = await mountSandbox();
    const env = isolatedEnv(sandbox);
    try {
      const pushed = await pushImage(s.registry, "v/annotated", "plain", [
        { bytes: s.image, mediaType: EROFS_MEDIA_TYPE },
      ]);
      const manifest = structuredClone(
        (await getManifest(s.registry, "v/annotated", "plain")).json,
      ) as { layers: { annotations?: Record<string, string> }[] };
      manifest.layers[0].annotations = {
        "io.github.erofs-oci.chunk-digests": "x".repeat(1 << 20),
      };
      await putManifestDescriptor(s.registry, "v/annotated", "v1", manifest, OCI_MANIFEST);
      await using proxy = await startFaultProxy(s.registry.host, []);
      const ref = `${proxy.host}/v/annotated:v1`;
      const mounted = await runCli(
        ["mount", ref, sandbox.target, "--plain-http", "--backend", "fuse"],
        { env, timeoutMs: 60_000 },
      );
      assertCliError(
        mounted,
        1,
        new RegExp(
          `layer ${pushed.layers[0].digest}: chunk table digest 'x{100}…' is malformed`,
        ),
      );
      assert.ok(mounted.stderr.length < 2000, `stderr of ${mounted.stderr.length} characters`);
      assert.deepEqual(mountsBelow(sandbox.target), []);
      // inspect still shows the image, says the tables were not looked up, asks for no blob.
      const inspected = await runCli(["inspect", ref, "--plain-http"], { env, timeoutMs: 60_000 });
      assertSuccess(inspected);
      assert.match(inspected.stderr, /chunk-digest tables not looked up: .*not a digest/);
      assert.ok(inspected.stderr.length < 2000, `stderr of ${inspected.stderr.length} characters`);
      assert.ok(
        inspected.stdout.length < 10_000,
        `stdout of ${inspected.stdout.length} characters`,
      );
      assert.ok(
        proxy.requests.every((r) => !r.path.includes("xxxxxxxx")),
        "no request for the annotation's value",
      );
    } finally {
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name:
    "verified mount with a full state dir: the table is kept in the runtime dir, reads verified",
  ignore,
  async fn() {
    await using s = await setup();
    const sandbox = await mountSandbox();
    // A state dir with room for nothing: the table cannot be kept there.
    const full = await Deno.makeTempDir({ prefix: "erofs-oci-full-state-" });
    const mounted = await new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", "size=4k,mode=0700", "tmpfs", full],
    }).output();
    assert.ok(mounted.success, new TextDecoder().decode(mounted.stderr));
    const env = { ...isolatedEnv(sandbox), EROFS_OCI_STATE_DIR: full };
    try {
      Deno.mkdirSync(`${full}/tables`, { mode: 0o700 });
      const filler = new Uint8Array(4096).fill(1);
      try {
        for (let i = 0; i < 8; i++) Deno.writeFileSync(`${full}/filler${i}`, filler);
      } catch { /* full */ }
      const table = (await pushWithTables(s, "v/full", 60_000))
        .annotations!["io.github.erofs-oci.chunk-digests"];
      const result = await runCli(
        [
          "mount",
          `${s.registry.host}/v/full:v1`,
          sandbox.target,
          "--plain-http",
          "--backend",
          "fuse",
          "--require-verified",
        ],
        { env, timeoutMs: 60_000 },
      );
      assertSuccess(result);
      assert.match(
        result.stderr,
        new RegExp(`cannot keep chunk tables \\(no space left\\): kept in ${sandbox.runtimeDir}`),
      );
      const kept = `${sandbox.runtimeDir}/tables/${table.replace(":", "-")}.json`;
      assert.ok(Deno.statSync(kept).isFile, kept);
      assert.equal(Deno.readTextFileSync(`${sandbox.target}/small.txt`), SMALL_TEXT);
      assertSuccess(await runCli(["umount", sandbox.target], { env }));
      assert.deepEqual(mountsBelow(sandbox.target), []);
    } finally {
      await runCli(["umount", sandbox.target], { env }).catch(() => {});
      await new Deno.Command("umount", { args: [full] }).output();
      await Deno.remove(full, { recursive: true });
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name:
    "verified mount: a referrer table's metadata pack swapped for other bytes is not served (the layer's are)",
  ignore,
  async fn() {
    await using s = await setup();
    const sandbox = await mountSandbox();
    const env = isolatedEnv(sandbox);
    const repository = "v/pack";
    try {
      const pushed = await pushImage(s.registry, repository, "v1", [{
        bytes: s.image,
        mediaType: EROFS_MEDIA_TYPE,
      }]);
      assertSuccess(
        await runCli(
          ["checksums", `${s.registry.host}/${repository}:v1`, "--plain-http", "--push"],
          { env, timeoutMs: 60_000 },
        ),
      );
      // Whoever may push one artifact to the repository: a table naming a pack of its own making
      // (small.txt renamed, its text replaced), the ranges' digests made to fit it, everything
      // else as the genuine table has it; the image and its layer untouched.
      const fallbackTag = `sha256-${pushed.manifestDigest.slice("sha256:".length)}`;
      const referrers = (await getManifest(s.registry, repository, fallbackTag)).json as {
        manifests: { digest: string; artifactType?: string }[];
      };
      const artifactEntry = referrers.manifests[0];
      const artifact = (await getManifest(s.registry, repository, artifactEntry.digest)).json as {
        layers: { mediaType: string; digest: string; size: number }[];
      };
      const tableAt = artifact.layers.findIndex((l) => l.mediaType.includes("chunk"));
      const table = JSON.parse(new TextDecoder().decode(
        await getBlob(s.registry, repository, artifact.layers[tableAt].digest),
      ));
      const flat: number[] = table.metadata.ranges;
      const ranges = flat.flatMap((offset, i) =>
        i % 2 === 0 ? [{ offset, length: flat[i + 1] }] : []
      );
      const pack = new Uint8Array(ranges.reduce((n, r) => n + r.length, 0));
      let at = 0;
      for (const r of ranges) {
        pack.set(s.image.subarray(r.offset, r.offset + r.length), at);
        at += r.length;
      }
      const replace = (from: string, to: string) => {
        const needle = new TextEncoder().encode(from);
        const found = pack.findIndex((_, i) => needle.every((b, j) => pack[i + j] === b));
        assert.ok(found >= 0, `${JSON.stringify(from)} in the listed metadata`);
        pack.set(new TextEncoder().encode(to), found);
      };
      replace("small.txt", "zmall.txt");
      replace(SMALL_TEXT, "forged small file!!\n");
      pack[ranges[0].offset === 0 ? 1024 + 8 : 0] &= ~1; // no superblock checksum to fail
      const hex = (bytes: ArrayBuffer) =>
        Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
      let digests = "";
      at = 0;
      for (const r of ranges) {
        digests += hex(await crypto.subtle.digest("SHA-256", pack.subarray(at, at + r.length)));
        at += r.length;
      }
      const packBlob = await uploadBlob(s.registry, repository, pack, "application/octet-stream");
      table.metadata = { ...table.metadata, digests, pack: packBlob.digest };
      const tableBytes = new TextEncoder().encode(JSON.stringify(table));
      const tableBlob = await uploadBlob(
        s.registry,
        repository,
        tableBytes,
        artifact.layers[tableAt].mediaType,
      );
      artifact.layers[tableAt] = { ...artifact.layers[tableAt], ...tableBlob };
      const forged = await putManifestDescriptor(
        s.registry,
        repository,
        "forged",
        artifact,
        OCI_MANIFEST,
      );
      await putManifestDescriptor(s.registry, repository, fallbackTag, {
        schemaVersion: 2,
        mediaType: OCI_INDEX,
        manifests: [{ ...artifactEntry, digest: forged.digest, size: forged.size }],
      }, OCI_INDEX);

      const mounted = await runCli([
        "mount",
        `${s.registry.host}/${repository}@${pushed.manifestDigest}`,
        sandbox.target,
        "--plain-http",
        "--backend",
        "fuse",
        "--require-verified",
      ], { env, timeoutMs: 60_000 });
      assertSuccess(mounted);
      // It showed zmall.txt with the forged text: the pack was taken on its own digest, which
      // only the (unbound) table vouched for.
      const names = [...Deno.readDirSync(sandbox.target)].map((e) => e.name).sort();
      assert.ok(names.includes("small.txt") && !names.includes("zmall.txt"), names.join(" "));
      assert.equal(await Deno.readTextFile(`${sandbox.target}/small.txt`), SMALL_TEXT);
      assertSuccess(await runCli(["umount", sandbox.target], { env }));
    } finally {
      await sandbox.cleanup();
      await Deno.remove(env.EROFS_OCI_CACHE_DIR, { recursive: true }).catch(() => {});
      await Deno.remove(env.EROFS_OCI_STATE_DIR, { recursive: true }).catch(() => {});
    }
  },
});
