import assert from "node:assert/strict";
import { spawnInNewSession, spawnProcess } from "../ffi/spawn.ts";
import { closeFd, O_CLOEXEC, O_RDONLY } from "../ffi/libc.ts";
import { parentPid, reapExitedChildren } from "../ffi/process.ts";
import { openFile } from "../ffi/files.ts";

/** What a shell started by spawnInNewSession sees of itself: session, descriptors, env, mask. */
async function spawnedShellReport(handed: number[]) {
  const dir = await Deno.makeTempDir({ prefix: "spawn-" });
  try {
    const report = `${dir}/report`;
    const script = [
      `exec >"$OUT.tmp"`,
      // Field 6 of /proc/<pid>/stat is the session.
      `read -r stat </proc/$$/stat; set -- $stat; echo "sid $6 pid $$"`,
      `for fd in /proc/$$/fd/*; do echo "fd \${fd##*/} $(readlink "$fd")"; done`,
      `echo "env $(env | sort | tr '\\n' ' ')"`,
      // Read by the shell itself: while it waits for a child (grep), dash blocks every signal.
      `while read -r line; do case "$line" in SigBlk*) echo "$line" ;; esac; done </proc/$$/status`,
      `mv "$OUT.tmp" "$OUT"`,
    ].join("\n");
    const child = await spawnInNewSession(
      "/bin/sh",
      ["-c", script],
      { OUT: report, ONLY: "this" },
      handed,
    );
    let text: string | undefined;
    for (let i = 0; i < 250 && text === undefined; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      text = await Deno.readTextFile(report).catch(() => undefined);
    }
    assert.ok(text, "the spawned shell wrote no report");
    const fds = new Map([...text.matchAll(/^fd (\d+) (.*)$/gm)].map((m) => [Number(m[1]), m[2]]));
    return { child, text, fds };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("spawnInNewSession: own session, stdio on /dev/null, only the given descriptors, exact environment", async () => {
  const handed = [
    openFile("/etc/hostname", O_RDONLY | O_CLOEXEC),
    openFile("/etc/passwd", O_RDONLY | O_CLOEXEC),
  ];
  try {
    // What the test runner's caller left open without close-on-exec is not ours to judge.
    const baseline = await spawnedShellReport([]);
    const { child, text, fds } = await spawnedShellReport(handed);
    assert.match(text, new RegExp(`^sid ${child.pid} pid ${child.pid}$`, "m"), text);
    assert.deepEqual(child.fds, [Math.max(...handed) + 1, Math.max(...handed) + 2]);
    assert.equal(fds.get(0), "/dev/null");
    assert.equal(fds.get(2), "/dev/null");
    const added = [...fds.keys()].filter((fd) => !baseline.fds.has(fd)).sort((a, b) => a - b);
    assert.deepEqual(added, child.fds, text);
    assert.equal(fds.get(child.fds[0]), "/etc/hostname");
    assert.equal(fds.get(child.fds[1]), "/etc/passwd");
    assert.match(text, /^env .*ONLY=this/m);
    assert.doesNotMatch(text, /^env .*HOME=/m);
    assert.match(text, /^SigBlk:\s+0+$/m);
  } finally {
    handed.forEach(closeFd);
  }
});

Deno.test("spawnInNewSession: a program that cannot run is an error naming it", async () => {
  await assert.rejects(
    spawnInNewSession("/nonexistent/program", [], {}),
    /posix_spawn \/nonexistent\/program: No such file or directory/,
  );
});

Deno.test("spawnProcess: pipes to stdin and from stdout, exit status and signal", async () => {
  const child = await spawnProcess(
    "/bin/sh",
    ["-c", 'read -r line; echo "got $line"; exit 3'],
    { PATH: "/usr/bin:/bin" },
    { stdin: "pipe", stdout: "pipe" },
  );
  // More than a pipe holds (64 KiB): the writer waits for the reader without blocking us.
  const line = "x".repeat(200_000);
  await child.stdin!.write(new TextEncoder().encode(`${line}\n`));
  child.stdin!.close();
  let text = "";
  const buffer = new Uint8Array(65536);
  for (let n; (n = await child.stdout!.read(buffer)) !== null;) {
    text += new TextDecoder().decode(buffer.subarray(0, n));
  }
  child.stdout!.close();
  assert.equal(text, `got ${line}\n`);
  assert.equal(await child.status(), 3);

  const sleeper = await spawnProcess("/bin/sleep", ["30"], {}, { stdout: "pipe" });
  Deno.kill(sleeper.pid, "SIGKILL");
  assert.equal(await sleeper.stdout!.read(buffer), null, "stdout ends with the process");
  sleeper.stdout!.close();
  assert.equal(await sleeper.status(), 128 + 9);
});

Deno.test("parentPid: a process's parent, past a command name with spaces and parentheses", async () => {
  assert.equal(parentPid(Deno.pid), Deno.ppid);
  const dir = await Deno.makeTempDir({ prefix: "parent-pid-" });
  try {
    // /proc/PID/stat shows the name as "(x) 1 2 (y)": fields must be counted after the last ")".
    const program = `${dir}/x) 1 2 (y`;
    Deno.copyFileSync("/bin/sleep", program);
    Deno.chmodSync(program, 0o755);
    const child = new Deno.Command(program, { args: ["30"] }).spawn();
    try {
      assert.equal(parentPid(child.pid), Deno.pid);
    } finally {
      child.kill("SIGKILL");
      await child.status;
    }
    assert.equal(parentPid(child.pid), undefined, "reaped: no such process");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("spawnProcess: status() of a child reapExitedChildren reaped first is its exit code (reattach --watch reaps while its jobs wait)", async () => {
  const exited = await spawnProcess("/bin/sh", ["-c", "exit 3"], {});
  const killed = await spawnProcess("/bin/sh", ["-c", "kill -TERM $$"], {});
  // Both ended before a watch pass reaps them (until then zombies: /proc/PID says so).
  for (const pid of [exited.pid, killed.pid]) {
    for (
      let i = 0;
      i < 200 && !/^State:\s+Z/m.test(Deno.readTextFileSync(`/proc/${pid}/status`));
      i++
    ) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }
  assert.ok(reapExitedChildren() >= 2);
  // Before: -1 ("the mount server exited (code -1)"), the real code lost.
  assert.equal(await exited.status(), 3);
  assert.equal(await killed.status(), 128 + 15);
});
