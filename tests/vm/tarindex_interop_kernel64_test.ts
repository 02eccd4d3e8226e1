/**
 * Crash-recovery interop of tar-index devices (an ordinary tar+gzip layer served as
 * [meta][tar] through its zinfo) with erofs-utils 1.9.3, issue 11: a device of
 * `erofs-oci mount --backend nbd` whose server is killed mid-read is taken over by
 * `mount.erofs --reattach` from our TARINDEX_OCI_BLOB recovery line, and a device the peer
 * mounted with `oci.tarindex`/`oci.zinfo` (our `index -o` files) is taken over by
 * `erofs-oci reattach`. The whole tree is read through the new server afterwards; where
 * erofs-oci takes over, a reader started before the kill finishes with the exact bytes.
 *
 * [meta][tar] has 512-byte EROFS blocks, which Linux mounts from 6.4 on only (on older kernels
 * erofs-oci serves a 4 KiB layout mount.erofs does not know): this file runs in the
 * VM_KERNEL=backports boot (the `_kernel64` suffix, scripts/vm/run-tests.sh), skips locally on
 * an older kernel and fails there under CI=true.
 *
 * The peer's `--reattach` speaks HTTPS only (it does not record `oci.insecure`): the erofs-oci
 * mount uses a TLS registry named `registry.test` (tests/_support/peer_nbd.ts).
 */
import assert from "node:assert/strict";
import { IN_CI, requires } from "../_support/requires.ts";
import { startRegistry, type TestRegistry } from "../_support/registry.ts";
import { assertSuccess, describe, runCli } from "../_support/cli.ts";
import { manifestOf, mountSandbox, mountsBelow, pidAlive, serverPids } from "../_support/mounts.ts";
import { pushImage } from "../_support/oci_raw.ts";
import { withTempDir } from "../_support/temp_dir.ts";
import { dropCaches, NOT_IN_VM, runChecked } from "../_support/vm.ts";
import * as peer from "../_support/peer_nbd.ts";
import { kernelHasSubpageBlocks, kernelRelease } from "../../lib/mount/tar_layout.ts";

/** One tar+gzip layer under tarindex/interop:v1, indexed with this build time. */
const IMAGE = {
  repository: "tarindex/interop",
  layerMediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
  timestamp: "1700000000",
};
const LONG = { timeoutMs: 300_000 };
/** Read across the kill: big enough that the reader is still reading when the kill lands. */
const BIG_FILE = "big.bin";
const BIG_FILE_BYTES = 8 << 20;
/** Checkpoint spacing of the index (mount.erofs inflates from the nearest one per read). */
const SPAN_BYTES = 256 << 10;
/**
 * Device requests at most this large before a takeover by mount.erofs. Its server answers one
 * request at a time, fetching and inflating from the nearest checkpoint, and inherits the
 * device's 10 s request timeout (lib/mount/exports.ts): a 4 MiB request through it under TCG
 * takes longer, and the kernel then drops its only socket, which nothing replaces.
 */
const PEER_REQUEST_KB = 128;
/** How long the reader may take after the takeover (TCG, a loaded host). */
const READER_TIMEOUT_MS = 480_000;
/** The kill lands once the reader has this much (of BIG_FILE_BYTES). */
const KILL_AFTER_BYTES = 256 << 10;

const SUBPAGE_KERNEL = kernelHasSubpageBlocks();
const LINUX_64 = {
  missing: () =>
    SUBPAGE_KERNEL
      ? undefined
      : `kernel ${kernelRelease()} mounts no 512-byte EROFS blocks (Linux >= 6.4: VM_KERNEL=backports)`,
};

interface GzipImage {
  tarGz: string;
  /** manifest.py of the tree the layer was made from. */
  manifest: string;
  bigSha256: string;
}

