/** `erofs-oci serve` as a user runs it: a subprocess of scripts/erofs-oci-dev on a unix socket. */
import { REPO_ROOT } from "./requires.ts";

export interface Serving {
  uri: string;
  socket: string;
  dir: string;
  child: Deno.ChildProcess;
  stderr(): string;
  /** True until the process has exited. */
  alive(): boolean;
  /** SIGTERM, then the exit code (the server must exit by itself). */
  stop(): Promise<number>;
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Starts `erofs-oci serve IMAGE --listen unix:TMP/nbd.sock ARGS` and waits for its URI line.
 * `prefix` runs it through a wrapper that execs it, e.g. `["prlimit", "--nofile=64"]`;
 * `cacheDir` is a disk cache several serves share (default: one of its own).
 */
export async function serve(
  image: string,
  args: string[] = [],
  prefix: string[] = [],
  cacheDir?: string,
): Promise<Serving> {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-serve-" });
  const socket = `${dir}/nbd.sock`;
  const argv = [`${REPO_ROOT}/scripts/erofs-oci-dev`, "serve", image, "--listen", `unix:${socket}`];
  argv.push(...args);
  argv.unshift(...prefix);
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    env: {
      DOCKER_CONFIG: "/nonexistent/erofs-oci-test-docker-config",
      // The test's own disk cache (removed with `dir`) unless the test shares one on purpose.
      EROFS_OCI_CACHE_DIR: cacheDir ?? `${dir}/disk-cache`,
    },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let errText = "";
  const errDone = child.stderr.pipeThrough(new TextDecoderStream()).pipeTo(
    new WritableStream({ write: (t) => void (errText += t) }),
  ).catch(() => {});
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const kill = () => {
    if (!exited) {
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
    }
  };
  let out = "";
  const deadline = setTimeout(kill, 20_000);
  try {
    while (!out.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`serve exited before listening:\n${errText}`);
      out += value;
    }
  } catch (error) {
    kill();
    await status;
    await errDone;
    await Deno.remove(dir, { recursive: true });
    throw error;
  } finally {
    clearTimeout(deadline);
  }
  const drainOut = (async () => {
    while (!(await reader.read()).done) { /* keep stdout flowing */ }
  })().catch(() => {});
  let stopped: Promise<number> | undefined;
  const stop = () =>
    stopped ??= (async () => {
      if (!exited) child.kill("SIGTERM");
      const timer = setTimeout(kill, 10_000);
      const s = await status;
      clearTimeout(timer);
      await drainOut;
      await errDone;
      return s.code;
    })();
  return {
    uri: out.trim(),
    socket,
    dir,
    child,
    stderr: () => errText,
    alive: () => !exited,
    stop,
    async [Symbol.asyncDispose]() {
      await stop();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/**
 * The process whose memory a test measures: erofs-oci-dev may exec deno or keep a shell
 * parent, so follow single children down to the deno process.
 */
export function servingPid(s: Serving): number {
  let pid = s.child.pid;
  for (let i = 0; i < 4; i++) {
    if (procName(pid) === "deno") return pid;
    const children = readText(`/proc/${pid}/task/${pid}/children`).trim().split(/\s+/)
      .filter(Boolean);
    if (children.length !== 1) break;
    pid = Number(children[0]);
  }
  return pid;
}

/** VmRSS and VmHWM (peak RSS) of a process, in bytes. */
export function memoryOf(pid: number): { rssBytes: number; peakBytes: number } {
  const status = readText(`/proc/${pid}/status`);
  const kib = (field: string) => {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status);
    if (!m) throw new Error(`no ${field} in /proc/${pid}/status`);
    return Number(m[1]) * 1024;
  };
  return { rssBytes: kib("VmRSS"), peakBytes: kib("VmHWM") };
}

function procName(pid: number): string {
  return readText(`/proc/${pid}/comm`).trim();
}

function readText(path: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return "";
  }
}
