/**
 * Helpers for tests that mount through the CLI: an isolated runtime dir per test, file-tree
 * manifests in the fixtures' format, and a clean-up that leaves no mount or server behind even
 * when the test failed half-way.
 */
import assert from "node:assert/strict";
import { FIXTURES } from "./requires.ts";
import { runCli } from "./cli.ts";
import { waitFor } from "./wait.ts";
import { KEEPER_SLEEP_SECONDS } from "../../lib/fuse/keeper.ts";

export interface MountSandbox {
  /** Empty directory to mount on. */
  target: string;
  /** EROFS_OCI_RUNTIME_DIR for every CLI call of this test. */
  runtimeDir: string;
  env: Record<string, string>;
  /** The servers' log files, for assertion messages. */
  serverLogs(): string;
  /**
   * The first match of `pattern` in the servers' logs, waited for: what a server logs after
   * its ready (the directory walk after a listed mount's pins) may come after `mount` returned.
   */
  serverLogMatch(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  cleanup(): Promise<void>;
}

function mountPointsUnder(prefix: string): string[] {
  return Deno.readTextFileSync("/proc/self/mountinfo").split("\n")
    .map((line) => line.split(" ")[4])
    .filter((p): p is string => !!p && p.startsWith(prefix));
}

/**
 * Mount points anywhere whose source (a file-backed EROFS layer) lies below `prefix`: what a
 * command of the test mounted outside the sandbox (`trace` mounts in a temp dir of its own).
 */
export function mountPointsFrom(prefix: string): string[] {
  return Deno.readTextFileSync("/proc/self/mountinfo").split("\n").flatMap((line) => {
    const fields = line.split(" ");
    const source = fields[fields.indexOf("-") + 2];
    return fields.length > 6 && source?.startsWith(prefix) ? [fields[4]] : [];
  });
}

/** Mount points (from /proc/self/mountinfo) at or below `prefix`. */
export function mountsBelow(prefix: string): string[] {
  return mountPointsUnder(prefix);
}

export async function mountSandbox(): Promise<MountSandbox> {
  const base = await Deno.makeTempDir({ prefix: "erofs-oci-mount-test-" });
  const target = `${base}/mnt`;
  const runtimeDir = `${base}/run`;
  Deno.mkdirSync(target);
  // A disk cache and a state dir (kept chunk tables, index copies) of its own: a test neither
  // fills the host's nor reads what another left.
  const env = {
    EROFS_OCI_RUNTIME_DIR: runtimeDir,
    EROFS_OCI_CACHE_DIR: `${base}/disk-cache`,
    EROFS_OCI_STATE_DIR: `${base}/state`,
  };
  const serverLogs = () => {
    let text = "";
    try {
      for (const entry of Deno.readDirSync(`${runtimeDir}/mounts`)) {
        try {
          text += Deno.readTextFileSync(`${runtimeDir}/mounts/${entry.name}/server.log`);
        } catch { /* no log */ }
      }
    } catch { /* no runtime dir */ }
    return text || "(no server log)";
  };
  return {
    target,
    runtimeDir,
    env,
    serverLogs,
    async serverLogMatch(pattern, timeoutMs = 30_000) {
      let found: RegExpMatchArray | null = null;
      await waitFor(
        `${pattern} in the server log`,
        () => (found = serverLogs().match(pattern)) !== null,
        timeoutMs,
      ).catch((error) => {
        throw new Error(`${error.message}\n${serverLogs()}`);
      });
      return found!;
    },
    async cleanup() {
      if (mountPointsUnder(target).length) {
        await runCli(["umount", "--lazy", target], { env, timeoutMs: 30_000 });
      }
      // A server whose `mount` was killed before it recorded the mount (a test's deadline)
      // undoes its mounts and stops by itself once ready: killed now, it would leave its NBD
      // devices connected and their recovery files for the next test (a 40-layer mount under
      // TCG took minutes to get there, and reattach_test after it found 12 recovery files).
      const recorded = serverPids(runtimeDir);
      if (mountServersOf(runtimeDir).some((pid) => !recorded.includes(pid))) {
        await waitFor(
          "unrecorded servers to undo their mounts",
          () => mountServersOf(runtimeDir).every((pid) => recorded.includes(pid)),
          Deno.env.get("EROFS_OCI_IN_VM") === "1" ? 300_000 : 30_000,
        ).catch(() => {});
      }
      // Last resort after a failed test: stop servers we started (and the FUSE keepers they
      // left: a killed server cannot end its keeper) and detach what is left. Found by their
      // environment, not by the pids recorded: a dead server's pid may be another test's
      // process by now (pid_max is 32768 on the CI machines, and a run starts more).
      for (const pid of [...mountServersOf(runtimeDir), ...runningKeepersOf(runtimeDir)]) {
        try {
          Deno.kill(pid, "SIGKILL");
        } catch { /* gone */ }
      }
      for (const point of [...mountPointsUnder(base), ...mountPointsFrom(base)].reverse()) {
        await new Deno.Command("umount", { args: ["-l", point], stderr: "null" }).output();
      }
      await Deno.remove(base, { recursive: true }).catch(() => {});
    },
  };
}

/** Server pids recorded under a runtime dir. */
/**
 * The mappings of `pid` that are writable and executable: where V8's JIT keeps its code (some
 * 500 MB, rwx). Deno's FFI trampolines are executable but not writable (r-x, a few pages).
 */
export function writableExecutableMappings(pid: number): string[] {
  return Deno.readTextFileSync(`/proc/${pid}/maps`).split("\n").filter((line) => {
    const [, perms = ""] = line.trim().split(/\s+/);
    return perms.includes("w") && perms.includes("x");
  });
}

/**
 * Pids of running `__mount-server` processes whose environment names `runtimeDir` (ours only),
 * also those not recorded in a state file yet.
 */
export function mountServersOf(runtimeDir: string): number[] {
  const pids: number[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const cmdline = Deno.readTextFileSync(`/proc/${entry.name}/cmdline`);
      if (!cmdline.includes("__mount-server")) continue;
      const environ = Deno.readTextFileSync(`/proc/${entry.name}/environ`).split("\0");
      if (environ.includes(`EROFS_OCI_RUNTIME_DIR=${runtimeDir}`)) pids.push(Number(entry.name));
    } catch { /* exited meanwhile */ }
  }
  return pids;
}

