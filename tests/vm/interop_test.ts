/**
 * Crash-recovery interop with erofs-utils 1.9.3 (issue 5), in the VM: a device mounted by the
 * peer's `mount.erofs -t erofs.nbd` whose server is killed is brought back by
 * `erofs-oci reattach`, and a device of `erofs-oci mount --backend nbd` whose server is killed
 * is brought back by `mount.erofs --reattach`. Each direction checks the recovery line the
 * other tool must understand, a reader blocked while no server runs (it must finish with the
 * right bytes), the fixture's whole manifest afterwards, and the clean-up.
 *
 * Peer quirks handled here (../shared/docs/vm-e2e.md §6): mount.erofs uses ioctl NBD (no
 * recovery file) unless /var/run/erofsmount/nbd exists; its daemon keeps inherited
 * stdout/stderr open, so its output goes to a file; it does not record `oci.insecure`, so its
 * `--reattach` only works against HTTPS: that direction uses a TLS registry named
 * `registry.test` (an /etc/hosts line and the CA bundle of the guest, whose root is a RAM
 * overlay; both restored afterwards), which also makes erofs-oci choose HTTPS.
 */
import assert from "node:assert/strict";
import { FIXTURES } from "../_support/requires.ts";
import {
  disconnectIfConnected,
  fileSha256,
  killAndWait,
  nbdIndexAt,
  nbdServerProcess,
  nbdSysfs,
  PEER,
  processesRunning,
  RECOVERY_DIR,
  removeQuietly,
  runPeer,
  stepTimer,
  trustRegistryAs,
} from "../_support/peer_nbd.ts";
import { startRegistry, type TestRegistry } from "../_support/registry.ts";
import { assertSuccess, describe, runCli } from "../_support/cli.ts";
import {
  expectedManifest,
  manifestOf,
  mountSandbox,
  mountsBelow,
  pidAlive,
  serverPids,
} from "../_support/mounts.ts";
import { dropCaches, NOT_IN_VM, runChecked } from "../_support/vm.ts";
import { waitFor } from "../_support/wait.ts";

const IMAGE = `${FIXTURES}/basic.erofs`;
/** The largest file of basic.erofs (1 MiB + 3): read cold while no server runs. */
const BIG_FILE = "big-1m3.bin";
const SMALL_FILE = "dir/a.txt";

function expectedSha256(file: string): string {
  const line = expectedManifest("basic.txt").split("\n").find((l) => l.startsWith(`${file}\t`));
  assert.ok(line, `${file} in basic.txt`);
  return line.split("\t")[7];
}

/** Starts a cold read of `path` in its own process (as an application would) and checks that
 * it is still waiting after a while: no server answers the device. */
async function blockedReader(path: string) {
  await dropCaches();
  const child = new Deno.Command("sha256sum", { args: [path], stdout: "piped", stderr: "piped" })
    .spawn();
  let finished = false;
  const output = child.output().finally(() => finished = true);
  await new Promise((r) => setTimeout(r, 2000));
  assert.ok(!finished, "the reader finished although no server ran: the read was not cold");
  return async () => {
    const result = await output;
    assert.equal(result.code, 0, `reader failed: ${new TextDecoder().decode(result.stderr)}`);
    return new TextDecoder().decode(result.stdout).split(" ")[0];
  };
}

interface PeerDevice {
  dir: string;
  index: number;
  recoveryFile: string;
  line: string;
  serverPid: number;
  /** Its command line, to recognise it by pid. */
  serverArgv: string[];
}

