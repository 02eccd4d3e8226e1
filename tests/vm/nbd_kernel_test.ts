/**
 * Kernel NBD attach/detach against the real nbd driver (Debian 6.1 kernel in the QEMU VM):
 * netlink CONNECT with 1 and 4 connections, queue tuning, mount of an EROFS fixture, manifest
 * compare, DISCONNECT; RECONFIGURE after the server connections died; the ioctl fallback; and
 * the kernel's refusals turned into clear errors. Runs only in the VM (EROFS_OCI_IN_VM=1).
 */
import assert from "node:assert/strict";
import { dropCaches, NOT_IN_VM, runChecked, runCommand } from "../_support/vm.ts";
import { FIXTURES, REPO_ROOT } from "../_support/requires.ts";
import { withTempDir } from "../_support/temp_dir.ts";
import { NbdError } from "../../lib/errors.ts";
import { LocalFile } from "../../lib/source/local_file.ts";
import type { Source } from "../../lib/source/source.ts";
import { serveTransmission, type TransmissionEnd } from "../../lib/nbd/transmission.ts";
import {
  closeKernelFds,
  connectNbd,
  disconnectNbd,
  NBD_ATTR_SOCKETS,
  NBD_CMD_CONNECT,
  NBD_GENL_VERSION,
  NBD_SOCK_FD,
  NBD_SOCK_ITEM,
  nbdStatus,
  openKernelConnections,
  reconfigureNbd,
  resolveNbdFamily,
} from "../../lib/nbd/kernel.ts";
import { attr, NetlinkError } from "../../lib/nbd/netlink.ts";
import { GenlSocket } from "../../lib/nbd/genl_socket.ts";
import { attachNbdIoctl } from "../../lib/nbd/ioctl.ts";
import { attachNbd } from "../../lib/nbd/attach.ts";
import {
  findFreeNbdDevice,
  listNbdDevices,
  nbdBackend,
  nbdIndexOfBlockDevice,
  nbdPid,
  nbdQueueTuning,
  nbdSizeBytes,
  tuneNbdQueue,
} from "../../lib/nbd/sysfs.ts";
import { readSmallFile } from "../../ffi/files.ts";

const IMAGE = `${FIXTURES}/basic.erofs`;
const EXPECTED = Deno.readTextFileSync(`${FIXTURES}/expected/basic.txt`);

interface Server {
  kernelFds: number[];
  conns: Deno.Conn[];
  ends: Promise<TransmissionEnd>[];
  requests: number;
}

/** `count` connections served from `source` by the project's transmission server. */
async function startServer(source: Source, count: number, dir: string): Promise<Server> {
  const { kernelFds, conns } = await openKernelConnections(count, dir);
  const server: Server = { kernelFds, conns, ends: [], requests: 0 };
  server.ends = conns.map((conn) =>
    serveTransmission(conn, source, { readOnly: true, onRequest: () => server.requests++ })
  );
  return server;
}

/** The fixture manifest of `dir`; with `cpu`, read from that CPU only (taskset). */
async function manifestOf(dir: string, cpu?: number): Promise<string> {
  const command = ["python3", `${FIXTURES}/manifest.py`, dir];
  if (cpu !== undefined) command.unshift("taskset", "-c", `${cpu}`);
  const [program, ...args] = command;
  return await runChecked(program, args);
}

/** MAJ:MIN of the filesystem mounted at `dir`, from /proc/self/mountinfo. */
function mountedDevice(dir: string): [number, number] | undefined {
  const info = readSmallFile("/proc/self/mountinfo", 1 << 20) ?? "";
  for (const line of info.split("\n")) {
    const f = line.split(" ");
    if (f[4] === dir) {
      const [major, minor] = f[2].split(":").map(Number);
      return [major, minor];
    }
  }
  return undefined;
}

/** The process (Tgid) a thread id belongs to: sysfs `pid` holds the connecting *thread*. */
function processOfThread(tid: number | undefined): number | undefined {
  const status = tid === undefined ? undefined : readSmallFile(`/proc/${tid}/status`);
  const m = status && /^Tgid:\s*(\d+)$/m.exec(status);
  return m ? Number(m[1]) : undefined;
}

/** One test's temp dir, the fixture image open as a Source, and what is left to undo. */
interface Rig {
  dir: string;
  source: LocalFile;
  /** Empty directory to mount on. */
  mnt: string;
  /** Set while this test's device is connected (netlink): disconnected by the cleanup. */
  index?: number;
  mounted: boolean;
  /** Set while an ioctl attachment is up: detached by the cleanup. */
  detach?: () => Promise<void>;
}

/**
 * The test body `fn` with a fresh Rig; afterwards, whatever happened, a lazy unmount, a
 * disconnect of the device (errors logged: the cleanup must not mask the test's own failure)
 * and the source closed.
 */
