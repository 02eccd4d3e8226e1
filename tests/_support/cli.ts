/**
 * Runs `erofs-oci` as a user would (a subprocess of scripts/erofs-oci-dev with the project's
 * permissions) and captures stdout, stderr and the exit code, with a hard deadline.
 */
import assert from "node:assert/strict";
import { REPO_ROOT } from "./requires.ts";

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  /** True when the deadline killed the process (code is then the signal's). */
  timedOut: boolean;
  /** The command line, for assertion messages. */
  commandLine: string;
}

export interface CliOptions {
  /** Written to stdin, then stdin is closed (e.g. for `--password-stdin`). */
  stdin?: string;
  /** Extra environment; DOCKER_CONFIG defaults to an empty location so the user's is unused. */
  env?: Record<string, string>;
  /**
   * Kill the process after this long (default DEFAULT_CLI_TIMEOUT_MS; commands here take about a
   * second on the host).
   */
  timeoutMs?: number;
  cwd?: string;
  /** Run under this open-file limit (soft and hard, through prlimit(1)). */
  openFileLimit?: number;
  /**
   * Run in a mount namespace of its own whose /sys/module (a tmpfs) shows an nbd module, on a
   * host without one: `--backend nbd` then gets past its module check up to the first device.
   */
  seeNbdModule?: boolean;
}

/** `unshare(1)` arguments that run `command` with an nbd module in sight (seeNbdModule). */
function withNbdModuleInSight(command: string[]): string[] {
  const script = 'mount -t tmpfs none /sys/module && mkdir /sys/module/nbd && exec "$@"';
  return ["-m", "--propagation", "private", "sh", "-c", script, "sh", ...command];
}

const CLI = `${REPO_ROOT}/scripts/erofs-oci-dev`;

/**
 * 20 s on the host; 120 s in the TCG-emulated VM, where starting the CLI from source alone took
 * 19-23 s on a loaded host (a `list` after a kill timed out there while nothing was wrong).
 */
export const DEFAULT_CLI_TIMEOUT_MS = Deno.env.get("EROFS_OCI_IN_VM") === "1" ? 120_000 : 20_000;

export async function runCli(args: string[], options: CliOptions = {}): Promise<CliResult> {
  const limited = options.openFileLimit;
  let command = limited === undefined
    ? [CLI, ...args]
    : ["prlimit", `--nofile=${limited}:${limited}`, "--", CLI, ...args];
  if (options.seeNbdModule) command = ["unshare", ...withNbdModuleInSight(command)];
  const child = new Deno.Command(command[0], {
    args: command.slice(1),
    cwd: options.cwd,
    env: { DOCKER_CONFIG: "/nonexistent/erofs-oci-test-docker-config", ...options.env },
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* already exited */ }
  }, options.timeoutMs ?? DEFAULT_CLI_TIMEOUT_MS);
  try {
    if (options.stdin !== undefined) {
      const writer = child.stdin.getWriter();
      await writer.write(new TextEncoder().encode(options.stdin)).catch(() => {});
      await writer.close().catch(() => {});
    }
    return toResult(await child.output(), args, timedOut);
  } finally {
    clearTimeout(timer);
  }
}

function toResult(output: Deno.CommandOutput, args: string[], timedOut: boolean): CliResult {
  return {
    code: output.code,
    stdout: new TextDecoder().decode(output.stdout),
    stderr: new TextDecoder().decode(output.stderr),
    timedOut,
    commandLine: `erofs-oci ${args.join(" ")}`,
  };
}

/** A CLI child the test holds by pid (to signal it, as a terminal's Ctrl-C would). */
export interface StartedCli {
  child: Deno.ChildProcess;
  /** Its result once it exits; no deadline (stopCli ends it). */
  result: Promise<CliResult>;
}

/** Starts `erofs-oci ARGS` (stdin closed, DOCKER_CONFIG as in runCli); end it with stopCli. */
export function startCli(args: string[], env: Record<string, string> = {}): StartedCli {
  const child = new Deno.Command(CLI, {
    args,
    env: { DOCKER_CONFIG: "/nonexistent/erofs-oci-test-docker-config", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  return { child, result: child.output().then((output) => toResult(output, args, false)) };
}

/** For a finally block: SIGKILL a child still running and wait for it to end. */
export async function stopCli(started: StartedCli | undefined): Promise<void> {
  try {
    started?.child.kill("SIGKILL");
  } catch { /* exited */ }
  await started?.result.catch(() => {});
}

/** Multi-line description of a result for assertion messages. */
export function describe(result: CliResult): string {
  return `${result.commandLine}\n  exit ${result.code}${result.timedOut ? " (timed out)" : ""}\n` +
    `  stdout: ${result.stdout.trimEnd() || "(empty)"}\n  stderr: ${
      result.stderr.trimEnd() || "(empty)"
    }`;
}

export function assertSuccess(result: CliResult): void {
  assert.equal(result.code, 0, `expected success:\n${describe(result)}`);
}

/**
 * The CLI's error contract: exit `code`, stderr is one `erofs-oci: …` line plus at most one
 * `  hint: …` line, no stack trace, no raw "(os error N)" of Deno's. Returns the message line for further checks.
 */
export function assertCliError(result: CliResult, code: number, message?: RegExp): string {
  assert.ok(!result.timedOut, `timed out:\n${describe(result)}`);
  assert.equal(result.code, code, `expected exit ${code}:\n${describe(result)}`);
  const lines = result.stderr.split("\n").filter((l) => l.trim() !== "");
  assert.ok(lines.length >= 1, `expected an error message:\n${describe(result)}`);
  assert.match(lines[0], /^erofs-oci: \S/, `first stderr line:\n${describe(result)}`);
  assert.ok(
    lines.length === 1 || (lines.length === 2 && /^ {2}hint: \S/.test(lines[1])),
    `expected one error line and an optional hint:\n${describe(result)}`,
  );
  assert.ok(
    !/^\s+at /m.test(result.stderr),
    `stack trace printed without --debug:\n${describe(result)}`,
  );
  assert.ok(!/internal error/.test(lines[0]), `internal error is a bug:\n${describe(result)}`);
  assert.ok(
    !/\(os error \d+\)/.test(result.stderr),
    `Deno's "(os error N)" reached the user:\n${describe(result)}`,
  );
  if (message) assert.match(lines[0], message, `error message:\n${describe(result)}`);
  return lines[0];
}

/** Credential options for a test registry: `--password P`, or `--password-stdin` + stdin. */
export function loginOptions(
  registry: { auth: string; username: string; password: string },
  via: "argument" | "stdin" = "argument",
): { args: string[]; stdin?: string } {
  if (registry.auth === "none") return { args: [] };
  if (via === "stdin") {
    return {
      args: ["--username", registry.username, "--password-stdin"],
      stdin: registry.password,
    };
  }
  return { args: ["--username", registry.username, "--password", registry.password] };
}
