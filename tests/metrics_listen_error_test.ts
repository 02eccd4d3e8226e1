/**
 * `metrics --listen` / `mount --metrics-listen` on an address it cannot take (in use, a
 * directory that does not exist, a path that is a file, directory or another server's socket):
 * one line naming the address, exit 1; before, an internal error with a hint to report a bug,
 * a live socket taken over, or a mount that served no metrics and said so only in its log.
 */
import assert from "node:assert/strict";
import { assertCliError, runCli } from "./_support/cli.ts";
import { command, FIXTURES, path, REPO_ROOT, requires, root } from "./_support/requires.ts";
import { scrape } from "./_support/prometheus.ts";

const CLI_PATH = `${REPO_ROOT}/scripts/erofs-oci-dev`;
import { mountSandbox, mountsBelow } from "./_support/mounts.ts";

async function metricsListen(address: string) {
  const runtimeDir = await Deno.makeTempDir({ prefix: "erofs-oci-metrics-listen-" });
  try {
    return await runCli(["metrics", "--listen", address], {
      env: { EROFS_OCI_RUNTIME_DIR: runtimeDir },
    });
  } finally {
    await Deno.remove(runtimeDir, { recursive: true });
  }
}

Deno.test("metrics --listen on a TCP port in use: one line, exit 1", async () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const port = (taken.addr as Deno.NetAddr).port;
    assertCliError(
      await metricsListen(`tcp:127.0.0.1:${port}`),
      1,
      new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port}: .*in use`),
    );
  } finally {
    taken.close();
  }
});

Deno.test("metrics --listen on a socket in a missing directory: one line, exit 1", async () => {
  assertCliError(
    await metricsListen("unix:/nonexistent/erofs-oci-test/metrics.sock"),
    1,
    /cannot listen on \/nonexistent\/erofs-oci-test\/metrics\.sock/,
  );
});

Deno.test("metrics --listen unix:PATH that is a file, or another server's socket: refused", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-metrics-sock-" });
  try {
    await Deno.writeTextFile(`${dir}/file`, "kept");
    assertCliError(await metricsListen(`unix:${dir}/file`), 1, /file exists and is not a socket/);
    assert.equal(await Deno.readTextFile(`${dir}/file`), "kept");
    // A live listener: before, its socket file was removed and taken over.
    const live = Deno.listen({ transport: "unix", path: `${dir}/live.sock` });
    try {
      assertCliError(await metricsListen(`unix:${dir}/live.sock`), 1, /is in use by another/);
      assert.ok(Deno.lstatSync(`${dir}/live.sock`).isSocket, "the live socket stays");
    } finally {
      live.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "mount --metrics-listen unix:PATH that is a file or a directory: refused, nothing mounted",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    try {
      Deno.mkdirSync(sandbox.target, { recursive: true });
      const file = `${sandbox.runtimeDir}-file`;
      await Deno.writeTextFile(file, "kept");
      Deno.mkdirSync(`${sandbox.runtimeDir}-dir`);
      for (const taken of [file, `${sandbox.runtimeDir}-dir`]) {
        const result = await runCli(
          ["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--metrics-listen", `unix:${taken}`],
          { env: sandbox.env, timeoutMs: 60_000 },
        );
        assertCliError(result, 1, /--metrics-listen unix:.*exists and is not a socket/);
        assert.deepEqual(mountsBelow(sandbox.target), []);
      }
      assert.equal(await Deno.readTextFile(file), "kept");
    } finally {
      await Deno.remove(`${sandbox.runtimeDir}-file`).catch(() => {});
      await Deno.remove(`${sandbox.runtimeDir}-dir`).catch(() => {});
      await sandbox.cleanup();
    }
  },
});

Deno.test("mount --metrics-listen with a bad address names --metrics-listen", async () => {
  assertCliError(
    await runCli(["mount", "/nonexistent.erofs", "/nonexistent", "--metrics-listen", "foo"]),
    2,
    /^erofs-oci: --metrics-listen foo: unknown address kind$/,
  );
});

Deno.test({
  name: "metrics --listen: a flood of idle connections neither ends it nor keeps scrapers out",
  ignore: requires(command("prlimit")),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "erofs-oci-metrics-flood-" });
    const socket = `${dir}/m.sock`;
    // Few descriptors, so that the flood runs the process out of them (EMFILE at accept).
    const child = new Deno.Command("prlimit", {
      args: ["--nofile=64:64", CLI_PATH, "metrics", "--listen", `unix:${socket}`],
      env: { EROFS_OCI_RUNTIME_DIR: dir, EROFS_OCI_CACHE_DIR: `${dir}/cache` },
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const flood: Deno.Conn[] = [];
    try {
      await scrape(socket); // up and answering
      assert.equal(Deno.statSync(socket).mode! & 0o777, 0o600, "the socket is the owner's only");
      for (let i = 0; i < 150; i++) {
        try {
          flood.push(await Deno.connect({ transport: "unix", path: socket }));
        } catch { /* the backlog is full: enough */ }
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
      for (const conn of flood.splice(0)) conn.close();
      // Still there, and answering.
      const text = await scrape(socket);
      assert.match(text, /^# (HELP|TYPE) erofs_oci_/m);
      // Silent connections that take every slot give them back after the head's 5 s.
      for (let i = 0; i < 64; i++) {
        flood.push(await Deno.connect({ transport: "unix", path: socket }));
      }
      await new Promise((resolve) => setTimeout(resolve, 6000));
      assert.match(await scrape(socket), /^# (HELP|TYPE) erofs_oci_/m);
      // Not HTTP, not GET, not /metrics.
      for (
        const [request, status] of [
          ["garbage\r\n\r\n", 400],
          ["POST /metrics HTTP/1.1\r\n\r\n", 405],
          ["GET /other HTTP/1.1\r\n\r\n", 404],
        ] as const
      ) {
        const conn = await Deno.connect({ transport: "unix", path: socket });
        await conn.write(new TextEncoder().encode(request));
        const reply = new TextDecoder().decode(await new Response(conn.readable).bytes());
        assert.match(reply, new RegExp(`^HTTP/1\\.1 ${status} `), request);
      }
    } finally {
      for (const conn of flood) conn.close();
      child.kill("SIGTERM");
      const status = await child.status;
      const stderr = new TextDecoder().decode((await child.stderr.getReader().read()).value);
      await Deno.remove(dir, { recursive: true });
      assert.equal(status.code, 0, `metrics ended badly: ${stderr}`);
    }
  },
});