async function peerMount(
  dir: string,
  ref: string,
  options: string,
  logPath: string,
): Promise<PeerDevice> {
  Deno.mkdirSync(dir, { recursive: true });
  const peer = await runPeer(["-t", "erofs.nbd", "-o", options, ref, dir], logPath);
  assert.equal(peer.code, 0, `mount.erofs -o ${options} ${ref}:\n${peer.log}`);
  assert.doesNotMatch(peer.log, /Fall back to ioctl/, "the peer must use netlink (recovery file)");
  const index = nbdIndexAt(dir);
  const recoveryFile = nbdSysfs(index, "backend")!;
  assert.match(recoveryFile, /^\/var\/run\/erofsmount\/nbd\/mountnbd_\w{6}$/);
  assert.equal(Deno.statSync(recoveryFile).mode! & 0o777, 0o600);
  const line = Deno.readTextFileSync(recoveryFile);
  console.log(`mount.erofs -o ${options}: nbd${index} ${recoveryFile}: ${JSON.stringify(line)}`);
  // One small file proves the mount serves (the whole tree is checked after the reattach;
  // through the peer's server, which fetches every request from the registry, it is slow).
  assert.equal(await fileSha256(`${dir}/${SMALL_FILE}`), expectedSha256(SMALL_FILE));
  const serverArgv = [PEER, "-t", "erofs", "nbd", "-o", options, ref, dir];
  const serverPid = nbdServerProcess(index);
  assert.ok(processesRunning(serverArgv).includes(serverPid), "the server is mount.erofs");
  return { dir, index, recoveryFile, line, serverPid, serverArgv };
}