function withRig(fn: (rig: Rig) => Promise<void>): () => Promise<void> {
  return () =>
    withTempDir("nbd-kernel-", async (dir) => {
      const rig: Rig = {
        dir,
        source: await LocalFile.open(IMAGE),
        mnt: `${dir}/mnt`,
        mounted: false,
      };
      try {
        await Deno.mkdir(rig.mnt);
        await fn(rig);
      } finally {
        if (rig.mounted) await runCommand("umount", ["-l", rig.mnt]);
        if (rig.index !== undefined && nbdPid(rig.index) !== undefined) {
          await disconnectNbd(rig.index).catch((e) => console.error(`cleanup: ${e}`));
        }
        if (rig.detach) await rig.detach();
        await rig.source.close();
      }
    });
}

/** mount(8) of /dev/nbdN on the rig's mnt: a subprocess, so this thread keeps serving reads. */
async function mountNbd(rig: Rig, index: number): Promise<void> {
  await runChecked("mount", ["-t", "erofs", "-o", "ro", `/dev/nbd${index}`, rig.mnt]);
  rig.mounted = true;
}

async function unmount(rig: Rig): Promise<void> {
  await runChecked("umount", [rig.mnt]);
  rig.mounted = false;
}

/** CONNECT options shared by these tests: read-only, the whole fixture. */
function connectOptions(rig: Rig, server: Server, backendId: string) {
  return {
    sizeBytes: rig.source.size,
    socketFds: server.kernelFds,
    timeoutS: 30,
    deadConnTimeoutS: 60,
    backendId,
    readOnly: true as const,
  };
}

for (const connections of [1, 4]) {
  Deno.test({
    name:
      `netlink CONNECT with ${connections} connection(s): tune, mount, manifest, DISCONNECT, free`,
    ignore: NOT_IN_VM,
    fn: withRig(async (rig) => {
      const { dir, source, mnt } = rig;
      const backendId = `${dir}/backend-${connections}`;
      const server = await startServer(source, connections, dir);
      const index = rig.index = await connectNbd({
        ...connectOptions(rig, server, backendId),
        // Not a block multiple: the device must still cover the whole image (rounded up).
        sizeBytes: source.size - 1000,
      });
      closeKernelFds(server.kernelFds);

      assert.equal(
        processOfThread(nbdPid(index)),
        Deno.pid,
        "pid = a thread of the CONNECT sender",
      );
      assert.equal(nbdBackend(index), backendId);
      assert.equal(nbdSizeBytes(index), source.size);
      assert.deepEqual(nbdStatus(index), [{ index, connected: true }]);
      const all = nbdStatus();
      assert.ok(all.length >= 16, `STATUS of all devices: ${all.length}`);
      assert.deepEqual(all.filter((d) => d.connected).map((d) => d.index), [index]);
      assert.ok(listNbdDevices().some((d) => d.index === index && d.pid === nbdPid(index!)));
      assert.notEqual(findFreeNbdDevice(), index);

      const applied = await tuneNbdQueue(index, { maxSectorsKb: 8192, readAheadKb: 4096 });
      assert.deepEqual(nbdQueueTuning(index), applied);
      assert.equal(applied.readAheadKb, 4096);
      assert.ok(applied.maxSectorsKb >= 128, `max_sectors_kb ${applied.maxSectorsKb}`);

      await mountNbd(rig, index);
      const dev = mountedDevice(mnt);
      assert.ok(dev, "mount listed in mountinfo");
      assert.equal(nbdIndexOfBlockDevice(dev[0], dev[1]), index);
      assert.equal(await manifestOf(mnt), EXPECTED);
      assert.ok(server.requests > 0);

      await unmount(rig);
      await disconnectNbd(index);
      const ends = await Promise.all(server.ends);
      for (const end of ends) {
        assert.ok(["disconnect", "eof", "closed"].includes(end.reason), end.reason);
      }
      assert.equal(nbdPid(index), undefined, "pid attribute gone after DISCONNECT");
      assert.equal(nbdBackend(index), undefined);
      assert.equal(nbdSizeBytes(index), 0);
      assert.deepEqual(nbdStatus(index), [{ index, connected: false }]);
      rig.index = undefined;
    }),
  });
}

Deno.test({
  name: "attachNbd: netlink mode, queue tuned (reset from a previous attach), mount, detach",
  ignore: NOT_IN_VM,
  fn: withRig(async (rig) => {
    const server = await startServer(rig.source, 2, rig.dir);
    const attachment = await attachNbd({
      ...connectOptions(rig, server, `${rig.dir}/attach`),
      tuning: { maxSectorsKb: 1024, readAheadKb: 512 },
    });
    closeKernelFds(server.kernelFds);
    const index = rig.index = attachment.index;
    assert.equal(attachment.mode, "netlink");
    assert.deepEqual(nbdQueueTuning(index), { maxSectorsKb: 1024, readAheadKb: 512 });
    await mountNbd(rig, index);
    assert.equal(await manifestOf(rig.mnt), EXPECTED);
    await unmount(rig);
    await attachment.detach();
    await Promise.all(server.ends);
    assert.equal(nbdPid(index), undefined);
    rig.index = undefined;
  }),
});

