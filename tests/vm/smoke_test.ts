/**
 * Proves the VM harness itself: the guest kernel has nbd, erofs and loop, a fixture image mounts
 * and reads back exactly, the test registry runs on the guest's loopback, and /run and /tmp
 * are the guest's own.
 */
import assert from "node:assert/strict";
import { FIXTURES, PEER_BIN } from "../_support/requires.ts";
import { startRegistry } from "../_support/registry.ts";
import { NOT_IN_VM, runChecked, runCommand } from "../_support/vm.ts";

Deno.test({
  name: "vm: nbd module is loaded with 16 devices (more once a test asks for them)",
  ignore: NOT_IN_VM,
  fn: async () => {
    assert.ok(Deno.statSync("/dev/nbd0").isBlockDevice, "/dev/nbd0 is a block device");
    assert.ok(Deno.statSync("/sys/module/nbd").isDirectory);
    const nbdsMax = await Deno.readTextFile("/sys/module/nbd/parameters/nbds_max");
    assert.equal(nbdsMax.trim(), "16");
    // The kernel adds devices past nbds_max when a mount asks netlink for a free one and none is
    // left: tests that ran before this one in the same boot (nbd_open_files_test: 51) leave them.
    const devices = [...Deno.readDirSync("/dev")].filter((e) => /^nbd\d+$/.test(e.name));
    assert.ok(devices.length >= 16, `${devices.length} nbd devices`);
  },
});

Deno.test({
  name: "vm: erofs, loop, overlay and fuse are available",
  ignore: NOT_IN_VM,
  fn: async () => {
    for (const module of ["erofs", "loop", "overlay", "fuse"]) {
      assert.ok(Deno.statSync(`/sys/module/${module}`).isDirectory, `module ${module}`);
    }
    const filesystems = await Deno.readTextFile("/proc/filesystems");
    assert.match(filesystems, /\terofs\n/);
    assert.ok(Deno.statSync("/dev/fuse").isCharDevice);
    assert.ok(Deno.statSync("/dev/loop-control").isCharDevice);
  },
});

Deno.test({
  name: "vm: /run and /tmp are fresh tmpfs, /run/vm is the result share",
  ignore: NOT_IN_VM,
  fn: async () => {
    const mounts = (await Deno.readTextFile("/proc/mounts")).split("\n").map((l) => l.split(" "));
    const fsType = (dir: string) => mounts.find((m) => m[1] === dir)?.[2];
    assert.equal(fsType("/run"), "tmpfs");
    assert.equal(fsType("/tmp"), "tmpfs");
    assert.equal(fsType("/run/vm"), "9p");
    assert.equal(fsType("/"), "overlay");
    // bash process substitution needs /dev/fd.
    assert.equal(Deno.readLinkSync("/dev/fd"), "/proc/self/fd");
  },
});

Deno.test({
  name: "vm: loop mount of basic.erofs matches the expected manifest",
  ignore: NOT_IN_VM,
  fn: async () => {
    assert.equal((await runCommand("python3", ["--version"])).code, 0, "python3 in the guest");
    const mountDir = await Deno.makeTempDir({ prefix: "erofs-oci-smoke-" });
    let mounted = false;
    try {
      await runChecked("mount", [
        "-t",
        "erofs",
        "-o",
        "ro,loop",
        `${FIXTURES}/basic.erofs`,
        mountDir,
      ]);
      mounted = true;
      const manifest = await runChecked("python3", [`${FIXTURES}/manifest.py`, mountDir]);
      const expected = await Deno.readTextFile(`${FIXTURES}/expected/basic.txt`);
      assert.equal(manifest, expected);
    } finally {
      // mount -o loop sets autoclear: the loop device goes away with the unmount.
      if (mounted) await runChecked("umount", [mountDir]);
      await Deno.remove(mountDir);
    }
  },
});

Deno.test({
  name: "vm: docker-registry serves on the guest's 127.0.0.1",
  ignore: NOT_IN_VM,
  fn: async () => {
    // TCG start takes 2-3 s; allow much more on a loaded CI machine.
    await using registry = await startRegistry({ auth: "none", startTimeoutMs: 60_000 });
    assert.match(registry.host, /^127\.0\.0\.1:\d+$/);
    const response = await fetch(`http://${registry.host}/v2/`);
    await response.body?.cancel();
    assert.equal(response.status, 200);
  },
});

Deno.test({
  name: "vm: peer erofs-utils 1.9.3 and Debian erofs-utils run in the guest",
  ignore: NOT_IN_VM,
  fn: async () => {
    // Proves the peer binaries find their Debian libraries through the 9p root.
    assert.match(await runChecked(`${PEER_BIN}/mkfs.erofs`, ["--version"]), /1\.9\.3/);
    assert.equal((await runCommand(`${PEER_BIN}/mount.erofs`, ["--help"])).code, 0);
    await runChecked(`${PEER_BIN}/fsck.erofs`, [`${FIXTURES}/basic.erofs`]);
    // Debian 1.5 has no --version; --help exits 0.
    assert.equal((await runCommand("/usr/bin/mkfs.erofs", ["--help"])).code, 0);
  },
});
