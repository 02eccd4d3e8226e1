/**
 * How a cold mount fetches the chunk table's listed metadata (issue 12's mount target): the
 * requests are split into a few multi-range GETs side by side only when there are enough parts
 * (splitRequests), one GET that fails or answers wrong lengths costs only its own ranges (read
 * again one by one, every range still checked), and `mount` asks for the table (then the
 * metadata) and the trace as soon as the manifest is there — before the layer's head, with no
 * second GET of the manifest, which itself is asked for while mount's modules load — and still
 * fails cleanly, leaving nothing behind, when the resolution fails after those started.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  loadMetadataRanges,
  type MetadataRangeReader,
  MIN_PARTS_PER_REQUEST,
  splitRequests,
} from "../lib/verify/load_metadata_ranges.ts";
import { MAX_METADATA_BYTES, type MetadataRanges } from "../lib/verify/metadata_ranges.ts";
import { annotatedPack, tableAnnotations } from "../lib/verify/table_artifact.ts";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { isBlobGetOf, startFaultProxy } from "./_support/fault_proxy.ts";
import { assertCliError, assertSuccess, runCli } from "./_support/cli.ts";
import {
  expectedManifest,
  manifestOf,
  mountSandbox,
  mountsBelow,
  mountServersOf,
} from "./_support/mounts.ts";

Deno.test("metadata fetch: requests split into consecutive groups, only when there are enough", () => {
  const requests = (n: number, length = 4096) =>
    Array.from({ length: n }, (_, i) => ({ offset: i * 1_000_000, length }));
  // Too few parts for two requests of MIN_PARTS_PER_REQUEST: one group, the same order.
  for (const n of [0, 1, 5, 2 * MIN_PARTS_PER_REQUEST - 1]) {
    const list = requests(n);
    const groups = splitRequests(list, 2, MIN_PARTS_PER_REQUEST);
    assert.equal(groups.length, n ? 1 : 0, `${n} requests`);
    assert.deepEqual(groups.flat(), list);
  }
  for (const [n, count] of [[64, 2], [123, 2], [437, 2], [437, 3], [1000, 4]]) {
    const list = requests(n);
    const groups = splitRequests(list, count, MIN_PARTS_PER_REQUEST);
    assert.equal(groups.length, count, `${n} requests in ${count}`);
    assert.deepEqual(groups.flat(), list, "every request once, in order");
    for (const g of groups) assert(g.length >= MIN_PARTS_PER_REQUEST, `${g.length} parts`);
    // Equal parts: equal groups, give or take one.
    const sizes = groups.map((g) => g.length);
    assert(Math.max(...sizes) - Math.min(...sizes) <= 1, `${sizes}`);
  }
  // Balanced by cost (a part ~ 64 KiB), not count: one 4 MiB request weighs like 65 small ones.
  const mixed = [
    { offset: 0, length: 4 << 20 },
    ...requests(130).map((r) => ({ ...r, offset: r.offset + (8 << 20) })),
  ];
  const [first, second] = splitRequests(mixed, 2, 1);
  assert(first.length < second.length, `${first.length} vs ${second.length}`);
});

Deno.test("metadata pack annotations: named with the table; hostile values are ignored", () => {
  const digest = `sha256:${"ab".repeat(32)}`;
  const made = tableAnnotations({ digest, pack: { digest, size: 2_312_345 } });
  assert.deepEqual(annotatedPack(made), { digest, sizeBytes: 2_312_345 });
  assert.deepEqual(Object.keys(tableAnnotations({ digest })), [
    "io.github.erofs-oci.chunk-digests",
  ]);
  const size = (value: string) => ({ ...made, "io.github.erofs-oci.metadata-pack.size": value });
  for (
    const bad of [
      undefined,
      {},
      size("0"),
      size("-1"),
      size("1e6"),
      size("007"),
      size(String(MAX_METADATA_BYTES + 1)),
      size("99999999999999999999"),
      { ...made, "io.github.erofs-oci.metadata-pack": "sha256:../../etc/passwd" },
    ]
  ) assert.equal(annotatedPack(bad), undefined, JSON.stringify(bad));
  assert.deepEqual(annotatedPack(size(String(MAX_METADATA_BYTES))), {
    digest,
    sizeBytes: MAX_METADATA_BYTES,
  });
});

/** Random bytes and a list of `n` ranges of them, 64 KiB apart (not merged into one request). */
function listOf(n: number) {
  const step = 256 << 10;
  const bytes = new Uint8Array(n * step);
  for (let at = 0; at < bytes.length; at += 65536) {
    crypto.getRandomValues(bytes.subarray(at, at + 65536));
  }
  const offsets = Array.from({ length: n }, (_, i) => i * step);
  const lengths = offsets.map((_, i) => 4096 + (i % 3) * 4096);
  const digests = new Uint8Array(32 * n);
  offsets.forEach((offset, i) =>
    digests.set(
      createHash("sha256").update(bytes.subarray(offset, offset + lengths[i])).digest(),
      32 * i,
    )
  );
  const ranges: MetadataRanges = { offsets, lengths, digests };
  return { bytes, ranges };
}