Deno.test({
  name:
    "attachNbd: the new device's partition scan is read before it returns, not at the first open",
  ignore: NOT_IN_VM,
  fn: withRig(async (rig) => {
    // Every read the kernel sends, as [offset, length].
    const reads: [number, number][] = [];
    const recording: Source = {
      size: rig.source.size,
      read: (offset, length, signal) => {
        reads.push([offset, length]);
        return rig.source.read(offset, length, signal);
      },
    };
    const server = await startServer(recording, 2, rig.dir);
    const attachment = await attachNbd(connectOptions(rig, server, `${rig.dir}/attach`));
    closeKernelFds(server.kernelFds);
    const index = rig.index = attachment.index;
    // The partition parsers read the 4 KiB page at 4096 (the amiga one's sectors 8-15).
    const atAttach = [...reads];
    assert(
      atAttach.some(([offset, length]) => offset <= 4096 && offset + length > 4096),
      `no read of the page at 4096 during the attach: ${JSON.stringify(atAttach)}`,
    );
    reads.length = 0;
    await mountNbd(rig, index);
    // The mount's own open found the table read already: no second scan.
    assert(
      !reads.some(([offset, length]) => offset <= 4096 && offset + length > 4096),
      `the mount read the page at 4096 again: ${JSON.stringify(reads)}`,
    );
    assert.equal(await manifestOf(rig.mnt), EXPECTED);
    await unmount(rig);
    await attachment.detach();
    await Promise.all(server.ends);
    rig.index = undefined;
  }),
});

/**
 * [connections at CONNECT, sockets at RECONFIGURE]. 4 → 1: a device attached by an erofs-oci
 * before one connection per device (lib/mount/exports.ts NBD_CONNECTIONS) and taken over by
 * `reattach` of this one: one fresh socket fills one dead slot, and requests queued for the other
 * slots (submitted from the other CPUs) must fall back to it.
 */
for (const [connections, fresh] of [[2, 2], [4, 1]]) {
  Deno.test({
    name:
      `RECONFIGURE (${connections} connections, ${fresh} fresh): fresh sockets replace dead ones; data still readable; wrong backend refused`,
    ignore: NOT_IN_VM,
    fn: withRig(async (rig) => {
      const { dir, source, mnt } = rig;
      const backendId = `${dir}/backend-reconf`;
      const first = await startServer(source, connections, dir);
      const index = rig.index = await connectNbd({
        ...connectOptions(rig, first, backendId),
        timeoutS: 5,
      });
      closeKernelFds(first.kernelFds);
      await mountNbd(rig, index);
      assert.equal(await manifestOf(mnt), EXPECTED);

      // The server "dies": its ends close; the kernel marks every connection dead.
      for (const conn of first.conns) conn.close();
      await Promise.all(first.ends);
      await new Promise((r) => setTimeout(r, 500));

      const second = await startServer(source, fresh, dir);
      try {
        const wrong = await reconfigureNbd(index, second.kernelFds, "another-backend").then(
          () => undefined,
          (e) => e,
        );
        assert.ok(wrong instanceof NbdError, `expected NbdError, got ${wrong}`);
        assert.match(wrong.message, /RECONFIGURE of nbd\d+ failed: invalid argument/);
        assert.match(wrong.hint ?? "", /backend identifier/);

        await reconfigureNbd(index, second.kernelFds, backendId, 5);
      } finally {
        closeKernelFds(second.kernelFds);
      }
      assert.equal(nbdBackend(index), backendId);
      // Cold reads submitted from each CPU: each goes to its CPU's queue, whose slot may be dead.
      const cpus = navigator.hardwareConcurrency;
      for (let cpu = 0; cpu < cpus; cpu++) {
        await dropCaches();
        assert.equal(
          await manifestOf(mnt, cpu),
          EXPECTED,
          `cold reads from CPU ${cpu} after RECONFIGURE`,
        );
      }
      assert.ok(second.requests > 0, "the new connections served the reads");

      await unmount(rig);
      await disconnectNbd(index);
      await Promise.all(second.ends);
      assert.equal(nbdPid(index), undefined);
      rig.index = undefined;
    }),
  });
}