/** A tree (one big random file, a few small ones) as a tar.gz made by GNU tar and gzip. */
async function gzipLayer(work: string): Promise<GzipImage> {
  const tree = `${work}/tree`;
  Deno.mkdirSync(`${tree}/etc/conf.d`, { recursive: true });
  const big = new Uint8Array(BIG_FILE_BYTES);
  for (let at = 0; at < big.length; at += 65536) {
    crypto.getRandomValues(big.subarray(at, at + 65536));
  }
  Deno.writeFileSync(`${tree}/${BIG_FILE}`, big);
  Deno.writeTextFileSync(`${tree}/etc/hostname`, "tarindex\n");
  Deno.writeTextFileSync(`${tree}/etc/conf.d/a.conf`, "x = 1\n".repeat(5000));
  Deno.symlinkSync("conf.d/a.conf", `${tree}/etc/a.conf`);
  Deno.chmodSync(tree, 0o755);
  // The meta image's root gets --timestamp; every member the same mtime.
  await runChecked("find", [tree, "-exec", "touch", "-h", "-d", `@${IMAGE.timestamp}`, "{}", "+"]);
  const tarGz = `${work}/layer.tar.gz`;
  await runChecked("sh", [
    "-c",
    'tar -C "$0" --owner=0 --group=0 --numeric-owner -cf - big.bin etc | gzip -1 >"$1"',
    tree,
    tarGz,
  ]);
  return {
    tarGz,
    manifest: await manifestOf(tree),
    bigSha256: await peer.fileSha256(`${tree}/big.bin`),
  };
}

/** Bytes a process has read so far (/proc/PID/io rchar). */
function bytesRead(pid: number): number {
  try {
    return Number(/^rchar: (\d+)$/m.exec(Deno.readTextFileSync(`/proc/${pid}/io`))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

/**
 * Reads `file` cold in a sha256sum process, runs `kill` once the reader has read
 * KILL_AFTER_BYTES (and checks it is still reading then), then `recover`, and returns the
 * reader's sha256. The reader is killed if it is still running when this fails.
 */
async function readAcrossKill(
  file: string,
  kill: () => Promise<void>,
  recover: () => Promise<void>,
): Promise<string> {
  await dropCaches();
  const reader = new Deno.Command("sha256sum", { args: [file], stdout: "piped", stderr: "piped" })
    .spawn();
  let done = false;
  const output = reader.output().finally(() => done = true);
  try {
    const deadline = Date.now() + 120_000;
    while (!done && bytesRead(reader.pid) < KILL_AFTER_BYTES && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.ok(!done, "the reader finished before the kill: the read was not long enough");
    assert.ok(bytesRead(reader.pid) >= KILL_AFTER_BYTES, "the reader made no progress");
    await kill();
    assert.ok(!done, "the reader finished before the kill");
    console.log(`killed the server after ${bytesRead(reader.pid)} bytes read`);
    await recover();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const result = await Promise.race([
      output,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          let wchan = "?";
          try {
            wchan = Deno.readTextFileSync(`/proc/${reader.pid}/wchan`);
          } catch { /* exited meanwhile */ }
          reject(new Error(`the reader did not finish in ${READER_TIMEOUT_MS} ms (in ${wchan})`));
        }, READER_TIMEOUT_MS);
      }),
    ]).finally(() => clearTimeout(timer));
    assert.equal(result.code, 0, `reader failed: ${new TextDecoder().decode(result.stderr)}`);
    return new TextDecoder().decode(result.stdout).split(" ")[0];
  } finally {
    if (!done) {
      try {
        reader.kill("SIGKILL");
      } catch { /* gone */ }
    }
  }
}