/** A blob over `bytes` whose multi-range call number `bad` fails as `how` says. */
function blobOf(bytes: Uint8Array, bad: number, how: "reject" | "short" | "lie") {
  const calls: number[] = [];
  const singles: number[] = [];
  const blob: MetadataRangeReader = {
    read(offset, length) {
      singles.push(offset);
      return Promise.resolve(bytes.slice(offset, offset + length));
    },
    readRanges(ranges) {
      const call = calls.push(ranges.length) - 1;
      if (call === bad && how === "reject") return Promise.reject(new Error("connection reset"));
      return Promise.resolve(ranges.map((r) => {
        const out = bytes.slice(r.offset, r.offset + r.length);
        if (call !== bad) return out;
        if (how === "short") return out.subarray(0, out.length - 1);
        out[0] ^= 1; // "lie": right length, wrong bytes
        return out;
      }));
    },
  };
  return { blob, calls, singles };
}

Deno.test("metadata fetch: a failed request of the split costs only its ranges, each still checked", async () => {
  const n = 3 * MIN_PARTS_PER_REQUEST;
  const { bytes, ranges } = listOf(n);
  for (const how of ["reject", "short", "lie"] as const) {
    for (const bad of [0, 1]) {
      const { blob, calls, singles } = blobOf(bytes, bad, how);
      let sidecar: Uint8Array | undefined;
      const got = await loadMetadataRanges(ranges, blob, {
        sidecar: { read: () => undefined, write: (b) => sidecar = b },
      });
      const what = `${how} in request ${bad}`;
      assert.equal(calls.length, 2, `${what}: two multi-range requests`);
      assert.equal(calls[0] + calls[1], n, what);
      // The failed request's ranges, and only those, are read again one by one.
      const failed = bad === 0 ? ranges.offsets.slice(0, calls[0]) : ranges.offsets.slice(calls[0]);
      assert.deepEqual([...singles].sort((a, b) => a - b), failed, what);
      assert.equal(got.bad, how === "lie" ? failed.length : 0, what);
      assert.equal(got.pieces.length, n, what);
      for (const { offset, bytes: piece } of got.pieces) {
        assert.deepEqual(
          piece,
          bytes.subarray(offset, offset + piece.length),
          `${what} @${offset}`,
        );
      }
      assert(sidecar, `${what}: every range fetched in the end, the sidecar written`);
    }
  }
});

Deno.test("metadata fetch: a hostile blob that answers nothing right yields no piece, no sidecar", async () => {
  const { bytes, ranges } = listOf(2 * MIN_PARTS_PER_REQUEST);
  const wrong = bytes.map((b) => b ^ 0x55);
  let sidecar: Uint8Array | undefined;
  const got = await loadMetadataRanges(ranges, {
    read: (offset, length) => Promise.resolve(wrong.slice(offset, offset + length)),
    readRanges: (rs) => Promise.resolve(rs.map((r) => wrong.slice(r.offset, r.offset + r.length))),
  }, { sidecar: { read: () => undefined, write: (b) => sidecar = b } });
  assert.equal(got.pieces.length, 0);
  assert.equal(sidecar, undefined);
});

const FIXTURE = `${FIXTURES}/basic.erofs`;

/** Pushes FIXTURE as `repository:v1` with the CLI (table and all); its manifest as stored. */
async function pushFixture(host: string, repository: string) {
  assertSuccess(
    await runCli(["push", `${host}/${repository}:v1`, FIXTURE, "--plain-http"], {
      timeoutMs: 60_000,
    }),
  );
  const response = await fetch(`http://${host}/v2/${repository}/manifests/v1`, {
    headers: { accept: "application/vnd.oci.image.manifest.v1+json" },
  });
  return JSON.parse(await response.text());
}
const ignoreMount = requires(root(), path("/dev/fuse"), command("docker-registry"));