/**
 * SIGKILLs every mount server of `runtimeDir`, for a finally block: a server paused by
 * EROFS_OCI_TEST_PAUSE_AT is in no state file, so sandbox.cleanup would not find it.
 */
export function killMountServersOf(runtimeDir: string): void {
  for (const pid of mountServersOf(runtimeDir)) {
    try {
      Deno.kill(pid, "SIGKILL");
    } catch { /* gone */ }
  }
}

/** FUSE keepers (lib/fuse/keeper.ts) whose environment names `runtimeDir` (ours only). */
export function runningKeepersOf(runtimeDir: string): number[] {
  const pids: number[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const argv = Deno.readTextFileSync(`/proc/${entry.name}/cmdline`).split("\0");
      if (!argv[0].endsWith("sleep") || argv[1] !== KEEPER_SLEEP_SECONDS) continue;
      const environ = Deno.readTextFileSync(`/proc/${entry.name}/environ`).split("\0");
      if (environ.includes(`EROFS_OCI_RUNTIME_DIR=${runtimeDir}`)) pids.push(Number(entry.name));
    } catch { /* exited meanwhile */ }
  }
  return pids;
}

export function serverPids(runtimeDir: string): number[] {
  const pids: number[] = [];
  try {
    for (const entry of Deno.readDirSync(`${runtimeDir}/mounts`)) {
      try {
        const state = JSON.parse(
          Deno.readTextFileSync(`${runtimeDir}/mounts/${entry.name}/state.json`),
        );
        pids.push(state.serverPid);
      } catch { /* no state yet */ }
    }
  } catch { /* no runtime dir */ }
  return pids;
}

/** `manifest.py DIR` output (the fixtures' manifest format). */
export async function manifestOf(dir: string): Promise<string> {
  const out = await new Deno.Command("python3", {
    args: [`${FIXTURES}/manifest.py`, dir],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout);
}

export function expectedManifest(name: string): string {
  return Deno.readTextFileSync(`${FIXTURES}/expected/${name}`);
}

/** True when a pid still runs (zombies count as gone). */
export function pidAlive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(Deno.readTextFileSync(`/proc/${pid}/stat`));
  } catch {
    return false;
  }
}
