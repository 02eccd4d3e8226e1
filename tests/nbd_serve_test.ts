/**
 * `erofs-oci serve` as a user runs it (a subprocess), checked with the real libnbd clients
 * (nbdinfo, nbdcopy, nbdfuse) and with hostile raw clients that must not disturb the others.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { command, FIXTURES, path, REPO_ROOT, requires, root } from "./_support/requires.ts";
import { serve } from "./_support/serve_process.ts";
import { assertCliError, runCli } from "./_support/cli.ts";
import { encodeRequest, RawNbdClient } from "./_support/nbd_client.ts";
import { NBD_CMD_READ, NBD_EINVAL } from "../lib/nbd/protocol.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { startRegistry } from "./_support/registry.ts";
import { EROFS_MEDIA_TYPE } from "./_support/oci_fixtures.ts";
import { runTool } from "./_support/tool.ts";

const BASIC = `${FIXTURES}/basic.erofs`;
const ignoreNbd = requires(command("nbdinfo"), command("nbdcopy"));

/** Tool runs here get 30 s (nbdcopy of a whole image on a loaded host). */
function run(cmd: string, args: string[]): Promise<string> {
  return runTool(cmd, args, 30_000);
}

async function sameAsFixture(file: string): Promise<void> {
  const [a, b] = await Promise.all([Deno.readFile(file), Deno.readFile(BASIC)]);
  ok(a.length === b.length, `${file}: ${a.length} bytes, fixture ${b.length}`);
  ok(a.every((byte, i) => byte === b[i]), `${file} differs from the fixture`);
}

Deno.test({
  name: "serve: nbdinfo sees size, read-only and multi-conn; nbdinfo --list names the export",
  ignore: ignoreNbd,
  async fn() {
    await using s = await serve(BASIC, ["--export-name", "basic", "--cache-size", "8M"]);
    assertEquals(s.uri, `nbd+unix:///basic?socket=${s.socket}`);
    const info = JSON.parse(await run("nbdinfo", ["--json", s.uri]));
    const exp = info.exports[0];
    assertEquals(exp["export-size"], Deno.statSync(BASIC).size);
    assertEquals(exp.is_read_only, true);
    assertEquals(exp.can_multi_conn, true);
    assertEquals(exp.can_flush, true);
    assertEquals(exp.can_trim, false);
    assertEquals(exp.block_size_preferred, 4096);
    ok(/EROFS/.test(exp.content ?? ""), `content: ${exp.content}`);
    // Every client reads the description: the file's name, not where it lies on this host.
    assertEquals(exp.description, "erofs-oci basic.erofs");
    // The default export "" works too.
    const byDefault = JSON.parse(
      await run("nbdinfo", ["--json", `nbd+unix:///?socket=${s.socket}`]),
    );
    assertEquals(byDefault.exports[0]["export-size"], exp["export-size"]);
    const list = await run("nbdinfo", ["--list", `nbd+unix:///?socket=${s.socket}`]);
    ok(list.includes('export="basic"'), list);
    assertEquals(await s.stop(), 0);
    ok(!exists(s.socket), "socket removed after SIGTERM");
  },
});

Deno.test({
  name: "serve: nbdcopy gets the fixture byte for byte, from several clients at once",
  ignore: ignoreNbd,
  async fn() {
    await using s = await serve(BASIC);
    const outs = [0, 1, 2, 3].map((i) => `${s.dir}/out${i}.img`);
    await Promise.all([
      run("nbdcopy", [s.uri, outs[0]]),
      run("nbdcopy", ["--connections=4", "--requests=16", s.uri, outs[1]]),
      run("nbdcopy", ["--request-size=4096", s.uri, outs[2]]),
      run("nbdcopy", ["--connections=2", s.uri, outs[3]]),
    ]);
    for (const out of outs) await sameAsFixture(out);
    assertEquals(await s.stop(), 0);
  },
});

