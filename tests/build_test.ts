/**
 * `deno task build` makes dist/erofs-oci, one executable file (a compiled binary when a denort
 * runtime is available, else a launcher with the Deno runtime and the bundle appended), tested
 * as a user would: only that file copied into an empty directory, then --version, --help, a
 * usage error, and a mount and umount of a local image. The launcher's first-run unpacking is
 * checked too: a damaged copy or a cache others can write to is refused, nothing half-done stays.
 */
import assert from "node:assert/strict";
import { FIXTURES, path, REPO_ROOT, requires, root } from "./_support/requires.ts";
import { build, copiedAlone, isLauncher, launcherBuilt, run } from "./_support/launcher_build.ts";
import { expectedManifest, manifestOf, mountSandbox } from "./_support/mounts.ts";
import { VERSION } from "../lib/version.ts";
import { V8_FLAGS } from "../lib/daemon/self_exec.ts";

Deno.test("build: dist/erofs-oci is one file that says what it is, its size and start-up", async () => {
  const result = await build();
  assert.equal(result.code, 0, result.stderr);
  assert.match(
    result.stdout,
    /^built dist\/erofs-oci: (single executable \(deno compile\)|one file: launcher \+ Deno [\d.]+ \+ bundled program), \d+ MB; start-up \(--version\): first run [\d.]+ s, warm [\d.]+ s$/m,
  );
  if (isLauncher(result)) assert.match(result.stderr, /deno compile unavailable: \S/);
  const entries = [...Deno.readDirSync(`${REPO_ROOT}/dist`)].map((e) => e.name);
  assert.deepEqual(entries, ["erofs-oci"], "dist/ holds nothing but the program");
});

Deno.test("build: the file copied alone into an empty directory runs --version, --help, usage", async () => {
  assert.equal((await build()).code, 0);
  const copy = await copiedAlone();
  try {
    const version = await copy.run(["--version"]);
    assert.equal(version.code, 0, version.stderr);
    assert.equal(version.stdout.trim(), `erofs-oci ${VERSION}`);
    const help = await copy.run(["--help"]);
    assert.equal(help.code, 0);
    for (
      const command of ["mount", "umount", "list", "reattach", "inspect", "pull", "push", "serve"]
    ) {
      assert.match(help.stdout, new RegExp(`^  ${command} `, "m"), `--help lists ${command}`);
    }
    const usage = await copy.run(["mount"]);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /^erofs-oci: mount: missing IMAGE DIR/);
  } finally {
    await copy.cleanup();
  }
});

Deno.test("build: launcher refuses an address-space limit V8 cannot start under, in one line", async () => {
  const result = await build();
  assert.equal(result.code, 0);
  if (!launcherBuilt(result, "launcher address-space limit")) return; // the check is the launcher's
  const copy = await copiedAlone();
  try {
    const limited = (kib: number) =>
      run("sh", ["-c", `ulimit -v ${kib} && exec "$0" --version`, copy.program], copy.env);
    const refused = await limited(4 * 1024 * 1024);
    assert.equal(refused.code, 1, refused.stderr);
    assert.equal(
      refused.stderr,
      "erofs-oci: the address-space limit (ulimit -v) is 4096 MiB, below the 64 GiB the Deno " +
        "runtime reserves (not uses): lift it (ulimit -v unlimited) and bound memory with a " +
        "cgroup instead (systemd MemoryMax=)\n",
    );
    const enough = await limited(64 * 1024 * 1024);
    assert.equal(enough.code, 0, enough.stderr);
    assert.equal(enough.stdout.trim(), `erofs-oci ${VERSION}`);
  } finally {
    await copy.cleanup();
  }
});

Deno.test("scripts/erofs-oci-dev refuses that limit as the launcher does (one check for both)", async () => {
  const limited = await run("sh", [
    "-c",
    `ulimit -v ${4 * 1024 * 1024} && exec "$0" --version`,
    `${REPO_ROOT}/scripts/erofs-oci-dev`,
  ]);
  assert.equal(limited.code, 1, limited.stderr);
  assert.match(limited.stderr, /^erofs-oci: the address-space limit \(ulimit -v\) is 4096 MiB, /);
  assert.equal(limited.stderr.split("\n").length, 2, limited.stderr);
});

