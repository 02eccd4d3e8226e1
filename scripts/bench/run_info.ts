/**
 * The machine and code facts a benchmark script records next to its figures in
 * `.cache/bench/<name>-latest.json`, so scripts/bench/readme_table.ts can say where and when a
 * row of the README's speed table was measured. Every field is best effort: a benchmark never
 * fails because git or /proc is missing.
 */
export interface RunInfo {
  /** ISO 8601, UTC. */
  date: string;
  cpu: string;
  cores: number;
  kernel: string;
  /** 1-minute load average at the start and at the end of the run. */
  load: [number, number];
  /** Short HEAD commit, with "+" when files under lib/ or ffi/ had uncommitted changes. */
  commit?: string;
}

/** Call at the start of a run; pass the result to runInfo() at the end. */
export function loadNow(): number {
  return Deno.loadavg()[0];
}

export function runInfo(loadBefore: number): RunInfo {
  let cpu = "?";
  try {
    cpu = /model name\s*:\s*(.*)/.exec(Deno.readTextFileSync("/proc/cpuinfo"))?.[1] ?? "?";
  } catch { /* not Linux /proc: leave "?" */ }
  return {
    date: new Date().toISOString(),
    cpu,
    cores: navigator.hardwareConcurrency,
    kernel: Deno.osRelease(),
    load: [loadBefore, loadNow()],
    commit: headCommit(),
  };
}

function headCommit(): string | undefined {
  const git = (args: string[]) => {
    try {
      const out = new Deno.Command("git", {
        args: ["-C", `${import.meta.dirname}/../..`, ...args],
        stdout: "piped",
        stderr: "null",
      }).outputSync();
      return out.success ? new TextDecoder().decode(out.stdout).trim() : undefined;
    } catch {
      return undefined;
    }
  };
  const head = git(["rev-parse", "--short", "HEAD"]);
  if (!head) return undefined;
  const dirty = git(["status", "--porcelain", "--", "lib", "ffi", "main.ts"]);
  return dirty ? `${head}+` : head;
}
