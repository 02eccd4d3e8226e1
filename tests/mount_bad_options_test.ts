/**
 * `mount` option values that cannot work are refused as the user's mistake before anything
 * starts: `--backend xyz` is a usage error (exit 2; it was exit 1 like a runtime failure), and
 * `--upper`/`--work` that do not exist or are not directories are named (the kernel's overlay
 * refusal said only "No such file or directory", after a server had been started);
 * `--cache-size` below what a mount uses at least is refused (0 mounted, and its FUSE recovery
 * record was then refused by reattach, leaving the mount's readers blocked after a crash).
 */
import assert from "node:assert/strict";
import { assertCliError, assertSuccess, runCli, startCli, stopCli } from "./_support/cli.ts";
import { readMountInfo } from "../lib/sys/mountinfo.ts";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import { mountSandbox, mountServersOf } from "./_support/mounts.ts";
import { HoldPoint } from "./_support/hold.ts";

Deno.test({
  name: "mount --backend xyz: usage error, exit 2",
  ignore: requires(root()),
  async fn() {
    const target = await Deno.makeTempDir({ prefix: "erofs-oci-bad-options-" });
    try {
      const result = await runCli(
        ["mount", `${FIXTURES}/basic.erofs`, target, "--backend", "xyz"],
        { env: { EROFS_OCI_RUNTIME_DIR: `${target}-run` } },
      );
      assertCliError(result, 2, /unknown backend 'xyz'/);
    } finally {
      await Deno.remove(target, { recursive: true });
      await Deno.remove(`${target}-run`, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "mount --upper/--work missing or not a directory: named in one line, nothing started",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    try {
      const base = sandbox.target.replace(/\/mnt$/, "");
      await Deno.mkdir(`${base}/upper`);
      await Deno.writeTextFile(`${base}/afile`, "x");
      const mount = (upper: string, work: string) =>
        runCli(
          ["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"].concat(
            ["--upper", upper, "--work", work],
          ),
          { env: sandbox.env },
        );
      assertCliError(
        await mount(`${base}/missing-upper`, `${base}/work`),
        1,
        /--upper .*missing-upper does not exist/,
      );
      assertCliError(
        await mount(`${base}/upper`, `${base}/afile`),
        1,
        /--work .*afile is not a directory/,
      );
    } finally {
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "mount --index/--tarindex/--zinfo missing or of the wrong kind: named in one line, as " +
    "--upper is, nothing started",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    try {
      const base = sandbox.target.replace(/\/mnt$/, "");
      await Deno.writeTextFile(`${base}/afile`, "x");
      const mount = (...options: string[]) =>
        runCli(["mount", `${FIXTURES}/layer.tar.gz`, sandbox.target, ...options], {
          env: sandbox.env,
        });
      // Each was exit 2 with Deno's "open X: …" text, or (a file as --index) exit 1 later.
      assertCliError(await mount("--index", `${base}/none`), 1, /--index .*\/none does not exist/);
      assertCliError(
        await mount("--index", `${base}/afile`),
        1,
        /--index .*afile is not a directory/,
      );
      assertCliError(await mount("--tarindex", base), 1, /--tarindex .* is not a regular file/);
      assertCliError(
        await mount("--tarindex", `${base}/afile`, "--zinfo", `${base}/none`),
        1,
        /--zinfo .*\/none does not exist/,
      );
      assert.deepEqual(readMountInfo().filter((m) => m.mountPoint.startsWith(base)), []);
    } finally {
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "mount and serve: bad disk cache options are usage errors before any registry is asked",
  ignore: requires(root()),
  async fn() {
    const target = await Deno.makeTempDir({ prefix: "erofs-oci-bad-options-" });
    // Port 1 answers nothing: an option read only after the registry was asked would fail
    // there first (exit 1, a connection error) instead of naming the option.
    const image = "127.0.0.1:1/none/img:v1";
    const env = { EROFS_OCI_RUNTIME_DIR: `${target}-run`, EROFS_OCI_CACHE_DIR: `${target}-c` };
    try {
      assertCliError(
        await runCli(["mount", image, target, "--disk-cache-keep-free", "12Q"], { env }),
        2,
        /--disk-cache-keep-free: invalid size '12Q'/,
      );
      assertCliError(
        await runCli(
          ["serve", image, "--listen", `unix:${target}/s.sock`, "--disk-cache-keep-free", "x"],
          { env },
        ),
        2,
        /--disk-cache-keep-free: invalid size 'x'/,
      );
      // A bound of 0 is no disk cache (as --no-disk-cache), which --fetch-all needs.
      for (const command of ["mount", "serve"]) {
        const where = command === "mount" ? [target] : ["--listen", `unix:${target}/s.sock`];
        assertCliError(
          await runCli([command, image, ...where, "--fetch-all", "--disk-cache-size", "0"], {
            env,
          }),
          2,
          new RegExp(
            `${command}: --fetch-all fetches into the disk cache: drop --disk-cache-size 0`,
          ),
        );
        // Sizes of a disk cache turned off: taken without a word before, and unused.
        for (const sized of ["--disk-cache-size", "--disk-cache-keep-free"]) {
          assertCliError(
            await runCli([command, image, ...where, "--no-disk-cache", sized, "1G"], { env }),
            2,
            new RegExp(`${command}: ${sized} sizes the disk cache --no-disk-cache turns off`),
          );
        }
      }
    } finally {
      await Deno.remove(target, { recursive: true });
      await Deno.remove(`${target}-run`, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name:
    "mount --upper/--work another overlay uses: refused; given relative, they are mounted absolute",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    const base = sandbox.target.replace(/\/mnt$/, "");
    const second = `${base}/mnt2`;
    try {
      for (const dir of ["up", "wk", "up2", "wk2", "mnt2"]) await Deno.mkdir(`${base}/${dir}`);
      const mount = (target: string, upper: string, work: string) =>
        runCli(
          ["mount", `${FIXTURES}/basic.erofs`, target, "--backend", "fuse"].concat(
            ["--upper", upper, "--work", work],
          ),
          { env: sandbox.env, cwd: base },
        );
      const first = await mount("mnt", "up", "wk");
      assert.equal(first.code, 0, first.stderr);
      const overlay = readMountInfo().find((m) => m.mountPoint === sandbox.target);
      assert.match(overlay?.superOptions ?? "", new RegExp(`upperdir=${base}/up,`));
      assert.match(overlay?.superOptions ?? "", new RegExp(`workdir=${base}/wk`));
      assertCliError(
        await mount("mnt2", "up", "wk2"),
        1,
        /--upper .*\/up is in use by the overlay mounted at .*\/mnt$/m,
      );
      assertCliError(await mount("mnt2", "up2", `${base}/wk`), 1, /--work .*\/wk is in use/);
      // The other's work dir as our upper, its upper as our work, or one inside either: the
      // kernel only warns, and a work dir's clean-up empties what the other keeps there.
      await Deno.mkdir(`${base}/up/inner`);
      assertCliError(await mount("mnt2", "wk", "wk2"), 1, /--upper .*\/wk is in use .*\/mnt$/m);
      assertCliError(await mount("mnt2", "up2", "up"), 1, /--work .*\/up is in use .*\/mnt$/m);
      assertCliError(await mount("mnt2", "up/inner", "wk2"), 1, /--upper .*\/inner is in use/);
      // Our --work holding our --upper: that overlap is said first.
      assertCliError(await mount("mnt2", "up2", base), 1, /--upper .*\/up2 and --work .* overlap/);
      // A '\' is overlayfs's escape: the kernel would use another directory than the one checked.
      await Deno.mkdir(`${base}/wk\\`);
      assertCliError(
        await mount("mnt2", "up2", "wk\\"),
        1,
        /--work .*\/wk\\: overlayfs cannot be given a path containing ',', ':' or '\\'/,
      );
      assert.deepEqual(
        readMountInfo().filter((m) => m.mountPoint === second),
        [],
        "nothing mounted",
      );
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
      // Another tool's overlay naming the same upper directory through a symlink.
      for (const dir of ["low", "merged"]) await Deno.mkdir(`${base}/${dir}`);
      await Deno.symlink(`${base}/up`, `${base}/uplink`);
      const options = `lowerdir=${base}/low,upperdir=${base}/uplink,workdir=${base}/wk`;
      const other = await new Deno.Command("mount", {
        args: ["-t", "overlay", "overlay", "-o", options, `${base}/merged`],
      }).output();
      assert(other.success, new TextDecoder().decode(other.stderr));
      try {
        assertCliError(await mount("mnt", "up", "wk2"), 1, /--upper .*\/up is in use .*\/merged$/m);
      } finally {
        await new Deno.Command("umount", { args: ["-l", `${base}/merged`] }).output();
      }
    } finally {
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "mount --cache-size below the least a mount uses: usage error, nothing started",
  ignore: requires(root()),
  async fn() {
    const target = await Deno.makeTempDir({ prefix: "erofs-oci-bad-options-" });
    try {
      for (const size of ["0", "1M"]) {
        const result = await runCli(
          ["mount", `${FIXTURES}/basic.erofs`, target, "--cache-size", size],
          { env: { EROFS_OCI_RUNTIME_DIR: `${target}-run` } },
        );
        assertCliError(result, 2, /--cache-size .* is below the least a mount uses \(4M\)/);
        assert.deepEqual(readMountInfo().filter((m) => m.mountPoint === target), []);
      }
    } finally {
      await Deno.remove(target, { recursive: true });
      await Deno.remove(`${target}-run`, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "mount --upper other users can reach: refused (copied-up setuid files would work there), " +
    "unless closed by a directory on the way or on a nosuid file system",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    // Reachable from / by anyone: a 0755 directory in /tmp, holding a tmpfs mounted without nosuid.
    const open = await Deno.makeTempDir({ prefix: "erofs-oci-open-upper-" });
    const fs = `${open}/fs`;
    const sh = (...args: string[]) => new Deno.Command(args[0], { args: args.slice(1) }).output();
    try {
      await Deno.chmod(open, 0o755);
      await Deno.mkdir(fs);
      assert((await sh("mount", "-t", "tmpfs", "-o", "mode=0755,suid", "tmpfs", fs)).success);
      for (const dir of ["up", "wk"]) await Deno.mkdir(`${fs}/${dir}`, { mode: 0o755 });
      const mount = () =>
        runCli(
          ["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"].concat(
            ["--upper", `${fs}/up`, "--work", `${fs}/wk`],
          ),
          { env: sandbox.env },
        );
      assertCliError(await mount(), 1, /--upper .*\/up can be reached by other users/);
      assert.deepEqual(readMountInfo().filter((m) => m.mountPoint === sandbox.target), []);

      await Deno.chmod(`${fs}/up`, 0o700);
      assertSuccess(await mount());
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));

      await Deno.chmod(`${fs}/up`, 0o755);
      assert((await sh("mount", "-o", "remount,nosuid", fs)).success);
      assertSuccess(await mount());
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    } finally {
      await sandbox.cleanup();
      await sh("umount", "-l", fs);
      await Deno.remove(open, { recursive: true });
    }
  },
});

Deno.test({
  name: "mount onto, from, or --upper/--work under, what another user can redirect: refused, " +
    "nothing mounted where it led",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-user-paths-" });
    const sh = (...args: string[]) => new Deno.Command(args[0], { args: args.slice(1) }).output();
    try {
      // A user's home, holding a symlink of theirs to an empty directory of root's.
      await Deno.mkdir(`${work}/home`);
      await Deno.mkdir(`${work}/roots`);
      await Deno.symlink(`${work}/roots`, `${work}/home/mnt`);
      assert((await sh("chown", "-h", "65534:65534", `${work}/home/mnt`)).success);
      const onLink = await runCli(
        ["mount", `${FIXTURES}/basic.erofs`, `${work}/home/mnt`, "--backend", "fuse"],
        { env: sandbox.env },
      );
      assertCliError(onLink, 1, /home\/mnt is a symlink of uid 65534 .*not followed/);
      assert.deepEqual(readMountInfo().filter((m) => m.mountPoint === `${work}/roots`), []);

      // An image path through a user's symlink (to a file of root's they cannot read).
      await Deno.symlink(`${FIXTURES}/basic.erofs`, `${work}/home/img.erofs`);
      assert((await sh("chown", "-h", "65534:65534", `${work}/home/img.erofs`)).success);
      const viaLink = await runCli(
        ["mount", `${work}/home/img.erofs`, sandbox.target, "--backend", "fuse"],
        { env: sandbox.env },
      );
      assertCliError(viaLink, 1, /home\/img\.erofs is a symlink of uid 65534 .*not followed/);

      // --work in a directory the user owns (they could rename it and put a symlink to one of
      // root's there before mount(2) looks the path up).
      await Deno.mkdir(`${work}/up`, { mode: 0o700 });
      await Deno.mkdir(`${work}/home/wk`);
      await Deno.chown(`${work}/home`, 65534, 65534);
      const userWork = await runCli(
        ["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"].concat(
          ["--upper", `${work}/up`, "--work", `${work}/home/wk`],
        ),
        { env: sandbox.env },
      );
      assertCliError(userWork, 1, /--work .*home\/wk: .*\/home can be changed by uid 65534/);
      assert.deepEqual(readMountInfo().filter((m) => m.mountPoint === sandbox.target), []);
    } finally {
      await sandbox.cleanup();
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test({
  name: "mount --upper/--work overlapping, or holding the mount point: refused before anything " +
    "starts; two mounts started together with one --upper: one is refused (both mounted)",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    const base = sandbox.target.replace(/\/mnt$/, "");
    try {
      for (const dir of ["up", "up/wk", "wk", "u5", "u4", "u4/mnt", "mnt2", "wk2"]) {
        await Deno.mkdir(`${base}/${dir}`);
      }
      const mount = (target: string, upper: string, work: string, env = {}) =>
        runCli(
          ["mount", `${FIXTURES}/basic.erofs`, target, "--backend", "fuse"].concat(
            ["--upper", upper, "--work", work],
          ),
          { env: { ...sandbox.env, ...env }, cwd: base },
        );
      // Each was a bare "Invalid argument" from mount(2), after a server had started.
      assertCliError(
        await mount("mnt", "up", "up/wk"),
        1,
        /--upper .*\/up and --work .*\/up\/wk overlap/,
      );
      assertCliError(await mount("mnt", "up", "up"), 1, /overlap/);
      // Each was mounted: the merged view held its own mount point, writes went under it.
      assertCliError(await mount("u5", "u5", "wk"), 1, /--upper .*\/u5 holds the mount point/);
      assertCliError(await mount("u4/mnt", "u4", "wk"), 1, /--upper .*\/u4 holds the mount point/);
      assert.deepEqual(mountServersOf(sandbox.runtimeDir), [], "no server was started");

      // Two mounts with one --upper, the first held before its overlay is mounted: both passed
      // the check made before a server starts; the one mounted second is refused under the lock.
      using hold = new HoldPoint("mount-layers", `${base}/hold`);
      const held = startCli(
        ["mount", `${FIXTURES}/basic.erofs`, `${base}/mnt`, "--backend", "fuse"].concat(
          ["--upper", `${base}/up`, "--work", `${base}/wk`],
        ),
        { ...sandbox.env, ...hold.env },
      );
      try {
        await hold.reached("the first mount's layers");
        const second = await mount("mnt2", "up", "wk2");
        assert.equal(second.code, 0, second.stderr);
        hold.release();
        const first = await held.result;
        assert.equal(first.code, 1, first.stdout + first.stderr);
        assert.match(first.stderr, /--upper .*\/up is in use by the overlay mounted at .*\/mnt2/);
        assert.deepEqual(
          readMountInfo().filter((m) => m.mountPoint === sandbox.target),
          [],
          "the refused one left nothing at its target",
        );
      } finally {
        await stopCli(held);
      }
      assertSuccess(await runCli(["umount", `${base}/mnt2`], { env: sandbox.env }));
    } finally {
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "umount --lazy of a writable mount with a file still open says its --upper stays in use",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    const base = sandbox.target.replace(/\/mnt$/, "");
    let writer: Deno.ChildProcess | undefined;
    try {
      for (const dir of ["up", "wk"]) await Deno.mkdir(`${base}/${dir}`);
      assertSuccess(
        await runCli(
          ["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"].concat(
            ["--upper", `${base}/up`, "--work", `${base}/wk`],
          ),
          { env: sandbox.env },
        ),
      );
      // A plain umount of an idle writable mount: nothing to say.
      assertSuccess(await runCli(["umount", "--lazy", sandbox.target], { env: sandbox.env }));
      assertSuccess(
        await runCli(
          ["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"].concat(
            ["--upper", `${base}/up`, "--work", `${base}/wk`],
          ),
          { env: sandbox.env },
        ),
      );
      writer = new Deno.Command("sh", {
        args: ["-c", `exec 3>${sandbox.target}/held; echo ready; sleep 30`],
        stdout: "piped",
      }).spawn();
      const reader = writer.stdout.getReader();
      await reader.read(); // "ready": the file is open
      reader.releaseLock();
      const lazy = await runCli(["umount", "--lazy", sandbox.target], { env: sandbox.env });
      assertSuccess(lazy);
      assert.match(
        lazy.stderr,
        /was detached with files still open: its --upper .*\/up stays in use/,
        lazy.stderr,
      );
    } finally {
      try {
        writer?.kill("SIGKILL");
        await writer?.status;
        await writer?.stdout.cancel().catch(() => {});
      } catch { /* ended */ }
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "mount --upper/--work too long for mount(2)'s options: said so, not 'stacks at most 0'",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    const base = sandbox.target.replace(/\/mnt$/, "");
    try {
      // Two paths of ~2,000 bytes each: with the hardening options, past one page.
      const deep = (name: string) => `${base}/${name}/${Array(9).fill("d".repeat(220)).join("/")}`;
      for (const name of ["up", "wk"]) {
        Deno.mkdirSync(deep(name), { recursive: true, mode: 0o700 });
        Deno.chmodSync(`${base}/${name}`, 0o700);
      }
      const result = await runCli([
        "mount",
        `${FIXTURES}/basic.erofs`,
        sandbox.target,
        "--backend",
        "fuse",
        "--upper",
        deep("up"),
        "--work",
        deep("wk"),
      ], { env: sandbox.env });
      assertCliError(result, 1, /--upper and --work are too long for an overlay of 1 layer/);
      assert.doesNotMatch(result.stderr, /stacks at most|flatten/);
      assert.deepEqual(mountServersOf(sandbox.runtimeDir), []);
    } finally {
      await sandbox.cleanup();
    }
  },
});