Deno.test({
  name: "serve: hostile raw clients do not crash or stall the server for others",
  ignore: ignoreNbd,
  async fn() {
    await using s = await serve(BASIC);
    const size = Deno.statSync(BASIC).size;
    const fixture = await Deno.readFile(BASIC);
    const hostile: RawNbdClient[] = [];
    try {
      // 1. Garbage instead of client flags and options.
      const garbage = await RawNbdClient.connectUnix(s.socket);
      hostile.push(garbage);
      await garbage.readExactly(18);
      await garbage.write(new Uint8Array(64).fill(0xff));
      // 2. Silent: connects, never speaks (holds a handshake slot).
      const silent = await RawNbdClient.connectUnix(s.socket);
      hostile.push(silent);
      // 3. Bad request magic after a good handshake.
      const badMagic = await RawNbdClient.connectUnix(s.socket);
      hostile.push(badMagic);
      await badMagic.handshake();
      await badMagic.write(encodeRequest(NBD_CMD_READ, 1n, 0, 4096, { magic: 0xdeadbeef }));
      // 4. Half a request, then gone.
      const abrupt = await RawNbdClient.connectUnix(s.socket);
      await abrupt.handshake();
      await abrupt.request(NBD_CMD_READ, 0, 1 << 20); // a big reply it will never read
      await abrupt.write(encodeRequest(NBD_CMD_READ, 2n, 0, 4096).subarray(0, 11));
      abrupt.close();
      // 5. Never reads its replies while asking for a lot.
      const hog = await RawNbdClient.connectUnix(s.socket);
      hostile.push(hog);
      await hog.handshake();
      for (let i = 0; i < 32; i++) await hog.request(NBD_CMD_READ, 0, 1 << 20);

      ok(await garbage.closedByServer(), "garbage client dropped");
      ok(await badMagic.closedByServer(), "bad-magic client dropped");

      // A well-behaved raw client reading up to the end; past it is EINVAL (the NBD spec's
      // SHOULD: the export has no such bytes).
      const good = await RawNbdClient.connectUnix(s.socket);
      try {
        await good.handshake();
        await good.request(NBD_CMD_READ, size - 100, 100);
        assertEquals((await good.reply())?.data, fixture.subarray(size - 100));
        await good.request(NBD_CMD_READ, size - 100, 4096);
        assertEquals((await good.reply())?.error, NBD_EINVAL);
        await good.request(NBD_CMD_READ, size + 8192, 512);
        assertEquals((await good.reply())?.error, NBD_EINVAL);
      } finally {
        good.close();
      }
      // And the real client still gets every byte.
      await run("nbdcopy", [s.uri, `${s.dir}/out.img`]);
      await sameAsFixture(`${s.dir}/out.img`);
      // SIGTERM stops promptly although the hog's replies are stuck in a full socket and the
      // silent client is still in its handshake.
      const started = Date.now();
      assertEquals(await s.stop(), 0, s.stderr());
      ok(Date.now() - started < 5000, `stop took ${Date.now() - started} ms`);
      // The unix socket is root's only: no TCP exposure warning.
      ok(!s.stderr().includes("serving over TCP"), s.stderr());
    } finally {
      for (const c of hostile) c.close();
    }
  },
});

