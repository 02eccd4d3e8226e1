import { makeOwnedWorkDir, type OwnedWorkDir } from "../../ffi/work_dir.ts";
/**
 * `erofs-oci trace IMAGE [--push | -o FILE] [--seconds N] -- CMD [ARGS…]`: mounts IMAGE on a
 * fresh cache (memory only, no prefetch), runs CMD against it, and keeps the byte ranges of
 * each layer the kernel read, merged and in first-access order, as a trace that `mount` then
 * prefetches. Pushed as an OCI artifact referring to the image, or written to FILE.
 */
import type { Command } from "./command.ts";
import { parseCommandArgs } from "./command.ts";
import { OciError, UsageError, UserError } from "../errors.ts";
import { authRequiredError } from "../oci/auth.ts";
import { openRegistry, REGISTRY_OPTIONS } from "./registry_options.ts";
import { TRANSPORT_OPTIONS_HELP } from "./registry_option_specs.ts";
import { info, warn } from "../log.ts";
import { mountCommand } from "./mount.ts";
import { umountCommand } from "./umount.ts";
import { checkRoot } from "../mount/target_dir.ts";
import { catchInterrupts } from "./interrupt.ts";
import { checkOutputFile, dirOf, writeOutputFile } from "./output_file.ts";
import { availableBytesOf } from "../source/disk_cache_fs.ts";
import { formatBytes, hexOf } from "../text.ts";
import { fetchManifest } from "../oci/resolve.ts";
import { formatReference } from "../oci/reference.ts";
import { MAX_TRACE_BYTES, parseTrace, type Trace } from "../trace/format.ts";
import { pushTraceArtifact } from "../trace/artifact.ts";
import { TRACE_RECORD_ENV } from "../trace/server_hooks.ts";
import { after, MAX_TIMER_MS, type Timer } from "../timers.ts";

class TraceError extends UserError {}

const TRACE_OPTIONS = {
  ...REGISTRY_OPTIONS,
  push: { type: "boolean" },
  output: { type: "string", short: "o" },
  seconds: { type: "string" },
  backend: { type: "string" },
} as const;

/** Registry options passed on to the mount (credentials come from Docker's config). */
const FORWARDED_FLAGS = ["insecure", "plain-http"] as const;

/** CMD gets this long to exit after SIGTERM at the --seconds limit before SIGKILL. */
const KILL_GRACE_MS = 5000;