Deno.test("build: launcher unpacks once into a private cache, checked by sha256", async (t) => {
  const result = await build();
  assert.equal(result.code, 0);
  if (!launcherBuilt(result, "launcher unpacks once")) return; // a compiled binary has nothing to unpack
  const copy = await copiedAlone();
  try {
    await t.step("first run unpacks into a 0700 directory named by content hash", async () => {
      // Runtimes of other versions: one no process runs (removed), one a process runs (kept).
      const runtime = `${copy.base}/cache/runtime`;
      const unused = `${runtime}/${"a".repeat(32)}`;
      const inUse = `${runtime}/${"b".repeat(32)}`;
      for (const old of [unused, inUse]) {
        await Deno.mkdir(old, { recursive: true, mode: 0o700 });
        await Deno.copyFile("/bin/sleep", `${old}/deno`);
        await Deno.chmod(`${old}/deno`, 0o500);
        await Deno.chmod(old, 0o500);
      }
      await Deno.chmod(`${copy.base}/cache`, 0o700);
      await Deno.chmod(runtime, 0o700);
      const oldServer = new Deno.Command(`${inUse}/deno`, { args: ["60"] }).spawn();
      try {
        assert.equal((await copy.run(["--version"])).code, 0);
      } finally {
        oldServer.kill();
        await oldServer.status;
      }
      assert.equal(Deno.statSync(runtime).mode! & 0o777, 0o700);
      // Besides the new runtime: its mark of the last start (tests/launcher_prune_test.ts).
      const ids = [...Deno.readDirSync(runtime)].map((e) => e.name).filter((n) =>
        n !== inUse.slice(-32) && !n.startsWith(".started-")
      );
      assert.ok(Deno.statSync(inUse).isDirectory, "a runtime in use is kept");
      assert.equal(ids.length, 1, `one new runtime, the unused old one and no leftovers: ${ids}`);
      assert.match(ids[0], /^[0-9a-f]{32}$/);
      assert.notEqual(ids[0], unused.slice(-32));
      const unpacked = `${runtime}/${ids[0]}`;
      assert.equal(Deno.statSync(unpacked).mode! & 0o777, 0o500);
      assert.equal(Deno.statSync(`${unpacked}/deno`).mode! & 0o777, 0o500);
      assert.equal(Deno.statSync(`${unpacked}/erofs-oci.js`).mode! & 0o777, 0o400);
    });

    await t.step("a cache directory others can write to is refused", async () => {
      await Deno.chmod(`${copy.base}/cache/runtime`, 0o777);
      const refused = await copy.run(["--version"]);
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, /^erofs-oci: refusing to run .*writable by others/);
      await Deno.chmod(`${copy.base}/cache/runtime`, 0o700);
    });

    await t.step("a damaged copy is refused and leaves nothing unpacked", async () => {
      const damaged = `${copy.base}/bin/damaged`;
      const bytes = await Deno.readFile(copy.program);
      bytes[bytes.length - 1000] ^= 0xff; // inside the Deno runtime, the last payload part
      await Deno.writeFile(damaged, bytes, { mode: 0o755 });
      const cache = `${copy.base}/cache-damaged/runtime`;
      const refused = await run(damaged, ["--version"], { EROFS_OCI_RUNTIME_CACHE: cache });
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, /^erofs-oci: .*damaged \(sha256 of its payload/);
      assert.deepEqual([...Deno.readDirSync(cache)], [], "no runtime and no .unpack leftovers");
    });

    await t.step({
      name: "a full disk is one line and leaves nothing unpacked",
      ignore: requires(root()),
      fn: async () => {
        const small = `${copy.base}/small`;
        await Deno.mkdir(small);
        const mounted = await run("mount", ["-t", "tmpfs", "-o", "size=8m,mode=0700", "t", small]);
        assert.equal(mounted.code, 0, mounted.stderr);
        try {
          const full = await run(copy.program, ["--version"], {
            EROFS_OCI_RUNTIME_CACHE: `${small}/runtime`,
          });
          assert.equal(full.code, 1);
          assert.match(full.stderr, /^erofs-oci: cannot write the runtime into .*\n$/);
          assert.deepEqual([...Deno.readDirSync(`${small}/runtime`)], []);
        } finally {
          await run("umount", [small]);
        }
      },
    });
  } finally {
    await copy.cleanup();
  }
});