Deno.test({
  name: "vm interop: a mount.erofs 1.9.3 device (OCI_LAYER, OCI_NATIVE_BLOB + credentials) " +
    "is reattached by erofs-oci after kill -9",
  ignore: NOT_IN_VM,
  async fn() {
    Deno.mkdirSync(RECOVERY_DIR, { recursive: true, mode: 0o700 });
    const sandbox = await mountSandbox();
    const base = sandbox.target.replace(/\/mnt$/, "");
    const peerLog = `${base}/peer.log`;
    const registries: TestRegistry[] = [];
    const devices: PeerDevice[] = [];
    let holder: Deno.ChildProcess | undefined;
    const step = stepTimer();
    try {
      // Plain HTTP on 127.0.0.1: the peer needs oci.insecure, erofs-oci assumes HTTP there.
      const open = await startRegistry({ auth: "none", startTimeoutMs: 60_000 });
      registries.push(open);
      const locked = await startRegistry({ auth: "token", startTimeoutMs: 60_000 });
      registries.push(locked);
      const openRef = `${open.host}/interop/basic:v1`;
      const lockedRef = `${locked.host}/interop/basic:v1`;
      assertSuccess(await runCli(["push", openRef, IMAGE], { timeoutMs: 120_000 }));
      // Same image in the token-auth registry without a second push (a CLI start costs 5-10 s
      // here): filesystem storage is port-agnostic and read on demand.
      await runChecked("cp", ["-a", `${open.storageDir}/.`, `${locked.storageDir}/`]);
      const digest = `sha256:${await fileSha256(IMAGE)}`;
      step("registries + push");

      // A device mounted in another mount namespace (a container's), not in ours: reattach
      // adopts it by its device path. Its record had an empty target, which every reader took
      // for damage: list and umount never saw the server, each `reattach --all` started another.
      const elsewhere = await peerMount(
        `${base}/elsewhere`,
        openRef,
        // By digest: a device recorded by tag has no mount here to check the image against.
        `oci.blob=${digest},oci.insecure`,
        peerLog,
      );
      devices.push(elsewhere);
      // Its mount stays in a mount namespace of its own, held by a process there (made before
      // the other mounts: it would hold copies of them too, and keep their devices busy).
      holder = new Deno.Command("unshare", {
        args: ["-m", "--propagation", "private", "sleep", "600"],
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn();
      const holderPid = holder.pid;
      await waitFor("the holder's own mount namespace with the mount", () => {
        try {
          return Deno.readLinkSync(`/proc/${holderPid}/ns/mnt`) !==
              Deno.readLinkSync("/proc/self/ns/mnt") &&
            Deno.readTextFileSync(`/proc/${holderPid}/mountinfo`).includes(` ${elsewhere.dir} `);
        } catch {
          return false;
        }
      }, 30_000);
      const byLayer = await peerMount(
        `${base}/by-layer`,
        openRef,
        "oci.layer=0,oci.insecure",
        peerLog,
      );
      devices.push(byLayer);
      // No credentials: an empty last field, i.e. a trailing space (not `""`).
      assert.equal(byLayer.line, `OCI_LAYER ${openRef} linux/amd64 0 \n`);

      const byBlob = await peerMount(
        `${base}/by-blob`,
        lockedRef,
        `oci.blob=${digest},oci.insecure,oci.username=${locked.username},` +
          `oci.password=${locked.password}`,
        peerLog,
      );
      devices.push(byBlob);
      const credentials = btoa(`${locked.username}:${locked.password}`);
      assert.equal(
        byBlob.line,
        `OCI_NATIVE_BLOB ${lockedRef} linux/amd64 ${digest} ${credentials}\n`,
      );

      const targetOf = (device: PeerDevice) =>
        device === elsewhere ? `/dev/nbd${device.index}` : device.dir;

      step("three peer mounts");
      for (const device of devices) await killAndWait(device.serverPid);
      await runChecked("umount", ["-l", elsewhere.dir]);
      const finishRead = await blockedReader(`${byLayer.dir}/${BIG_FILE}`);

      for (const device of devices) {
        const reattached = await runCli(["reattach", `/dev/nbd${device.index}`], {
          env: sandbox.env,
          timeoutMs: 120_000,
        });
        assertSuccess(reattached);
        assert.match(reattached.stdout, new RegExp(`nbd${device.index}\\s+reattached`));
      }
      assert.equal(await finishRead(), expectedSha256(BIG_FILE), "bytes read across the kill");
      step("kill, reattach, blocked reader");
      // Before, its server ended right after the reattach (no readable record named it): the
      // read waited for good.
      await runChecked("timeout", [
        "60",
        "cmp",
        "-n",
        "65536",
        `/dev/nbd${elsewhere.index}`,
        IMAGE,
      ]);
      for (const device of devices.filter((d) => d !== elsewhere)) {
        await dropCaches();
        assert.equal(await manifestOf(device.dir), expectedManifest("basic.txt"), device.dir);
      }

      step("manifests");
      // Adopted: erofs-oci knows the mounts now, and unmounts them like its own.
      const listed = await runCli(["list", "--json"], { env: sandbox.env, timeoutMs: 60_000 });
      assertSuccess(listed);
      const mounts = JSON.parse(listed.stdout) as { target: string; state: string }[];
      assert.deepEqual(
        mounts.map((m) => [m.target, m.state]).sort(),
        devices.map((d) => [targetOf(d), "serving"]).sort(),
        describe(listed),
      );
      const servers = devices.map((d) => nbdSysfs(d.index, "pid"));
      const again = await runCli(["reattach", "--all"], { env: sandbox.env, timeoutMs: 120_000 });
      assertSuccess(again);
      for (const device of devices) {
        assert.match(again.stdout, new RegExp(`nbd${device.index}\\s+alive`), describe(again));
      }
      assert.deepEqual(devices.map((d) => nbdSysfs(d.index, "pid")), servers, "no new server");
      // The container ends: the device is used by no mount any more.
      holder.kill("SIGKILL");
      await holder.status;
      for (const device of devices) {
        assertSuccess(
          await runCli(["umount", targetOf(device)], { env: sandbox.env, timeoutMs: 60_000 }),
        );
        assert.deepEqual(mountsBelow(device.dir), []);
        await waitFor(
          `nbd${device.index} disconnected`,
          () => nbdSysfs(device.index, "pid") === undefined,
          10_000,
        );
        assert.ok(!pidAlive(device.serverPid));
        assert.throws(() => Deno.statSync(device.recoveryFile), "recovery file removed");
      }
      step("list + umount");
    } finally {
      try {
        holder?.kill("SIGKILL");
        await holder?.status;
      } catch { /* ended */ }
      for (const device of devices) {
        for (const point of mountsBelow(device.dir).reverse()) {
          await new Deno.Command("umount", { args: ["-l", point], stderr: "null" }).output();
        }
        // Still the peer's process (not a reused pid)? Then it is ours to stop.
        if (processesRunning(device.serverArgv).includes(device.serverPid)) {
          Deno.kill(device.serverPid, "SIGKILL");
        }
        await disconnectIfConnected(device.index, peerLog);
        removeQuietly(device.recoveryFile);
      }
      await sandbox.cleanup();
      for (const registry of registries) await registry.stop();
    }
  },
});

Deno.test({
  name: "vm interop: an erofs-oci device is reattached by mount.erofs 1.9.3 --reattach (HTTPS)",
  ignore: NOT_IN_VM,
  async fn() {
    Deno.mkdirSync(RECOVERY_DIR, { recursive: true, mode: 0o700 });
    const registryName = "registry.test";
    const registry = await startRegistry({
      auth: "none",
      tls: { dnsName: registryName },
      startTimeoutMs: 60_000,
    });
    const undo: (() => void)[] = [];
    const sandbox = await mountSandbox();
    const peerLog = `${sandbox.target.replace(/\/mnt$/, "")}/peer.log`;
    let index: number | undefined;
    let recoveryFile: string | undefined;
    const peerArgv: string[] = [];
    const step = stepTimer();
    try {
      // Not loopback-looking, so erofs-oci speaks HTTPS; the peer's libcurl trusts the system
      // bundle, Deno trusts DENO_CERT.
      const trusted = trustRegistryAs(registry, registryName);
      undo.push(trusted.undo);
      const env = { ...sandbox.env, DENO_CERT: registry.certPath! };
      const ref = `${trusted.host}/interop/basic:v1`;
      assertSuccess(await runCli(["push", ref, IMAGE], { env, timeoutMs: 120_000 }));
      assertSuccess(
        await runCli(["mount", ref, sandbox.target, "--backend", "nbd"], {
          env,
          timeoutMs: 120_000,
        }),
      );
      step("registry, push, mount");
      index = nbdIndexAt(sandbox.target);
      recoveryFile = nbdSysfs(index, "backend")!;
      const line = Deno.readTextFileSync(recoveryFile);
      console.log(`erofs-oci mount: nbd${index} ${recoveryFile}: ${JSON.stringify(line)}`);
      assert.equal(line, `OCI_NATIVE_BLOB ${ref} linux/amd64 sha256:${await fileSha256(IMAGE)} \n`);
      // The pid `list --json` shows (serverPid), read from the same state file.
      const [ourServer] = serverPids(sandbox.runtimeDir);
      await killAndWait(ourServer);

      const finishRead = await blockedReader(`${sandbox.target}/${BIG_FILE}`);
      peerArgv.push(PEER, "--reattach", `/dev/nbd${index}`);
      const peer = await runPeer(peerArgv.slice(1), peerLog);
      assert.equal(peer.code, 0, `mount.erofs --reattach /dev/nbd${index}:\n${peer.log}`);
      assert.equal(await finishRead(), expectedSha256(BIG_FILE), "bytes read across the kill");
      step("kill, peer reattach, blocked reader");
      // Everything but the big file is still cold: the whole tree through the peer's server.
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      const [peerServer] = processesRunning(peerArgv);
      assert.ok(peerServer, "the peer's server runs");
      console.log(`mount.erofs --reattach: server pid ${peerServer}; log: ${peer.log.trim()}`);
      step("manifest through the peer");

      // erofs-oci still owns the mount (its server is dead): umount unmounts it; the device
      // the peer serves is then disconnected, which ends the peer's server.
      assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 60_000 }));
      assert.deepEqual(mountsBelow(sandbox.target), []);
      await disconnectIfConnected(index, peerLog);
      const deadline = Date.now() + 30_000;
      while (pidAlive(peerServer) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.ok(!pidAlive(peerServer), "the peer's server ends when its device is disconnected");
      step("umount + disconnect");
    } finally {
      for (const pid of peerArgv.length ? processesRunning(peerArgv) : []) {
        try {
          Deno.kill(pid, "SIGKILL");
        } catch { /* gone */ }
      }
      for (const point of mountsBelow(sandbox.target).reverse()) {
        await new Deno.Command("umount", { args: ["-l", point], stderr: "null" }).output();
      }
      if (index !== undefined) await disconnectIfConnected(index, peerLog);
      if (recoveryFile) removeQuietly(recoveryFile, `${recoveryFile}.erofs-oci.json`);
      await sandbox.cleanup();
      await registry.stop();
      for (const restore of undo.reverse()) restore();
    }
  },
});
