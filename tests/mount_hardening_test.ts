/**
 * Mount hardening on the FUSE backend (this host has no nbd): images are hostile, so a
 * setuid-root file or a device node in one gives nothing unless --suid/--dev ask for it; a
 * killed FUSE server does not make `umount` fail; a reused server pid is never signalled.
 */
import assert from "node:assert/strict";
import { command, FIXTURES, path, PEER_BIN, requires, root } from "./_support/requires.ts";
import { assertSuccess, describe, runCli } from "./_support/cli.ts";
import { type MountSandbox, mountSandbox, mountsBelow, pidAlive } from "./_support/mounts.ts";
import { startRegistry } from "./_support/registry.ts";
import { readMountInfo } from "../lib/sys/mountinfo.ts";
import {
  buildHostileImage,
  canOpenDevice,
  euidOfSetuidId,
  mountOptionsAt,
  NOBODY,
} from "./_support/hostile_image.ts";

async function withSandbox(body: (sandbox: MountSandbox, base: string) => Promise<void>) {
  const sandbox = await mountSandbox();
  const base = sandbox.target.replace(/\/mnt$/, "");
  // nobody must reach the mount to exec from it.
  Deno.chmodSync(base, 0o755);
  try {
    await body(sandbox, base);
  } finally {
    await sandbox.cleanup();
  }
}

async function mountCli(sandbox: MountSandbox, args: string[]) {
  const result = await runCli(["mount", ...args, "--backend", "fuse"], {
    env: sandbox.env,
    timeoutMs: 120_000,
  });
  assert.equal(result.code, 0, `${describe(result)}\nserver log:\n${sandbox.serverLogs()}`);
  return result;
}

async function umountCli(sandbox: MountSandbox) {
  const result = await runCli(["umount", sandbox.target], { env: sandbox.env, timeoutMs: 60_000 });
  assert.equal(result.code, 0, describe(result));
  assert.deepEqual(mountsBelow(sandbox.target), []);
}

function serverPidOf(sandbox: MountSandbox): number {
  const [id] = [...Deno.readDirSync(`${sandbox.runtimeDir}/mounts`)].map((e) => e.name);
  return JSON.parse(Deno.readTextFileSync(`${sandbox.runtimeDir}/mounts/${id}/state.json`))
    .serverPid;
}

const hostTools = requires(
  root(),
  path("/dev/fuse"),
  path(`${PEER_BIN}/mkfs.erofs`),
  command("setpriv"),
  command("mknod"),
);

Deno.test({
  name: "mount: a local image is nosuid,nodev by default; --suid --dev and -o suid,dev lift it",
  ignore: hostTools,
  async fn() {
    await withSandbox(async (sandbox, base) => {
      const image = await buildHostileImage(base);

      const mounted = await mountCli(sandbox, [image, sandbox.target]);
      assert.equal(await euidOfSetuidId(sandbox.target), NOBODY, "setuid bit ignored");
      assert.equal(canOpenDevice(`${sandbox.target}/null`), false, "device node refused");
      const options = mountOptionsAt(sandbox.target);
      assert.ok(options.includes("nosuid") && options.includes("nodev"), options.join(","));
      assert.match(mounted.stdout, /ro,nosuid,nodev/);
      const listed = await runCli(["list", "--json"], { env: sandbox.env });
      assertSuccess(listed);
      assert.deepEqual(JSON.parse(listed.stdout)[0].options, ["ro", "nosuid", "nodev"]);
      assert.match((await runCli(["list"], { env: sandbox.env })).stdout, /ro,nosuid,nodev/);
      await umountCli(sandbox);

      // The opt-out, which also shows the checks above can fail.
      for (const flags of [["--suid", "--dev"], ["-o", "suid,dev"]]) {
        await mountCli(sandbox, [image, sandbox.target, ...flags]);
        const lifted = mountOptionsAt(sandbox.target);
        assert.ok(!lifted.includes("nosuid") && !lifted.includes("nodev"), lifted.join(","));
        assert.equal(await euidOfSetuidId(sandbox.target), "0", `setuid honoured with ${flags}`);
        assert.equal(canOpenDevice(`${sandbox.target}/null`), true, `device with ${flags}`);
        const list = JSON.parse((await runCli(["list", "--json"], { env: sandbox.env })).stdout);
        assert.deepEqual(list[0].options, ["ro", "suid", "dev"]);
        await umountCli(sandbox);
      }

      const bad = await runCli(["mount", image, sandbox.target, "-o", "exec"], {
        env: sandbox.env,
      });
      assert.equal(bad.code, 2, describe(bad));
      assert.match(bad.stderr, /unknown mount option 'exec'/);
    });
  },
});

