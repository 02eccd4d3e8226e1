/**
 * The mount scenarios every backend must pass (`mount` → read → `list` → `umount` against a
 * real docker-registry, trees compared with the fixtures' manifests, nothing left behind, also
 * after refused mounts). Registered by tests/mount_fuse_test.ts (host, FUSE) and
 * tests/vm/mount_nbd_test.ts (QEMU guest, kernel NBD).
 */
import assert from "node:assert/strict";
import { FIXTURES } from "./requires.ts";
import { startRegistry, type TestRegistry } from "./registry.ts";
import { assertCliError, assertSuccess, describe, loginOptions, runCli } from "./cli.ts";
import { sleep } from "./wait.ts";
import { pushImage } from "./oci_raw.ts";
import { EROFS_MEDIA_TYPE } from "./oci_fixtures.ts";
import {
  expectedManifest,
  manifestOf,
  type MountSandbox,
  mountSandbox,
  mountsBelow,
  pidAlive,
  serverPids,
  writableExecutableMappings,
} from "./mounts.ts";

async function withRegistry(
  auth: "none" | "basic",
  body: (registry: TestRegistry, sandbox: MountSandbox) => Promise<void>,
) {
  const registry = await startRegistry({ auth });
  const sandbox = await mountSandbox();
  try {
    await body(registry, sandbox);
  } finally {
    await sandbox.cleanup();
    await registry.stop();
  }
}

async function push(registry: TestRegistry, image: string, files: string[]) {
  const login = loginOptions(registry);
  assertSuccess(
    await runCli(["push", image, ...files.map((f) => `${FIXTURES}/${f}`), ...login.args], {
      stdin: login.stdin,
      timeoutMs: 120_000,
    }),
  );
}

/** `erofs-oci mount ARGS` with the sandbox's environment, which must succeed. */
async function mountOk(sandbox: MountSandbox, args: string[]): Promise<void> {
  assertSuccess(await runCli(["mount", ...args], { env: sandbox.env, timeoutMs: 120_000 }));
}

function runtimeEntries(sandbox: MountSandbox): string[] {
  try {
    return [...Deno.readDirSync(`${sandbox.runtimeDir}/mounts`)].map((e) => e.name);
  } catch {
    return [];
  }
}

/** NBD devices listed for the sandbox's mounts (empty for FUSE). */
async function nbdDevicesOf(sandbox: MountSandbox): Promise<string[]> {
  const listed = await runCli(["list", "--json"], { env: sandbox.env });
  assertSuccess(listed);
  return (JSON.parse(listed.stdout) as { devices: string[] }[])
    .flatMap((m) => m.devices.filter((d) => /^nbd\d+$/.test(d)));
}

async function unmountAndCheckClean(sandbox: MountSandbox) {
  const pids = serverPids(sandbox.runtimeDir);
  assert.ok(pids.length > 0, "a server pid was recorded");
  const devices = await nbdDevicesOf(sandbox);
  const unmounted = await runCli(["umount", sandbox.target], {
    env: sandbox.env,
    timeoutMs: 120_000,
  });
  assert.equal(unmounted.code, 0, `${describe(unmounted)}\nserver log:\n${sandbox.serverLogs()}`);
  assert.deepEqual(mountsBelow(sandbox.target), [], "no mount left at the target");
  assert.deepEqual(mountsBelow(sandbox.runtimeDir), [], "no layer or FUSE mount left");
  assert.deepEqual(runtimeEntries(sandbox), [], "runtime dir of the mount removed");
  for (const pid of pids) assert.ok(!pidAlive(pid), `server ${pid} stopped`);
  for (const device of devices) {
    // The kernel removes the pid attribute when the device is disconnected.
    let pid = "";
    try {
      pid = Deno.readTextFileSync(`/sys/block/${device}/pid`).trim();
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
    assert.equal(pid, "", `${device} disconnected`);
    assert.equal(Deno.readTextFileSync(`/sys/block/${device}/size`).trim(), "0");
  }
}

/** Voluntary context switches per thread of `pid` (thread id → count). */
function wakeUps(pid: number): Map<string, number> {
  const counts = new Map<string, number>();
  for (const task of Deno.readDirSync(`/proc/${pid}/task`)) {
    try {
      const status = Deno.readTextFileSync(`/proc/${pid}/task/${task.name}/status`);
      counts.set(task.name, Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(status)?.[1]));
    } catch { /* thread ended */ }
  }
  return counts;
}