Deno.test({
  name: "ioctl fallback: free device, NBD_DO_IT on a pool thread, mount, detach, free again",
  ignore: NOT_IN_VM,
  fn: withRig(async (rig) => {
    const { dir, source, mnt } = rig;
    const server = await startServer(source, 2, dir);
    const attachment = await attachNbdIoctl({
      sizeBytes: source.size,
      socketFds: server.kernelFds,
      timeoutS: 30,
      readOnly: true,
    });
    rig.detach = attachment.detach;
    closeKernelFds(server.kernelFds);
    const { index } = attachment;
    assert.equal(
      processOfThread(nbdPid(index)),
      Deno.pid,
      "NBD_DO_IT runs on one of our threads",
    );
    assert.equal(nbdBackend(index), undefined, "no backend identifier with ioctls");
    assert.equal(nbdSizeBytes(index), source.size);
    await tuneNbdQueue(index, { maxSectorsKb: 8192, readAheadKb: 4096 });

    await mountNbd(rig, index);
    assert.equal(await manifestOf(mnt), EXPECTED);
    await unmount(rig);

    await attachment.detach();
    rig.detach = undefined;
    assert.equal(
      await attachment.running,
      0,
      "NBD_DO_IT returned 0 after a requested disconnect",
    );
    await Promise.all(server.ends);
    assert.equal(nbdPid(index), undefined);
    assert.equal(nbdSizeBytes(index), 0);
  }),
});

Deno.test({
  name:
    "kernel refusals become clear NbdErrors (bad size, missing size, busy index, unknown device)",
  ignore: NOT_IN_VM,
  fn: withRig(async (rig) => {
    const { dir, source } = rig;
    const server = await startServer(source, 1, dir);
    const base = {
      socketFds: server.kernelFds,
      timeoutS: 30,
      deadConnTimeoutS: 0,
      backendId: "errors",
      readOnly: true as const,
    };
    await assert.rejects(connectNbd({ ...base, sizeBytes: 0 }), (e: Error) => {
      assert.ok(e instanceof NbdError);
      assert.match(e.message, /invalid NBD device size 0/);
      return true;
    });

    // What the kernel itself says to a CONNECT without SIZE_BYTES (our API never sends one).
    const sock = GenlSocket.open();
    try {
      const noSize = await sock.request({
        family: resolveNbdFamily(),
        cmd: NBD_CMD_CONNECT,
        version: NBD_GENL_VERSION,
        attrs: [
          attr.nested(NBD_ATTR_SOCKETS, [
            attr.nested(NBD_SOCK_ITEM, [attr.u32(NBD_SOCK_FD, server.kernelFds[0])]),
          ]),
        ],
      }, "raw CONNECT").then(() => undefined, (e) => e);
      assert.ok(noSize instanceof NetlinkError, `expected NetlinkError, got ${noSize}`);
      assert.equal(noSize.errno, 22);
    } finally {
      sock.close();
    }

    const index = rig.index = await connectNbd({ ...base, sizeBytes: source.size });
    const busy = await connectNbd({ ...base, sizeBytes: source.size, index }).then(
      () => undefined,
      (e) => e,
    );
    assert.ok(busy instanceof NbdError, `expected NbdError, got ${busy}`);
    assert.equal(busy.message, `nbd${index} is already in use`);

    const missing = await disconnectNbd(4000).then(() => undefined, (e) => e);
    assert.ok(missing instanceof NbdError, `expected NbdError, got ${missing}`);
    assert.match(missing.message, /nbd4000 failed: invalid argument/);
    assert.match(missing.hint ?? "", /does not exist/);

    closeKernelFds(server.kernelFds);
    await disconnectNbd(index);
    await Promise.all(server.ends);
    rig.index = undefined;
  }),
});

Deno.test({
  name: "without root: CONNECT and queue tuning fail with 'run as root'; STATUS works",
  ignore: NOT_IN_VM,
  fn: () =>
    withTempDir("nbd-kernel-", async (dir) => {
      await Deno.chmod(dir, 0o777);
      const probe = `${REPO_ROOT}/tests/_support/nbd_unprivileged_probe.ts`;
      const out = await runChecked("setpriv", [
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "env",
        `DENO_DIR=${dir}/deno`,
        `HOME=${dir}`,
        Deno.execPath(),
        "run",
        "--no-check",
        ...Deno.readTextFileSync(`${REPO_ROOT}/scripts/permissions`).split("\n")
          .filter((l) => l.startsWith("--")).join(" ").split(" "),
        probe,
      ]);
      const result = JSON.parse(out);
      assert.equal(result.connect.name, "NbdError", JSON.stringify(result.connect));
      assert.match(result.connect.message, /NBD CONNECT of an NBD device: permission denied/);
      assert.match(result.connect.hint, /run as root/);
      assert.equal(result.tune.name, "NbdError", JSON.stringify(result.tune));
      assert.match(result.tune.hint, /run as root/);
      assert.ok(Array.isArray(result.status), JSON.stringify(result.status));
    }),
});