/** The peer's server of nbdN, if it still runs (not a reused pid): for clean-up. */
function isPeerProcess(pid: number): boolean {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/cmdline`).startsWith(`${peer.PEER}\0`);
  } catch {
    return false;
  }
}

async function oursToPeer(plain: TestRegistry, layer: GzipImage, layerDigest: string) {
  const step = peer.stepTimer();
  const registry = await startRegistry({
    auth: "none",
    tls: { dnsName: "registry.test" },
    startTimeoutMs: 60_000,
  });
  const sandbox = await mountSandbox();
  const base = sandbox.target.replace(/\/mnt$/, "");
  const peerLog = `${base}/peer.log`;
  let trusted: ReturnType<typeof peer.trustRegistryAs> | undefined;
  let index: number | undefined;
  let recoveryFile: string | undefined;
  let peerServer: number | undefined;
  try {
    // The image and its pushed index, without a second push: filesystem storage is
    // port-agnostic.
    await runChecked("cp", ["-a", `${plain.storageDir}/.`, `${registry.storageDir}/`]);
    trusted = peer.trustRegistryAs(registry, "registry.test");
    const ref = `${trusted.host}/${IMAGE.repository}:v1`;
    // A durable state dir (the meta and zinfo the recovery line names live there).
    const env = {
      ...sandbox.env,
      DENO_CERT: registry.certPath!,
      EROFS_OCI_STATE_DIR: `${base}/state`,
    };
    const mounted = await runCli(["mount", "--backend", "nbd", ref, sandbox.target], {
      env,
      ...LONG,
    });
    assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
    step("registry, mount");
    index = peer.nbdIndexAt(sandbox.target);
    recoveryFile = peer.nbdSysfs(index, "backend")!;
    const line = Deno.readTextFileSync(recoveryFile);
    console.log(`erofs-oci mount: nbd${index} ${recoveryFile}: ${JSON.stringify(line)}`);
    const fields = line.replace(/\n$/, "").split(" ");
    assert.deepEqual(fields.slice(0, 5), [
      "TARINDEX_OCI_BLOB",
      ref,
      "linux/amd64",
      layerDigest,
      "",
    ]);
    const [meta, zinfo] = fields.slice(5);
    assert.ok(meta.startsWith(`${base}/state/`) && zinfo.startsWith(`${base}/state/`), line);
    assert.ok(Deno.statSync(meta).isFile && Deno.statSync(zinfo).isFile, line);
    // Set while nothing is in flight: from Linux 6.12 such a write freezes the queue.
    for (const name of ["max_sectors_kb", "read_ahead_kb"]) {
      Deno.writeTextFileSync(`/sys/block/nbd${index}/queue/${name}`, `${PEER_REQUEST_KB}\n`);
    }
    // The pid `list --json` shows (the CLI that connected the device has exited).
    const [ourServer] = serverPids(sandbox.runtimeDir);
    assert.ok(ourServer && pidAlive(ourServer), "erofs-oci's server runs");

    // Killed with no read in flight: on 6.12 a takeover by `mount.erofs --reattach` while a
    // read waited for a server did not complete within 10 minutes (the reader stayed in
    // nbd_queue_rq; cause not found), where `erofs-oci reattach` succeeds (the other step).
    await peer.killAndWait(ourServer);
    const run = await peer.runPeer(["--reattach", `/dev/nbd${index}`], peerLog);
    assert.equal(run.code, 0, `mount.erofs --reattach /dev/nbd${index}:\n${run.log}`);
    [peerServer] = peer.processesRunning([peer.PEER, "--reattach", `/dev/nbd${index}`]);
    assert.ok(peerServer, `the peer's server runs:\n${run.log}`);
    await dropCaches();
    // In a child with a deadline: a device whose server stopped answering blocks its reader.
    const read = await runChecked("timeout", [
      String(READER_TIMEOUT_MS / 1000),
      "sha256sum",
      `${sandbox.target}/${BIG_FILE}`,
    ]);
    assert.equal(read.split(" ")[0], layer.bigSha256, "bytes read through the peer");
    step("kill, peer reattach, big file through the peer");
    // Everything else is cold: the whole tree through the peer's server.
    assert.equal(await manifestOf(sandbox.target), layer.manifest);
    step("manifest through the peer");

    // erofs-oci still owns the mount (its server is dead): umount unmounts it; disconnecting
    // the device the peer serves ends the peer's server.
    assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 60_000 }));
    assert.deepEqual(mountsBelow(sandbox.target), []);
    await peer.disconnectIfConnected(index, peerLog);
    const deadline = Date.now() + 30_000;
    while (pidAlive(peerServer!) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(!pidAlive(peerServer!), "the peer's server ends when its device is disconnected");
  } finally {
    if (peerServer !== undefined && isPeerProcess(peerServer)) Deno.kill(peerServer, "SIGKILL");
    await peer.releaseNbdMount(sandbox.target, index, recoveryFile, peerLog);
    await sandbox.cleanup();
    await registry.stop();
    trusted?.undo();
  }
}