/** Mounts `image` (FUSE, plain HTTP) at the sandbox's target; the EROFS_OCI_TIMING marks. */
async function mountWithMarks(
  image: string,
  sandbox: { target: string; env: Record<string, string> },
): Promise<string> {
  const timingFile = `${sandbox.target}.timing`;
  assertSuccess(
    await runCli(["mount", image, sandbox.target, "--plain-http", "--backend", "fuse"], {
      env: { ...sandbox.env, EROFS_OCI_TIMING: timingFile },
      timeoutMs: 60_000,
    }),
  );
  const marks = Deno.readTextFileSync(timingFile);
  Deno.removeSync(timingFile);
  return marks;
}

Deno.test({
  name: "mount: the chunk table and the trace are asked for right after the manifest, fetched once",
  ignore: ignoreMount,
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const manifest = await pushFixture(registry.host, "mf/early");
    // The config blob answers 1.5 s late: what does not wait for it is asked for meanwhile.
    const CONFIG_DELAY_MS = 1500;
    await using proxy = await startFaultProxy(registry.host, [
      {
        match: isBlobGetOf(manifest.config.digest),
        fault: { kind: "delay", ms: CONFIG_DELAY_MS },
      },
    ]);
    const sandbox = await mountSandbox();
    try {
      const marks = await mountWithMarks(`${proxy.host}/mf/early:v1`, sandbox);
      // Asked for on the early look at the command line (manifest_ahead.ts) and taken by
      // mount: the only GET of the manifest (below).
      assert.match(marks, / cli: manifest asked ahead /);
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      const log = sandbox.serverLogs();
      assert.match(log, /layer 0: \d+ bytes of listed metadata from mount/, log);
      const layer = manifest.layers[0];
      const table = layer.annotations["io.github.erofs-oci.chunk-digests"];
      const gets = proxy.requests.filter((r) => r.method === "GET");
      const trail = gets.map((r) => `${r.timeMs} ${r.path} ${r.range ?? ""}`).join("\n");
      const manifestGets = gets.filter((r) => /\/manifests\/(v1|sha256:)/.test(r.path));
      assert.deepEqual(manifestGets.map((r) => r.path), ["/v2/mf/early/manifests/v1"], trail);
      const arrival = (what: string, match: (r: (typeof gets)[number]) => boolean) => {
        const found = gets.find(match);
        assert(found, `no GET of ${what}:\n${trail}`);
        return found.timeMs;
      };
      const config = arrival("the config", (r) => isBlobGetOf(manifest.config.digest)(toInfo(r)));
      // Each asked for before the config's answer came (it came CONFIG_DELAY_MS late).
      const early = [
        ["the chunk table", (r: (typeof gets)[number]) => isBlobGetOf(table)(toInfo(r))],
        ["the trace (referrers)", (r: (typeof gets)[number]) => r.path.includes("/referrers/")],
        [
          "the layer's head",
          (r: (typeof gets)[number]) =>
            isBlobGetOf(layer.digest)(toInfo(r)) && /^bytes=0-\d+$/.test(r.range ?? ""),
        ],
      ] as const;
      for (const [what, match] of early) {
        const at = arrival(what, match);
        assert(at < config + CONFIG_DELAY_MS - 500, `${what} waited for the config:\n${trail}`);
      }
    } finally {
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "mount: the metadata pack its layer's annotations name is fetched beside the table, " +
    "not after it; a pack the table does not name is not used",
  ignore: ignoreMount,
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const manifest = await pushFixture(registry.host, "mf/pack");
    const annotations = manifest.layers[0].annotations;
    const table = annotations["io.github.erofs-oci.chunk-digests"];
    const pack = annotations["io.github.erofs-oci.metadata-pack"];
    assert.match(pack ?? "", /^sha256:[0-9a-f]{64}$/, JSON.stringify(annotations));
    assert.match(annotations["io.github.erofs-oci.metadata-pack.size"] ?? "", /^[1-9]\d*$/);
    // The table answers 1.5 s late: the pack is asked for meanwhile.
    const TABLE_DELAY_MS = 1500;
    await using proxy = await startFaultProxy(registry.host, [
      { match: isBlobGetOf(table), fault: { kind: "delay", ms: TABLE_DELAY_MS } },
    ]);
    const getOf = (digest: string) => proxy.blobGets(digest)[0];
    const sandbox = await mountSandbox();
    try {
      await mountWithMarks(`${proxy.host}/mf/pack:v1`, sandbox);
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      const log = sandbox.serverLogs();
      assert.match(log, /layer 0: \d+ bytes of listed metadata from mount/, log);
      const tableAt = getOf(table)?.timeMs, packAt = getOf(pack)?.timeMs;
      assert(tableAt !== undefined && packAt !== undefined, "no GET of the table or the pack");
      assert(packAt < tableAt + TABLE_DELAY_MS - 500, `pack at +${packAt - tableAt} ms`);
    } finally {
      await sandbox.cleanup();
    }

    // Annotations naming another blob as the pack: the table's own pack is fetched and used.
    const lying = structuredClone(manifest);
    lying.layers[0].annotations["io.github.erofs-oci.metadata-pack"] = manifest.config.digest;
    lying.layers[0].annotations["io.github.erofs-oci.metadata-pack.size"] = String(
      manifest.config.size,
    );
    const put = await fetch(`http://${registry.host}/v2/mf/pack/manifests/v2`, {
      method: "PUT",
      headers: { "content-type": "application/vnd.oci.image.manifest.v1+json" },
      body: JSON.stringify(lying),
    });
    assert.equal(put.status, 201, await put.text());
    const packGets = proxy.blobGets(pack).length;
    const other = await mountSandbox();
    try {
      await mountWithMarks(`${proxy.host}/mf/pack:v2`, other);
      assert.equal(await manifestOf(other.target), expectedManifest("basic.txt"));
      const log = other.serverLogs();
      assert.match(log, /layer 0: \d+ bytes of listed metadata from mount/, log);
      assert.doesNotMatch(log, /do not match|not match/, log);
      assert.equal(
        proxy.blobGets(pack).length,
        packGets + 1,
        "the table's own pack was not fetched",
      );
    } finally {
      await other.cleanup();
    }
  },
});

