/** A running `erofs-oci reattach --watch` for tests, its output collected line by line. */
import { REPO_ROOT } from "./requires.ts";

/** A running `reattach --watch` whose output lines are collected. */
export interface Watcher {
  lines: string[];
  /** Resolves with the first line matching `pattern` (rejects after `timeoutMs`). */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<{ line: string; atMs: number }>;
  /** Forgets the lines seen so far. */
  clear(): void;
  stop(): Promise<void>;
}

export function startWatcher(env: Record<string, string>, cli?: string[]): Watcher {
  const [program, ...args] = cli ?? [`${REPO_ROOT}/scripts/erofs-oci-dev`];
  const child = new Deno.Command(program, {
    args: [...args, "reattach", "--watch"],
    env: { DOCKER_CONFIG: "/nonexistent/erofs-oci-test-docker-config", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines: { line: string; atMs: number }[] = [];
  const pump = (async () => {
    let rest = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      rest += chunk;
      const parts = rest.split("\n");
      rest = parts.pop()!;
      for (const line of parts) lines.push({ line, atMs: Date.now() });
    }
  })();
  const stderr = new Response(child.stderr).text();
  return {
    get lines() {
      return lines.map((l) => l.line);
    },
    clear() {
      lines.length = 0;
    },
    async waitFor(pattern, timeoutMs = 120_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = lines.find((l) => pattern.test(l.line));
        if (found) return found;
        if (Date.now() > deadline) {
          throw new Error(`watcher never said ${pattern}: ${lines.map((l) => l.line).join("\n")}`);
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    async stop() {
      try {
        child.kill("SIGTERM");
      } catch { /* gone */ }
      const timer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch { /* gone */ }
      }, 10_000);
      await child.status;
      clearTimeout(timer);
      await pump.catch(() => {});
      const errors = await stderr;
      if (errors.trim()) console.log(`watcher stderr: ${errors}`);
    },
  };
}