async function peerToOurs(
  plain: TestRegistry,
  layer: GzipImage,
  layerDigest: string,
  indexDir: string,
) {
  const step = peer.stepTimer();
  const sandbox = await mountSandbox();
  const base = sandbox.target.replace(/\/mnt$/, "");
  const peerLog = `${base}/peer.log`;
  const env = { ...sandbox.env, EROFS_OCI_STATE_DIR: `${base}/state` };
  let index: number | undefined;
  let recoveryFile: string | undefined;
  let peerServer: number | undefined;
  try {
    const name = layerDigest.replace(":", "-");
    const meta = `${indexDir}/${name}.meta.erofs`;
    const zinfo = `${indexDir}/${name}.zinfo`;
    const ref = `${plain.host}/${IMAGE.repository}:v1`;
    const options = `oci.blob=${layerDigest},oci.tarindex=${meta},oci.zinfo=${zinfo},oci.insecure`;
    const run = await peer.runPeer(
      ["-t", "erofs.nbd", "-o", options, ref, sandbox.target],
      peerLog,
    );
    assert.equal(run.code, 0, `mount.erofs -o ${options} ${ref}:\n${run.log}`);
    assert.doesNotMatch(
      run.log,
      /Fall back to ioctl/,
      "the peer must use netlink (recovery file)",
    );
    index = peer.nbdIndexAt(sandbox.target);
    peerServer = peer.nbdServerProcess(index);
    assert.ok(isPeerProcess(peerServer), "nbd is served by mount.erofs");
    recoveryFile = peer.nbdSysfs(index, "backend")!;
    const line = Deno.readTextFileSync(recoveryFile);
    console.log(`mount.erofs: nbd${index} ${recoveryFile}: ${JSON.stringify(line)}`);
    assert.match(line, /^TARINDEX_OCI_BLOB /);
    step("peer mount");

    const sha = await readAcrossKill(
      `${sandbox.target}/${BIG_FILE}`,
      () => peer.killAndWait(peerServer!),
      async () => {
        const reattached = await runCli(["reattach", `/dev/nbd${index}`], { env, ...LONG });
        assertSuccess(reattached);
        assert.match(reattached.stdout, new RegExp(`nbd${index}\\s+reattached`));
      },
    );
    assert.equal(sha, layer.bigSha256, "bytes read across the kill");
    step("kill, erofs-oci reattach, reader");
    await dropCaches();
    assert.equal(await manifestOf(sandbox.target), layer.manifest);
    step("manifest through erofs-oci");

    // Adopted: erofs-oci unmounts it like its own.
    assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 60_000 }));
    assert.deepEqual(mountsBelow(sandbox.target), []);
    assert.equal(peer.nbdSysfs(index, "pid"), undefined, `nbd${index} disconnected`);
    assert.throws(() => Deno.statSync(recoveryFile!), "recovery file removed");
  } finally {
    if (peerServer !== undefined && isPeerProcess(peerServer)) Deno.kill(peerServer, "SIGKILL");
    await peer.releaseNbdMount(sandbox.target, index, recoveryFile, peerLog);
    await sandbox.cleanup();
  }
}

Deno.test({
  name: "vm kernel64 interop: tar+gzip (tar-index) devices taken over after kill -9 " +
    "between erofs-oci and mount.erofs 1.9.3",
  ignore: NOT_IN_VM || requires(LINUX_64),
  fn: (t) =>
    withTempDir("erofs-oci-tarindex-interop-", async (work) => {
      assert.equal(LINUX_64.missing(), undefined, `CI=${IN_CI}: this file needs Linux >= 6.4`);
      Deno.mkdirSync(peer.RECOVERY_DIR, { recursive: true, mode: 0o700 });
      const step = peer.stepTimer();
      const layer = await gzipLayer(work);
      await using plain = await startRegistry({ auth: "none", startTimeoutMs: 60_000 });
      const pushed = await pushImage(plain, IMAGE.repository, "v1", [{
        bytes: Deno.readFileSync(layer.tarGz),
        mediaType: IMAGE.layerMediaType,
      }]);
      const layerDigest = pushed.layers[0].digest;
      // Pushed (for erofs-oci mount) and kept in a directory (for the peer's -o).
      const indexDir = `${work}/index`;
      assertSuccess(
        await runCli([
          "index",
          `${plain.host}/${IMAGE.repository}:v1`,
          "--push",
          "-o",
          indexDir,
          "--timestamp",
          IMAGE.timestamp,
          // Small spans: mount.erofs inflates from the nearest checkpoint for every read.
          "--span",
          String(SPAN_BYTES),
        ], LONG),
      );
      step("layer, push, index");
      const ours = await t.step(
        "erofs-oci mount, kill -9, mount.erofs --reattach takes over",
        () => oursToPeer(plain, layer, layerDigest),
      );
      const theirs = await t.step(
        "mount.erofs -o oci.tarindex,oci.zinfo, kill -9 mid-read, erofs-oci reattach takes over",
        () => peerToOurs(plain, layer, layerDigest, indexDir),
      );
      assert.ok(ours && theirs, "a step failed (see above)");
    }),
});