export const traceCommand: Command = {
  name: "trace",
  writesWhere: "-o",
  summary: "record which bytes a command reads from an image, for mount to prefetch",
  help: `Usage: erofs-oci trace IMAGE (--push | -o FILE) [--seconds N] [options] -- CMD [ARGS…]

Mounts IMAGE on a fresh cache in a temporary directory, runs CMD there ({} in its
arguments is replaced by the mount directory, also exported as EROFS_OCI_ROOT), and
records which byte ranges of each layer were read, in order, until CMD exits (or N
seconds passed: CMD gets SIGTERM). The trace (merged ranges per layer digest and their
order) is pushed as an artifact referring to the image (referrers API, or the
sha256-<hex> fallback tag) or written to FILE. \`mount\` finds a pushed trace and
prefetches those ranges once the metadata is in (\`mount --no-prefetch\` skips it).
CMD's output is its own (trace's lines go to stderr); trace exits with CMD's exit code,
after keeping the trace of what CMD read even when that code is not 0.

Options:
      --push             store the trace in the registry, referring to the image
  -o, --output FILE      write the trace to FILE
      --seconds N        stop recording after N seconds
      --backend B        nbd, fuse or auto (default auto)
  -h, --help

Registry options:
${TRANSPORT_OPTIONS_HELP}

Credentials: from Docker's config (--username/--password are not taken here).`,
  async run(argv) {
    const split = argv.indexOf("--");
    if (split < 0 || split === argv.length - 1) {
      throw new UsageError(
        "trace: give the command after --",
        "e.g. erofs-oci trace IMAGE -o t.json -- ls {}",
      );
    }
    const command = argv.slice(split + 1);
    const { values, positionals } = parseCommandArgs("trace", argv.slice(0, split), TRACE_OPTIONS);
    if (positionals.length !== 1) throw new UsageError("trace: give one IMAGE before --");
    const [image] = positionals;
    if (Boolean(values.push) === (values.output !== undefined)) {
      throw new UsageError("trace: give --push or -o FILE (one of them)");
    }
    if (values.output !== undefined) checkOutputFile("trace", values.output);
    if (
      values.username !== undefined || values.password !== undefined || values["password-stdin"]
    ) {
      throw new UsageError(
        "trace: credentials come from Docker's config here",
        "docker login first",
      );
    }
    let seconds: number | undefined;
    if (values.seconds !== undefined) {
      seconds = Number(values.seconds);
      if (!/^\d+(\.\d+)?$/.test(values.seconds) || seconds <= 0) {
        throw new UsageError(`trace: --seconds wants a positive number, got '${values.seconds}'`);
      }
      // A longer one made the timer fire at once (the command stopped, a truncated trace kept).
      if (seconds > MAX_TIMER_MS / 1000) {
        throw new UsageError(
          `trace: --seconds ${values.seconds} is more than ${Math.floor(MAX_TIMER_MS / 1000)} ` +
            "(24 days)",
          "leave --seconds out to trace until the command exits",
        );
      }
    }
    checkRoot("tracing (it mounts the image)");
    // Ctrl-C stops CMD and removes the temporary mount (it was left mounted, server running).
    const interrupt = catchInterrupts(
      "trace interrupted: no trace written, its temporary mount removed",
    );
    const opened = await openRegistry("trace", image, values, false).catch((error) => {
      interrupt.close();
      throw error;
    });
    let workDir: OwnedWorkDir | undefined;
    let work: string | undefined;
    const saved = new Map(
      [TRACE_RECORD_ENV, "EROFS_OCI_DISK_CACHE_BYTES"].map((k) => [k, Deno.env.get(k)]),
    );
    let mounted = false;
    const restoreEnv = () => {
      for (const [key, value] of saved) {
        if (value === undefined) Deno.env.delete(key);
        else Deno.env.set(key, value);
      }
    };
    try {
      // Held for the process's life: what a killed trace left the next one removes.
      workDir = makeOwnedWorkDir(Deno.env.get("TMPDIR") ?? "/tmp", "erofs-oci-trace-", info);
      work = workDir.path;
      const root = `${work}/root`;
      const traceFile = `${work}/trace.json`;
      // Said before CMD runs: a server that cannot write the trace loses what CMD read.
      checkRoomForTrace(work, "TMPDIR elsewhere");
      if (values.output !== undefined) checkRoomForTrace(dirOf(values.output), "-o elsewhere", 1);
      Deno.mkdirSync(root);
      Deno.env.set(TRACE_RECORD_ENV, traceFile);
      // The trace goes to the manifest mounted, pinned now: the tag may name another by the
      // time CMD ends (a CI job pushing meanwhile), and the trace then went to that one.
      const resolved = await opened.client.resolveImage(opened.ref, opened.platform);
      const pinned = formatReference({ ...opened.ref, digest: resolved.manifestDigest });
      const mountArgv = [pinned, root, "--no-disk-cache", "--no-prefetch"];
      if (values.backend !== undefined) mountArgv.push("--backend", values.backend);
      if (values.platform !== undefined) mountArgv.push("--platform", values.platform);
      for (const flag of FORWARDED_FLAGS) if (values[flag]) mountArgv.push(`--${flag}`);
      // CMD's stdout is the user's: the mount's "mounted …" line goes to stderr.
      const log = console.log;
      console.log = console.error;
      await mountCommand.run(mountArgv).catch((error) => {
        // The mount's own 401 hint names credential options trace does not take.
        if (!(error instanceof OciError) || error.status !== 401) throw error;
        throw authRequiredError(opened.ref.registry, false, error);
      }).finally(() => console.log = log);
      mounted = true;
      // The server took them as it started: CMD (an `erofs-oci mount` of its own) must not.
      restoreEnv();
      const status = await runTraced(command, root, seconds, interrupt.signal);
      interrupt.signal.throwIfAborted();
      if (status !== 0) warn(`trace: ${command[0]} exited with ${status}; keeping what it read`);
      await unmountTraced(root);
      mounted = false;
      const trace = readTrace(traceFile);
      const bytes = Deno.readFileSync(traceFile);
      const total = trace.ranges.reduce((sum, r) => sum + r[2], 0);
      const summary =
        `${trace.ranges.length} ranges, ${total} bytes over ${trace.layers.length} layer(s)`;
      try {
        if (values.output !== undefined) {
          writeOutputFile("trace", values.output, bytes);
          info(`trace of ${image}: ${summary}, written to ${values.output}`);
        } else {
          const manifest = await fetchManifest(
            opened.client,
            opened.ref.repository,
            resolved.manifestDigest,
          );
          const pushed = await pushTraceArtifact(opened.client, opened.ref.repository, {
            digest: resolved.manifestDigest,
            size: manifest.bytes.byteLength,
            mediaType: resolved.mediaType,
          }, bytes);
          info(`trace of ${image}: ${summary}, pushed as ${pushed.digest} (${pushed.via})`);
        }
      } catch (error) {
        // CMD has run: what it read is not thrown away with the work directory.
        const kept = keepUnsavedTrace(traceFile);
        if (kept) warn(`trace: not saved; the trace (${summary}) is kept in ${kept}`);
        throw error;
      }
      // As `time CMD` does: a script learns that CMD failed (its trace is kept all the same).
      return status;
    } finally {
      restoreEnv();
      if (mounted && work) {
        await unmountTraced(`${work}/root`).catch((error) =>
          warn(`trace: umount ${work}/root failed: ${(error as Error).message}`)
        );
      }
      opened.client.close();
      if (workDir && !workDir.remove()) {
        info(`trace: ${work} left behind: a mount is still on ${work}/root`);
      }
      interrupt.close();
    }
  },
};