function wakeUpsBetween(before: Map<string, number>, after: Map<string, number>) {
  const perThread = [...after].map(([tid, n]) => [tid, n - (before.get(tid) ?? 0)] as const);
  return { perThread, total: perThread.reduce((sum, [, n]) => sum + n, 0) };
}

/** Registers the scenarios for one backend; `ignore` as computed by the caller. */
export function registerMountScenarios(backend: "fuse" | "nbd", prefix: string, ignore: boolean) {
  Deno.test({
    name: `${prefix}: mount: single EROFS layer from a registry with Basic auth`,
    ignore,
    async fn() {
      await withRegistry("basic", async (registry, sandbox) => {
        const image = `${registry.host}/demo/basic:v1`;
        await push(registry, image, ["basic.erofs"]);
        const login = loginOptions(registry, "stdin");
        const mounted = await runCli(
          ["mount", image, sandbox.target, "--backend", backend, ...login.args],
          { env: sandbox.env, stdin: login.stdin, timeoutMs: 120_000 },
        );
        assert.equal(mounted.code, 0, `${describe(mounted)}\nserver log:\n${sandbox.serverLogs()}`);
        assert.match(mounted.stdout, /mounted .*demo\/basic:v1 at /);
        assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));

        const listed = await runCli(["list", "--json"], { env: sandbox.env });
        assertSuccess(listed);
        const [entry] = JSON.parse(listed.stdout);
        assert.equal(entry.target, sandbox.target);
        assert.equal(entry.state, "serving", describe(listed));
        assert.equal(entry.backend, backend);
        assert.ok(entry.bytesFetched > 0, "bytes were fetched from the registry");
        assert.match(entry.manifestDigest, /^sha256:[0-9a-f]{64}$/);
        // The kernel's name of each device: nbdN, or a FUSE mount's connection.
        assert.equal(entry.devices.length, 1, describe(listed));
        if (backend === "nbd") assert.match(entry.devices[0], /^nbd\d+$/);
        else {
          const connection = /^fuse:(\d+)$/.exec(entry.devices[0])?.[1];
          assert.ok(connection, describe(listed));
          const [major, minor] = Deno.readTextFileSync("/proc/self/mountinfo").split("\n")
            .map((line) => line.split(" "))
            .find((fields) =>
              fields[4]?.startsWith(`${sandbox.runtimeDir}/`) &&
              fields.includes("fuse.erofs-oci")
            )![2].split(":");
          assert.deepEqual([major, minor], ["0", connection]);
        }
        const table = await runCli(["list"], { env: sandbox.env });
        assert.match(table.stdout, /serving/);

        await unmountAndCheckClean(sandbox);
      });
    },
  });

  Deno.test({
    name:
      `${prefix}: mount: three EROFS layers compose as an overlay with whiteouts and opaque dirs`,
    ignore,
    async fn() {
      await withRegistry("none", async (registry, sandbox) => {
        const image = `${registry.host}/demo/layers:v1`;
        await push(registry, image, ["layer1.erofs", "layer2.erofs", "layer3.erofs"]);
        await mountOk(sandbox, [image, sandbox.target, "--backend", backend]);
        assert.equal(await manifestOf(sandbox.target), expectedManifest("merged.txt"));
        // Read-only by default.
        assert.throws(() => Deno.writeTextFileSync(`${sandbox.target}/new.txt`, "x"));
        await unmountAndCheckClean(sandbox);
      });
    },
  });

  Deno.test({
    name: `${prefix}: an idle mount's server does not wake (no reader polling with a timeout)`,
    ignore,
    async fn() {
      // From a registry: the disk cache makes each layer's export read by a reader thread of
      // its own (NBD too).
      await withRegistry("none", async (registry, sandbox) => {
        const image = `${registry.host}/demo/idle:v1`;
        await push(registry, image, ["layer1.erofs"]);
        await mountOk(sandbox, [image, sandbox.target, "--backend", backend]);
        const [server] = serverPids(sandbox.runtimeDir);
        assert(server, sandbox.serverLogs());
        assert.equal(await manifestOf(sandbox.target), expectedManifest("layer1.txt"));
        // V8 without its JIT (lib/daemon/server_spawn.ts), also after the reads.
        assert.deepEqual(writableExecutableMappings(server), []);
        // What the mount does after it is ready (its walks, syncs) ends: then a second with at
        // most one wake-up. A reader polling every 200 ms never gets there (15 in 3 s alone).
        const deadline = Date.now() + 20_000;
        let before = wakeUps(server);
        for (;;) {
          await sleep(1000);
          const now = wakeUps(server);
          if (wakeUpsBetween(before, now).total <= 1 || Date.now() > deadline) break;
          before = now;
        }
        before = wakeUps(server);
        await sleep(3000);
        const woke = wakeUpsBetween(before, wakeUps(server));
        assert.ok(woke.total <= 6, `wake-ups in 3 s per thread: ${JSON.stringify(woke.perThread)}`);
        await unmountAndCheckClean(sandbox);
      });
    },
  });

  Deno.test({
    name: `${prefix}: mount: --layer picks one layer; a local EROFS file mounts without a registry`,
    ignore,
    async fn() {
      await withRegistry("none", async (registry, sandbox) => {
        const image = `${registry.host}/demo/layers:v1`;
        await push(registry, image, ["layer1.erofs", "layer2.erofs", "layer3.erofs"]);
        await mountOk(sandbox, [image, sandbox.target, "--layer", "0", "--backend", backend]);
        assert.equal(await manifestOf(sandbox.target), expectedManifest("layer1.txt"));
        await unmountAndCheckClean(sandbox);

        await mountOk(sandbox, [`${FIXTURES}/basic-lz4.erofs`, sandbox.target]);
        assert.equal(await manifestOf(sandbox.target), expectedManifest("basic-lz4.txt"));
        await unmountAndCheckClean(sandbox);
      });
    },
  });

  Deno.test({
    name: `${prefix}: mount: bad input gets one clear line and leaves nothing behind`,
    ignore,
    async fn() {
      await withRegistry("none", async (registry, sandbox) => {
        const env = sandbox.env;
        const noLeftovers = () => {
          assert.deepEqual(mountsBelow(sandbox.target), []);
          assert.deepEqual(runtimeEntries(sandbox), []);
        };
        await push(registry, `${registry.host}/demo/basic:v1`, ["basic.erofs"]);

        assertCliError(
          await runCli(["mount", `${FIXTURES}/basic.erofs`, `${sandbox.target}/missing`], { env }),
          1,
          /does not exist/,
        );
        Deno.writeTextFileSync(`${sandbox.target}/file`, "x");
        assertCliError(
          await runCli(["mount", `${FIXTURES}/basic.erofs`, sandbox.target], { env }),
          1,
          /not empty/,
        );
        Deno.removeSync(`${sandbox.target}/file`);
        assertCliError(
          await runCli(["mount", `${FIXTURES}/layer.tar`, sandbox.target], { env }),
          1,
          /not an EROFS image/,
        );
        noLeftovers();
        assertCliError(
          await runCli(["mount", `${registry.host}/demo/nothere:v1`, sandbox.target], { env }),
          1,
        );
        // A layer labelled EROFS whose bytes are not: the registry may be the one to blame.
        const tar = await Deno.readFile(`${FIXTURES}/layer1.tar`);
        await pushImage(registry, "demo/lying", "v1", [{
          bytes: tar,
          mediaType: EROFS_MEDIA_TYPE,
        }]);
        const lying = await runCli(["mount", `${registry.host}/demo/lying:v1`, sandbox.target], {
          env,
        });
        assertCliError(lying, 1, /not an EROFS image: layer 0/);
        assert.match(lying.stderr, /or the registry or a proxy on the way sent other bytes/);
        noLeftovers();
        assertCliError(
          await runCli(
            ["mount", `${registry.host}/demo/basic:v1`, sandbox.target, "--layer", "3"],
            {
              env,
            },
          ),
          2, // the command line's mistake
          /out of range/,
        );
        assertCliError(await runCli(["mount", "only-one-arg"], { env }), 2);
        assertCliError(
          await runCli(["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "tape"], {
            env,
          }),
          2, // a usage error (b74e4ca)
          /unknown backend/,
        );
        assertCliError(await runCli(["umount", sandbox.target], { env }), 1, /not mounted/);
        noLeftovers();
      });
    },
  });

  Deno.test({
    name: `${prefix}: umount: a busy mount is refused naming --lazy, then unmounts once released`,
    ignore,
    async fn() {
      const sandbox = await mountSandbox();
      try {
        await mountOk(sandbox, [`${FIXTURES}/basic.erofs`, sandbox.target, "--backend", backend]);
        const file = await Deno.open(`${sandbox.target}/lorem.txt`);
        try {
          assertCliError(
            await runCli(["umount", sandbox.target], { env: sandbox.env }),
            1,
            /busy/,
          );
          assert.equal(mountsBelow(sandbox.target).length, 1, "still mounted after refusal");
        } finally {
          file.close();
        }
        await unmountAndCheckClean(sandbox);
      } finally {
        await sandbox.cleanup();
      }
    },
  });
}
