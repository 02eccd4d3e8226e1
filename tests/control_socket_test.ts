/**
 * A mount server's control socket under abuse. A burst of connections that ran the server out
 * of descriptors made its accept throw, which ended the server: the mount went "dead, awaiting
 * reattach". A request line without a newline was read whole, and rescanned as it grew (25 MiB
 * took the server from 64 to 352 MB). The socket was bound with the umask of whoever mounted
 * (srwxrwxrwx under umask 000: only its 0700 directory kept others out).
 */
import assert from "node:assert/strict";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";
import {
  expectedManifest,
  manifestOf,
  type MountSandbox,
  mountSandbox,
  pidAlive,
  serverPids,
} from "./_support/mounts.ts";
import { waitFor } from "./_support/wait.ts";
import { controlRequest, MAX_REQUEST_BYTES } from "../lib/daemon/control.ts";

async function withMountedServer(
  fn: (server: { pid: number; socket: string; sandbox: MountSandbox }) => Promise<void>,
): Promise<void> {
  const sandbox = await mountSandbox();
  try {
    assertSuccess(
      await runCli(["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"], {
        env: sandbox.env,
        timeoutMs: 60_000,
      }),
    );
    const [pid] = serverPids(sandbox.runtimeDir);
    const [id] = [...Deno.readDirSync(`${sandbox.runtimeDir}/mounts`)].map((e) => e.name);
    await fn({ pid, socket: `${sandbox.runtimeDir}/mounts/${id}/control.sock`, sandbox });
  } finally {
    await sandbox.cleanup();
  }
}

function openDescriptors(pid: number): number {
  return [...Deno.readDirSync(`/proc/${pid}/fd`)].length;
}

/** Sets the soft limit only: raising it back is allowed, a hard limit would need privilege. */
async function setOpenFileLimit(pid: number, limit: number): Promise<void> {
  const out = await new Deno.Command("prlimit", {
    args: ["--pid", String(pid), `--nofile=${limit}:`],
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
}

function openFileLimit(pid: number): number {
  const limits = Deno.readTextFileSync(`/proc/${pid}/limits`); // soft, hard
  return Number(/^Max open files\s+(\d+)/m.exec(limits)![1]);
}

Deno.test({
  name: "control socket: running out of descriptors at accept does not end the mount's server",
  ignore: requires(root(), path("/dev/fuse"), command("prlimit")),
  async fn() {
    await withMountedServer(async ({ pid, socket, sandbox }) => {
      const limit = openFileLimit(pid);
      // Room for four connections: the fifth accept fails with EMFILE.
      await setOpenFileLimit(pid, openDescriptors(pid) + 4);
      const burst: Deno.Conn[] = [];
      try {
        for (let i = 0; i < 12; i++) {
          burst.push(await Deno.connect({ transport: "unix", path: socket }));
        }
        await waitFor(
          "the server to fail an accept, or to end",
          () => /control socket: cannot accept/.test(sandbox.serverLogs()) || !pidAlive(pid),
        );
      } finally {
        for (const conn of burst) conn.close();
      }
      assert.ok(pidAlive(pid), `the server ended:\n${sandbox.serverLogs()}`);
      await setOpenFileLimit(pid, limit);
      // It still answers on its control socket, and its mount still reads.
      const reply = await controlRequest(socket, { command: "stats" }, 10_000);
      assert.equal(reply?.ok, true, JSON.stringify(reply));
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
    });
  },
});

/**
 * Sends `parts` (stopping when the server stops taking them) and reads the reply line (a
 * server closing with bytes of ours unread resets the connection after its reply).
 */
async function exchange(socket: string, parts: Uint8Array[]): Promise<string> {
  const conn = await Deno.connect({ transport: "unix", path: socket });
  try {
    try {
      for (const part of parts) {
        for (let done = 0; done < part.length;) done += await conn.write(part.subarray(done));
      }
    } catch { /* the server closed its end: the reply is already there */ }
    let reply = "";
    const buffer = new Uint8Array(4096);
    while (!reply.includes("\n")) {
      const n = await conn.read(buffer).catch(() => null);
      if (n === null) break;
      reply += new TextDecoder().decode(buffer.subarray(0, n));
    }
    return reply.trim();
  } finally {
    try {
      conn.close();
    } catch { /* closed by the readable's end */ }
  }
}

function residentKiB(pid: number): number {
  return Number(/^VmRSS:\s+(\d+)/m.exec(Deno.readTextFileSync(`/proc/${pid}/status`))![1]);
}

Deno.test({
  name: "control socket: a request line past 64 KiB is refused unread; the socket is 0600",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    await withMountedServer(async ({ pid, socket }) => {
      assert.equal(Deno.lstatSync(socket).mode! & 0o777, 0o600, "the socket is root's only");
      const before = residentKiB(pid);
      // 32 MiB without a newline: the server stops reading past the limit.
      const huge = new Uint8Array(1 << 20).fill(0x41);
      const reply = await exchange(socket, Array(32).fill(huge));
      assert.deepEqual(JSON.parse(reply), {
        ok: false,
        error: `request longer than ${MAX_REQUEST_BYTES} bytes`,
      });
      const grownMiB = (residentKiB(pid) - before) / 1024;
      assert.ok(grownMiB < 32, `the server grew by ${grownMiB.toFixed(0)} MiB`);
      // A request that arrives in pieces is still read whole.
      const encoder = new TextEncoder();
      const pieces = await exchange(socket, [
        encoder.encode('{"command":'),
        encoder.encode('"stats"}\n'),
      ]);
      assert.equal(JSON.parse(pieces).ok, true, pieces);
      assert.ok(pidAlive(pid));
    });
  },
});