/**
 * Unmounts trace's own temporary mount. What still holds it (a child the command left behind,
 * its cwd inside) must not keep the mount, nor its server, alive after trace ends: detached then.
 */
async function unmountTraced(root: string): Promise<void> {
  try {
    await umountCommand.run([root]);
  } catch (error) {
    warn(`trace: ${(error as Error).message}; detaching it (--lazy)`);
    await umountCommand.run([root, "--lazy"]);
  }
}

function readTrace(path: string): Trace {
  try {
    return parseTrace(Deno.readFileSync(path));
  } catch (error) {
    const dir = dirOf(path);
    throw new TraceError(
      `trace: no trace from the mount server (${(error as Error).message})`,
      freeBytesIn(dir) < MAX_TRACE_BYTES
        ? `it had no room to write it in ${dir}: free space there, or set TMPDIR elsewhere`
        : "run it again with --debug to see the mount server's own output",
    );
  }
}

/** Bytes a user may still write in `dir`'s file system; Infinity when statfs cannot tell. */
function freeBytesIn(dir: string): number {
  return availableBytesOf(dir) ?? Infinity;
}

/** Refuses (before CMD runs) a `dir` with less than `needBytes` free: a full trace's bound. */
function checkRoomForTrace(dir: string, elsewhere: string, needBytes = MAX_TRACE_BYTES): void {
  const free = freeBytesIn(dir);
  if (free >= needBytes) return;
  throw new TraceError(
    `trace: ${dir} has ${formatBytes(free)} free, and a trace can take ` +
      `${formatBytes(MAX_TRACE_BYTES)}: CMD not run`,
    `free space there, or set ${elsewhere}`,
  );
}

/**
 * Moves a recorded trace out of the work directory (removed as trace ends) beside it, under
 * a name of its own: a rename in one file system, which needs no room. The kept path, or
 * undefined when there is nothing to keep.
 */
function keepUnsavedTrace(traceFile: string): string | undefined {
  const tmp = dirOf(dirOf(traceFile));
  const kept = `${tmp}/erofs-oci-unsaved-trace-${
    hexOf(crypto.getRandomValues(new Uint8Array(4)))
  }.json`;
  try {
    Deno.renameSync(traceFile, kept);
    return kept;
  } catch {
    return undefined;
  }
}

/**
 * Runs CMD with `{}` → the mount directory; SIGTERM (then SIGKILL) at the time limit, or at
 * once when `signal` aborts (the user interrupted trace).
 */
async function runTraced(
  command: string[],
  root: string,
  seconds?: number,
  signal?: AbortSignal,
): Promise<number> {
  const [program, ...args] = command.map((arg) => arg.replaceAll("{}", root));
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(program, {
      args,
      env: { EROFS_OCI_ROOT: root },
      stdin: "inherit",
      stdout: "inherit",
      stderr: "inherit",
    }).spawn();
  } catch (error) {
    throw new TraceError(`trace: cannot run ${program}: ${(error as Error).message}`);
  }
  const timers: Timer[] = [];
  const stop = () => {
    try {
      child.kill("SIGTERM");
    } catch { /* exited */ }
    timers.push(after(KILL_GRACE_MS, () => {
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
    }));
  };
  let stoppedAfterSeconds = false;
  if (seconds !== undefined) {
    timers.push(after(seconds * 1000, () => {
      info(`trace: ${seconds} s passed, stopping ${program}`);
      stoppedAfterSeconds = true;
      stop();
    }));
  }
  if (signal?.aborted) stop();
  else signal?.addEventListener("abort", stop, { once: true });
  try {
    const status = await child.status;
    // Stopped at --seconds, as asked: the trace's normal end, not CMD's failure.
    return stoppedAfterSeconds ? 0 : status.code;
  } finally {
    signal?.removeEventListener("abort", stop);
    for (const timer of timers) timer.cancel();
  }
}