Deno.test({
  name: "mount: a metadata pack that does not come is given up once the server is ready: the " +
    "mount ends and serves the tree",
  ignore: ignoreMount,
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const manifest = await pushFixture(registry.host, "mf/slowpack");
    const pack = manifest.layers[0].annotations["io.github.erofs-oci.metadata-pack"];
    // Far longer than the mount needs: before, the CLI waited for it after the server was ready.
    await using proxy = await startFaultProxy(registry.host, [
      { match: isBlobGetOf(pack), fault: { kind: "delay", ms: 120_000 } },
    ]);
    const sandbox = await mountSandbox();
    try {
      const mounted = await runCli(
        ["mount", `${proxy.host}/mf/slowpack:v1`, sandbox.target, "--plain-http"].concat(
          ["--backend", "fuse"],
        ),
        { env: sandbox.env, timeoutMs: 60_000 },
      );
      assertSuccess(mounted);
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      assert.ok(proxy.blobGets(pack).length >= 1, "the pack was asked for");
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    } finally {
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "mount: a remount reads its table and config kept by the first mount (no GET of " +
    "either); a damaged kept file is fetched again",
  ignore: ignoreMount,
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const manifest = await pushFixture(registry.host, "mf/kept");
    const table = manifest.layers[0].annotations["io.github.erofs-oci.chunk-digests"];
    const config = manifest.config.digest;
    await using proxy = await startFaultProxy(registry.host, []);
    const gets = (digest: string) => proxy.blobGets(digest).length;
    const sandbox = await mountSandbox();
    const remount = async () => {
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
      await mountWithMarks(`${proxy.host}/mf/kept:v1`, sandbox);
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
    };
    try {
      await mountWithMarks(`${proxy.host}/mf/kept:v1`, sandbox);
      assert.deepEqual([gets(table), gets(config)], [1, 1], "first mount: one GET of each");
      await remount();
      assert.deepEqual([gets(table), gets(config)], [1, 1], "remount: no GET of either");
      const state = sandbox.env.EROFS_OCI_STATE_DIR;
      for (const [kind, digest] of [["tables", table], ["configs", config]]) {
        const kept = `${state}/${kind}/${digest.replace(":", "-")}.json`;
        const bytes = Deno.readFileSync(kept);
        bytes[0] ^= 0x20;
        Deno.writeFileSync(kept, bytes);
      }
      await remount();
      assert.deepEqual([gets(table), gets(config)], [2, 2], "damaged: fetched again");
    } finally {
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "list: the listed metadata counts, as fetched when mount fetched it for its server, as " +
    "disk hits when a remount read it back",
  ignore: ignoreMount,
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    await pushFixture(registry.host, "mf/counted");
    const sandbox = await mountSandbox();
    const listed = async () => {
      const list = await runCli(["list", "--json"], { env: sandbox.env });
      assertSuccess(list);
      return JSON.parse(list.stdout)[0] as { bytesFetched: number; diskHitBytes?: number };
    };
    try {
      await mountWithMarks(`${registry.host}/mf/counted:v1`, sandbox);
      const log = sandbox.serverLogs();
      // The sidecar format: the list's 32-byte key, then the ranges' bytes.
      const handed = Number(/layer 0: (\d+) bytes of listed metadata from mount/.exec(log)?.[1]) -
        32;
      assert(handed > 0, log);
      // The directory tree only: every page it needs is pinned (read from nothing else).
      [...Deno.readDirSync(sandbox.target)];
      const cold = await listed();
      assert(cold.bytesFetched >= handed, `${JSON.stringify(cold)}, ${handed} handed`);
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
      await mountWithMarks(`${registry.host}/mf/counted:v1`, sandbox);
      [...Deno.readDirSync(sandbox.target)];
      const again = await listed();
      assert.equal(again.bytesFetched, 0, JSON.stringify(again));
      assert((again.diskHitBytes ?? 0) >= handed, `${JSON.stringify(again)}, ${handed} handed`);
    } finally {
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "mount: a cold mount with a metadata list loads no Node module on its way to ready",
  ignore: ignoreMount,
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    await pushFixture(registry.host, "mf/no-node");
    const sandbox = await mountSandbox();
    try {
      const marks = await mountWithMarks(`${registry.host}/mf/no-node:v1`, sandbox);
      const log = sandbox.serverLogs();
      assert.match(log, /layer 0: \d+ bytes of listed metadata from mount/, log);
      // node:crypto, node:zlib or node:timers through lib/node_builtins.ts: its first load boots
      // Deno's Node layer (~22 ms on the host, over 1 s in the TCG guest) in that process. The
      // listed metadata is checked through Web Crypto and the walk turns through a
      // MessageChannel; the chunks read later are checked through Web Crypto too. Each process
      // up to its own end of the way: the server loads node:crypto in the quiet after ready on
      // purpose (mount_server.ts), which a loaded host's slow mount(2) in the CLI may not outlast.
      const lines = marks.split("\n");
      const upTo = (end: string) => {
        const at = lines.findIndex((line) => line.includes(` ${end} `));
        assert(at >= 0, `no '${end}' mark:\n${marks}`);
        const pid = lines[at].split(" ")[1];
        return lines.slice(0, at).filter((line) => line.split(" ")[1] === pid).join("\n");
      };
      for (const end of ["cli: mounted", "server: ready"]) {
        assert.doesNotMatch(upTo(end), / node:\S+ loading /, `before '${end}':\n${marks}`);
      }
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
    } finally {
      await sandbox.cleanup();
    }
  },
});

function toInfo(r: { method: string; path: string }) {
  return { method: r.method, path: r.path, headers: new Headers() };
}

Deno.test({
  name: "mount: resolution failing after the early table and metadata GETs leaves nothing behind",
  ignore: ignoreMount,
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const manifest = await pushFixture(registry.host, "mf/fail");
    // The config blob (asked for after the table GET started) is missing.
    await using proxy = await startFaultProxy(registry.host, [
      { match: isBlobGetOf(manifest.config.digest), fault: { kind: "status", status: 404 } },
    ]);
    const sandbox = await mountSandbox();
    try {
      const failed = await runCli(
        ["mount", `${proxy.host}/mf/fail:v1`, sandbox.target, "--plain-http", "--backend", "fuse"],
        { env: sandbox.env, timeoutMs: 60_000 },
      );
      const message = assertCliError(failed, 1);
      assert.match(message, new RegExp(manifest.config.digest.slice(7, 19)), message);
      assert.doesNotMatch(failed.stderr, /Uncaught|unhandled/i, failed.stderr);
      assert.equal(proxy.hits(0), 1);
      const table = manifest.layers[0].annotations["io.github.erofs-oci.chunk-digests"];
      assert(
        proxy.requests.some((r) => r.path.endsWith(`/blobs/${table}`)),
        "the table GET had started",
      );
      assert.deepEqual(mountsBelow(sandbox.target), []);
      assert.deepEqual(mountServersOf(sandbox.runtimeDir), [], "a server outlived the failure");
    } finally {
      await sandbox.cleanup();
    }
  },
});