Deno.test("build: launcher keeps V8's code cache private; the second start reads it", async (t) => {
  const result = await build();
  assert.equal(result.code, 0);
  if (!launcherBuilt(result, "launcher code cache")) return; // a compiled binary keeps no cache beside a runtime
  const copy = await copiedAlone();
  // V8 reports each code cache it writes ("Serializing") and reads ("Deserializing from").
  const profiled = { DENO_V8_FLAGS: "--profile-deserialization" };
  try {
    const first = await copy.run(["--version"], profiled);
    assert.equal(first.code, 0, first.stderr);
    const written = first.stdout.match(/^\[Serializing to (\d+) bytes/m);
    assert.ok(written, `the first run compiles the bundle and caches it:\n${first.stdout}`);
    const runtime = `${copy.base}/cache/runtime`;
    const [id] = [...Deno.readDirSync(runtime)].map((e) => e.name).filter((n) => n[0] !== ".");
    const denoDir = `${runtime}/${id}/deno-dir`;

    await t.step("the cache is written at once, even by --version, into a 0700 directory", () => {
      assert.equal(Deno.statSync(denoDir).mode! & 0o777, 0o700);
      const codeCache = Deno.statSync(`${denoDir}/v8_code_cache_v2`);
      assert.ok(codeCache.isFile);
      for (const entry of Deno.readDirSync(denoDir)) {
        if (!entry.isFile) continue;
        const info = Deno.statSync(`${denoDir}/${entry.name}`);
        assert.equal(info.uid, Deno.uid(), entry.name);
        assert.equal(info.mode! & 0o022, 0, `${entry.name} is writable by others`);
      }
    });

    await t.step("the second run reads the cache the first one wrote", async () => {
      const second = await copy.run(["--version"], profiled);
      assert.equal(second.code, 0, second.stderr);
      assert.match(second.stdout, new RegExp(`^\\[Deserializing from ${written[1]} bytes`, "m"));
      assert.doesNotMatch(second.stdout, /^\[Serializing to/m, "nothing compiled anew");
    });

    await t.step("a cache directory or cache file others can write to is refused", async () => {
      for (const path of [denoDir, `${denoDir}/v8_code_cache_v2`]) {
        const mode = Deno.statSync(path).mode! & 0o777;
        await Deno.chmod(path, mode | 0o002);
        try {
          const refused = await copy.run(["--version"]);
          assert.equal(refused.code, 1, path);
          assert.equal(refused.stdout, "");
          assert.match(refused.stderr, /^erofs-oci: refusing to run .* writable by others/);
          assert.ok(refused.stderr.includes(`${path} is writable`), refused.stderr);
        } finally {
          await Deno.chmod(path, mode);
        }
      }
      assert.equal((await copy.run(["--version"])).code, 0, "runs again once closed");
    });
  } finally {
    await copy.cleanup();
  }
});

Deno.test({
  name: "build: the copied file mounts a local image (its server is itself) and unmounts it",
  ignore: requires(root(), path("/dev/fuse"), path(`${FIXTURES}/basic.erofs`)),
  async fn() {
    const result = await build();
    assert.equal(result.code, 0);
    const copy = await copiedAlone();
    const sandbox = await mountSandbox();
    try {
      const mounted = await copy.run(
        ["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"],
        sandbox.env,
      );
      assert.equal(mounted.code, 0, `${mounted.stderr}\n${sandbox.serverLogs()}`);
      const serverPid = mounted.stdout.match(/^mounted .* server pid (\d+)\)$/m)?.[1];
      assert.ok(serverPid, mounted.stdout);
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      // The server runs under the CLI's V8 flags: the code cache the CLI wrote is refused by a
      // V8 with other flags, and the server would compile the bundle at every start.
      const flags = `--v8-flags=${V8_FLAGS.join(",")}`;
      const serverArgs = Deno.readTextFileSync(`/proc/${serverPid}/cmdline`).split("\0");
      assert.ok(serverArgs.includes(flags), serverArgs.join(" "));
      if (isLauncher(result)) {
        const header = new TextDecoder().decode(Deno.readFileSync(copy.program).subarray(0, 16384));
        assert.ok(header.includes(` ${flags} `), "the launcher runs the CLI with the same flags");
      }
      const unmounted = await copy.run(["umount", sandbox.target], sandbox.env);
      assert.equal(unmounted.code, 0, unmounted.stderr);
      assert.equal(
        Deno.readTextFileSync("/proc/self/mountinfo").includes(` ${sandbox.target} `),
        false,
      );
    } finally {
      await sandbox.cleanup();
      await copy.cleanup();
    }
  },
});

Deno.test({
  name:
    "build: a mount (CLI and server without the JIT) and a build (with it) keep their code caches",
  ignore: requires(root(), path("/dev/fuse"), path(`${FIXTURES}/basic.erofs`)),
  async fn() {
    const result = await build();
    assert.equal(result.code, 0);
    if (!launcherBuilt(result, "launcher V8 flags")) return; // a compiled binary has one set of V8 flags
    const copy = await copiedAlone();
    const sandbox = await mountSandbox();
    // V8 reports each code cache it writes ("Serializing") and reads ("Deserializing from"); a
    // cache made under other V8 flags is refused and written again.
    const profiled = { ...sandbox.env, DENO_V8_FLAGS: "--profile-deserialization" };
    const compiled = (output: string) => /^\[Serializing to/m.test(output);
    try {
      assert.ok(compiled((await copy.run(["list"], profiled)).stdout), "the first run compiles");
      const mounted = await copy.run(
        ["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"],
        profiled,
      );
      assert.equal(mounted.code, 0, `${mounted.stderr}\n${sandbox.serverLogs()}`);
      const serverPid = mounted.stdout.match(/^mounted .* server pid (\d+)\)$/m)?.[1];
      const serverFlags = Deno.readTextFileSync(`/proc/${serverPid}/environ`).split("\0")
        .find((entry) => entry.startsWith("DENO_V8_FLAGS="));
      assert.match(serverFlags ?? "", /--jitless/);
      // The server compiled nothing the CLI's next start refuses.
      const listed = await copy.run(["list"], profiled);
      assert.equal(listed.code, 0, listed.stderr);
      assert.ok(!compiled(listed.stdout), `list after the mount compiled:\n${listed.stdout}`);
      assert.equal((await copy.run(["umount", sandbox.target], profiled)).code, 0);

      // build runs with the JIT from the bundle's second name: its cache is its own.
      const firstBuild = await copy.run(["build", "--help"], profiled);
      assert.equal(firstBuild.code, 0, firstBuild.stderr);
      const secondBuild = await copy.run(["build", "--help"], profiled);
      assert.ok(!compiled(secondBuild.stdout), `build compiled again:\n${secondBuild.stdout}`);
      // mount --index-missing scans whole tars as build does: with the JIT, from the same name.
      const indexing = await copy.run(["mount", "--index-missing", "--help"], profiled);
      assert.equal(indexing.code, 0, indexing.stderr);
      assert.ok(!compiled(indexing.stdout), `mount --index-missing compiled:\n${indexing.stdout}`);
      const listedAgain = await copy.run(["list"], profiled);
      assert.ok(!compiled(listedAgain.stdout), `list after build compiled:\n${listedAgain.stdout}`);
    } finally {
      await sandbox.cleanup();
      await copy.cleanup();
    }
  },
});

Deno.test({
  name: "build: the copied file's mount sends the manifest GET before mount's own checks run",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const result = await build();
    assert.equal(result.code, 0);
    const copy = await copiedAlone();
    const sandbox = await mountSandbox();
    // A registry that never answers (connections wait in the backlog): mount is refused by its
    // target check whatever the registry does.
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const timingFile = `${sandbox.target}.timing`;
    try {
      const image = `127.0.0.1:${listener.addr.port}/never/answers:v1`;
      const refused = await copy.run(
        ["mount", image, `${sandbox.target}/missing`, "--plain-http", "--backend", "fuse"],
        { ...sandbox.env, EROFS_OCI_TIMING: timingFile },
      );
      assert.equal(refused.code, 1, refused.stderr);
      const marks = Deno.readTextFileSync(timingFile);
      // In the bundle mount's modules are there at once: without a turn of the event loop
      // first, the GET's steps (microtasks) waited behind mount's checks.
      const order = [...marks.matchAll(/ (http: first request sent|cli: mount loaded) /g)]
        .map((m) => m[1]);
      assert.deepEqual(order, ["http: first request sent", "cli: mount loaded"], marks);
    } finally {
      listener.close();
      await sandbox.cleanup();
      await copy.cleanup();
    }
  },
});