Deno.test({
  name: "mount: an overlay of registry layers and its layer mounts are nosuid,nodev",
  ignore: hostTools || requires(command("docker-registry")),
  async fn() {
    const registry = await startRegistry({ auth: "none" });
    try {
      await withSandbox(async (sandbox, base) => {
        const hostile = await buildHostileImage(base);
        const image = `${registry.host}/demo/hostile:v1`;
        assertSuccess(
          await runCli(["push", image, `${FIXTURES}/basic.erofs`, hostile], {
            timeoutMs: 120_000,
          }),
        );
        await mountCli(sandbox, [image, sandbox.target]);
        const mounts = readMountInfo().filter((m) =>
          m.mountPoint === sandbox.target || m.mountPoint.startsWith(`${sandbox.runtimeDir}/`)
        );
        assert.deepEqual(
          mounts.map((m) => m.fsType).sort(),
          ["erofs", "erofs", "fuse.erofs-oci", "fuse.erofs-oci", "overlay"],
        );
        for (const mount of mounts) {
          const options = mountOptionsAt(mount.mountPoint);
          assert.ok(
            options.includes("nosuid") && options.includes("nodev"),
            `${mount.fsType} at ${mount.mountPoint}: ${options.join(",")}`,
          );
        }
        assert.equal(await euidOfSetuidId(sandbox.target), NOBODY);
        assert.equal(canOpenDevice(`${sandbox.target}/null`), false);
        await umountCli(sandbox);
      });
    } finally {
      await registry.stop();
    }
  },
});

Deno.test({
  name: "umount: after kill -9 of the FUSE server, umount succeeds and leaves nothing behind",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    await withSandbox(async (sandbox) => {
      await mountCli(sandbox, [`${FIXTURES}/basic.erofs`, sandbox.target]);
      const pid = serverPidOf(sandbox);
      Deno.kill(pid, "SIGKILL");
      for (let i = 0; i < 100 && pidAlive(pid); i++) await new Promise((r) => setTimeout(r, 50));
      assert.ok(!pidAlive(pid), "server killed");
      const listed = JSON.parse((await runCli(["list", "--json"], { env: sandbox.env })).stdout);
      assert.equal(listed[0].state, "dead");

      const result = await runCli(["umount", sandbox.target], {
        env: sandbox.env,
        timeoutMs: 60_000,
      });
      assert.equal(result.code, 0, describe(result));
      assert.deepEqual(mountsBelow(sandbox.target), []);
      assert.deepEqual(mountsBelow(sandbox.runtimeDir), [], "dead FUSE mount detached");
      assert.deepEqual([...Deno.readDirSync(`${sandbox.runtimeDir}/mounts`)], []);
      const after = await runCli(["list", "--json"], { env: sandbox.env });
      assert.deepEqual(JSON.parse(after.stdout), []);
    });
  },
});

Deno.test({
  name: "umount/list: a recorded server pid now used by another process is dead, never signalled",
  ignore: requires(root(), command("python3")),
  async fn() {
    await withSandbox(async (sandbox) => {
      // An unrelated process whose command line even looks like a server's.
      const stranger = new Deno.Command("python3", {
        args: ["-c", "import time; time.sleep(120)", "__mount-server"],
      }).spawn();
      try {
        const id = "deadbeef";
        const dir = `${sandbox.runtimeDir}/mounts/${id}`;
        Deno.mkdirSync(dir, { recursive: true });
        Deno.writeTextFileSync(
          `${dir}/state.json`,
          JSON.stringify({
            id,
            target: sandbox.target,
            image: "stale",
            backend: "fuse",
            serverPid: stranger.pid,
            // The server this state was written for started at another time.
            serverStart: { pid: stranger.pid, ticks: "1" },
            createdAt: new Date().toISOString(),
            layers: [],
            overlay: false,
          }),
        );
        const listed = await runCli(["list", "--json"], { env: sandbox.env });
        assertSuccess(listed);
        assert.equal(JSON.parse(listed.stdout)[0].state, "dead", describe(listed));

        const result = await runCli(["umount", sandbox.target], {
          env: sandbox.env,
          timeoutMs: 60_000,
        });
        assert.equal(result.code, 0, describe(result));
        assert.ok(pidAlive(stranger.pid), "the unrelated process was not signalled");
        assert.deepEqual([...Deno.readDirSync(`${sandbox.runtimeDir}/mounts`)], []);
      } finally {
        try {
          stranger.kill("SIGKILL");
        } catch { /* exited: the assertion above says why */ }
        await stranger.status;
      }
    });
  },
});
