/**
 * lowerThreadPriority (ffi/process.ts), which a mount server calls once its background windows
 * start: it lowers the calling thread only — a thread started before keeps its priority (the
 * NBD/FUSE reader thread) — and never raises a priority the process was given lower.
 */
import assert from "node:assert/strict";

const PROCESS_FFI = new URL("../ffi/process.ts", import.meta.url).href;

/** Runs `script` in a fresh Deno (all permissions: /proc is read), under `nice -n niceness`. */
async function runNiced(niceness: number, script: string): Promise<string> {
  const output = await new Deno.Command("nice", {
    args: ["-n", String(niceness), Deno.execPath(), "eval", "-q", "--no-config", script],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(output.code, 0, new TextDecoder().decode(output.stderr));
  return new TextDecoder().decode(output.stdout).trim();
}

const PROLOGUE = `
import { lowerThreadPriority } from "${PROCESS_FFI}";
// /proc/thread-self/stat: the nice value is field 19, the 17th after "(comm) ".
const niceOf = () => Number(Deno.readTextFileSync("/proc/thread-self/stat").split(") ")[1].split(" ")[16]);
const worker = new Worker(URL.createObjectURL(new Blob([
  "self.onmessage = () => self.postMessage(Number(Deno.readTextFileSync('/proc/thread-self/stat').split(') ')[1].split(' ')[16]));",
], { type: "text/javascript" })), { type: "module" });
const workerNice = () => new Promise((resolve) => { worker.onmessage = (e) => resolve(e.data); worker.postMessage(0); });
await workerNice(); // started and answering before the change
`;

Deno.test("lowerThreadPriority: the calling thread only, not a thread started before it", async () => {
  const result = await runNiced(
    0,
    PROLOGUE + `
const ok = lowerThreadPriority(7);
console.log(JSON.stringify({ ok, main: niceOf(), worker: await workerNice() }));
worker.terminate();
`,
  );
  assert.deepEqual(JSON.parse(result), { ok: true, main: 7, worker: 0 });
});

Deno.test("lowerThreadPriority: never raises the priority of a thread niced lower already", async () => {
  const result = await runNiced(
    15,
    PROLOGUE + `
const ok = lowerThreadPriority(10);
console.log(JSON.stringify({ ok, main: niceOf(), worker: await workerNice() }));
worker.terminate();
`,
  );
  assert.deepEqual(JSON.parse(result), { ok: true, main: 15, worker: 15 });
});