Deno.test({
  name: "serve: TCP listener on an ephemeral port",
  ignore: ignoreNbd,
  async fn() {
    const dir = await Deno.makeTempDir();
    const child = new Deno.Command(`${REPO_ROOT}/scripts/erofs-oci-dev`, {
      args: ["serve", BASIC, "--listen", "tcp:127.0.0.1:0"],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const stderr = new Response(child.stderr).text();
    try {
      const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
      let out = "";
      while (!out.includes("\n")) {
        const { value, done } = await reader.read();
        if (done) break;
        out += value;
      }
      const uri = out.trim();
      ok(/^nbd:\/\/127\.0\.0\.1:\d+\/basic\.erofs$/.test(uri), uri);
      await run("nbdcopy", [uri, `${dir}/tcp.img`]);
      await sameAsFixture(`${dir}/tcp.img`);
      child.kill("SIGINT");
      assertEquals((await child.status).code, 0);
      await reader.cancel();
      // Whoever can connect reads every block: the operator is told once, at start.
      assertEquals(
        (await stderr).match(/serving over TCP: any local user .* can read the whole image/g)
          ?.length,
        1,
      );
    } finally {
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
      await child.status;
      await stderr.catch(() => {});
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "serve: a hangup (SIGHUP) stops it cleanly, as SIGTERM does: exit 0, socket removed",
  ignore: ignoreNbd,
  async fn() {
    await using s = await serve(BASIC);
    s.child.kill("SIGHUP");
    assertEquals((await s.child.status).code, 0, s.stderr());
    let left = true;
    try {
      Deno.lstatSync(s.socket);
    } catch {
      left = false;
    }
    ok(!left, `${s.socket} left behind`);
  },
});

Deno.test("serve: refuses a file that is not EROFS, and bad options", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const bogus = `${dir}/bogus.img`;
    await Deno.writeFile(bogus, new Uint8Array(8192).fill(0x41));
    const result = await runCli(["serve", bogus, "--listen", `unix:${dir}/s.sock`]);
    assertCliError(result, 1, /not an EROFS image/);
    ok(!exists(`${dir}/s.sock`), "nothing listened");
    assertCliError(await runCli(["serve", BASIC]), 2, /--listen is required/);
    assertCliError(
      await runCli(["serve", BASIC, "--listen", "udp:x"]),
      2,
      /unknown address kind/,
    );
    assertCliError(
      await runCli(["serve", BASIC, "--listen", `unix:${dir}/s`, "--cache-size", "lots"]),
      2,
      /invalid size/,
    );
    assertCliError(
      await runCli(["serve", BASIC, "--listen", `unix:${dir}/s`, "--cache-size", "1K"]),
      2,
      /smaller than one chunk/,
    );
    assertCliError(
      await runCli(["serve", BASIC, "--listen", `unix:${dir}/s`, "--max-inflight", "8M"]),
      2,
      /--max-inflight 8M is below 16M/,
    );
    assertCliError(
      await runCli(["serve", BASIC, "--listen", `unix:${dir}/s`, "--idle-timeout", "soon"]),
      2,
      /--idle-timeout: invalid duration 'soon'/,
    );
    assertCliError(
      await runCli(["serve", BASIC, "--listen", `unix:${dir}/s`, "--idle-timeout", "999h"]),
      2,
      /--idle-timeout: '999h' is longer than the most allowed \(24d\)/,
    );
    // Longer than the NBD protocol's strings: every libnbd client refused the export.
    assertCliError(
      await runCli([
        "serve",
        BASIC,
        "--listen",
        `unix:${dir}/s`,
        "--export-name",
        "n".repeat(4097),
      ]),
      2,
      /--export-name must be at most 4096 bytes/,
    );
    ok(!exists(`${dir}/s`), "nothing listened");
    // Under /dev (a tmpfs at /dev/shm, say): Deno's refusal asked for --allow-all and named a
    // temporary name of ours.
    for (const args of [["serve", BASIC], ["metrics"]]) {
      const refused = await runCli([...args, "--listen", "unix:/dev/shm/erofs-oci-test.sock"]);
      assertCliError(refused, 1, /makes no socket under \/dev, \/proc or \/sys/);
      ok(!/allow-all|\.bind/.test(refused.stderr), refused.stderr);
    }
    assertCliError(
      await runCli(["serve", `${dir}/missing.erofs`, "--listen", `unix:${dir}/s`]),
      1,
      /no such file/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "serve: nbdfuse exposes the export as a file with the fixture's bytes",
  ignore: requires(
    command("nbdfuse"),
    command("fusermount3"),
    command("nbdcopy"),
    root(),
    path("/dev/fuse"),
  ),
  async fn() {
    await using s = await serve(BASIC);
    const mnt = `${s.dir}/mnt`;
    await Deno.mkdir(mnt);
    const pidFile = `${s.dir}/nbdfuse.pid`;
    const fuse = new Deno.Command("nbdfuse", {
      args: ["-r", "-P", pidFile, `${mnt}/image`, s.uri],
      stdout: "null",
      stderr: "piped",
    }).spawn();
    let mounted = false;
    try {
      for (let i = 0; i < 100 && !exists(pidFile); i++) await sleep(100);
      ok(exists(pidFile), "nbdfuse became ready");
      mounted = true;
      await sameAsFixture(`${mnt}/image`);
    } finally {
      if (mounted) {
        await new Deno.Command("fusermount3", { args: ["-u", mnt] }).output();
      }
      const timer = setTimeout(() => {
        try {
          fuse.kill("SIGKILL");
        } catch { /* exited */ }
      }, 10_000);
      await fuse.status;
      clearTimeout(timer);
      await fuse.stderr.cancel().catch(() => {});
    }
    assertEquals(await s.stop(), 0);
  },
});

Deno.test({
  name: "serve: a layer straight from a real registry (no download)",
  ignore: requires(command("docker-registry"), command("nbdcopy"), command("htpasswd")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const fixture = await Deno.readFile(BASIC);
    const pushed = await pushImage(registry, "serve/basic", "v1", [
      { bytes: new TextEncoder().encode("not erofs"), mediaType: "application/octet-stream" },
      { bytes: fixture, mediaType: EROFS_MEDIA_TYPE },
    ]);
    await using s = await serve(`${registry.host}/serve/basic:v1`, ["--plain-http"]);
    assertEquals(
      s.uri,
      `nbd+unix:///${encodeURIComponent(pushed.layers[1].digest)}?socket=${s.socket}`,
    );
    await run("nbdcopy", [s.uri, `${s.dir}/out.img`]);
    await sameAsFixture(`${s.dir}/out.img`);
    // Ranged reads, not a whole-blob download of anything else.
    const log = (await registry.accessLog()).join("\n");
    ok(!log.includes(pushed.layers[0].digest), "the non-EROFS layer was never fetched");
    assertEquals(await s.stop(), 0);
  },
});

function exists(p: string): boolean {
  try {
    Deno.lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

Deno.test({
  name: "serve: a tar layer is refused with what serves it instead (not --any-media-type)",
  ignore: requires(command("docker-registry")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    await pushImage(registry, "serve/tar", "v1", [{
      bytes: await Deno.readFile(`${FIXTURES}/layer.tar.gz`),
      mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
    }]);
    const image = `${registry.host}/serve/tar:v1`;
    for (const extra of [[], ["--layer", "0"]]) {
      const refused = await runCli([
        "serve",
        image,
        "--plain-http",
        ...extra,
        "--listen",
        "unix:/nonexistent/erofs-oci-serve.sock",
      ]);
      assertCliError(refused, 1, /not application\/vnd\.erofs|no EROFS layer/);
      // The old hint led to --any-media-type, and then to "not an EROFS image".
      ok(
        /hint: serve exports EROFS layers; .*--index-missing/.test(refused.stderr),
        refused.stderr,
      );
      ok(!/any-media-type/.test(refused.stderr), refused.stderr);
    }
  },
});

Deno.test("serve --listen unix:RELATIVE prints a URI with the socket's absolute path", async () => {
  const dir = await Deno.realPath(await Deno.makeTempDir());
  const child = new Deno.Command(`${REPO_ROOT}/scripts/erofs-oci-dev`, {
    args: ["serve", BASIC, "--listen", "unix:rel.sock"],
    cwd: dir,
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  try {
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let printed = "";
    while (!printed.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) break;
      printed += value;
    }
    reader.releaseLock();
    // It said socket=rel.sock, which worked only from serve's working directory.
    assertEquals(printed.split("\n")[0], `nbd+unix:///basic.erofs?socket=${dir}/rel.sock`);
  } finally {
    child.kill("SIGTERM");
    await child.status;
    await child.stdout.cancel().catch(() => {});
    await Deno.remove(dir, { recursive: true });
  }
});
