import assert from "node:assert/strict";
import { after, every, sleep, waitAtMost } from "./timers.ts";

Deno.test("timers: after() runs once, no sooner than asked; cancel() before stops it", async () => {
  const started = performance.now();
  const ran: number[] = [];
  after(30, () => ran.push(performance.now() - started));
  const cancelled = after(10, () => ran.push(-1));
  cancelled.cancel();
  await sleep(80);
  assert.equal(ran.length, 1, `ran ${JSON.stringify(ran)}`);
  assert.ok(ran[0] >= 29, `ran after ${ran[0]} ms`);
});

Deno.test("timers: every() repeats until cancelled, also from inside its callback", async () => {
  let calls = 0;
  const timer = every(5, () => {
    if (++calls === 3) timer.cancel();
  });
  await sleep(100);
  assert.equal(calls, 3);
});

Deno.test("timers: sleep() rejects with the signal's reason, also when aborted already", async () => {
  const controller = new AbortController();
  const waiting = sleep(60_000, controller.signal);
  controller.abort(new Error("stop"));
  await assert.rejects(waiting, /stop/);
  await assert.rejects(sleep(10, controller.signal), /stop/);
});

Deno.test("timers: waitAtMost() ends at the first of the promise and the time", async () => {
  const started = performance.now();
  await waitAtMost(new Promise(() => {}), 20);
  assert.ok(performance.now() - started >= 19);
  await waitAtMost(Promise.resolve(), 60_000);
  await assert.rejects(waitAtMost(Promise.reject(new Error("failed")), 60_000), /failed/);
});

Deno.test("timers: a cancelled timer does not keep the process alive", async () => {
  const url = new URL("./timers.ts", import.meta.url).href;
  const code = `import { after, sleep } from "${url}";\n` +
    `after(600_000, () => console.log("fired")).cancel();\n` +
    `const c = new AbortController(); const s = sleep(600_000, c.signal).catch(() => {});\n` +
    `c.abort(); await s; console.log("done");`;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(60_000),
  });
  const output = await child.output();
  assert.equal(output.code, 0, new TextDecoder().decode(output.stderr));
  assert.equal(new TextDecoder().decode(output.stdout), "done\n");
});

/**
 * In Deno 2.9 the global setTimeout and setInterval are Node's: their first call loads part of
 * Deno's Node layer (several hundred ms of a mount's start-up in the TCG guest, in the CLI and
 * in the server). Only these modules may call them, each for the reason in lib/timers.ts.
 */
const NODE_TIMERS_ALLOWED = new Set([
  "lib/source/fill_trace.ts", // a diagnostic that must not keep the process alive
  "lib/metrics/endpoint.ts", // per-connection deadlines under a possible flood
  "lib/nbd/listen.ts", // the same, for serve
]);

Deno.test("timers: setTimeout and setInterval are called only where lib/timers.ts allows", () => {
  // Decoded: a checkout under a path with spaces (CI's) has them as %20 in the URL.
  const root = decodeURIComponent(new URL("../", import.meta.url).pathname);
  const offenders: string[] = [];
  const visit = (dir: string) => {
    for (const entry of Deno.readDirSync(`${root}${dir}`)) {
      const path = `${dir}/${entry.name}`;
      if (entry.isDirectory) visit(path);
      else if (path.endsWith(".ts") && !path.endsWith("_test.ts") && path !== "lib/timers.ts") {
        const code = Deno.readTextFileSync(`${root}${path}`).replace(/^\s*(\/\/|\*).*$/gm, "");
        if (/\bset(Timeout|Interval)\s*\(/.test(code) && !NODE_TIMERS_ALLOWED.has(path)) {
          offenders.push(path);
        }
      }
    }
  };
  for (const dir of ["lib", "ffi"]) visit(dir);
  const main = Deno.readTextFileSync(`${root}main.ts`);
  if (/\bset(Timeout|Interval)\s*\(/.test(main)) offenders.push("main.ts");
  assert.deepEqual(offenders, [], "use lib/timers.ts (after, every, sleep) instead");
});
