import assert from "node:assert/strict";
import { endOpenProgressLine, ProgressLine } from "./progress.ts";

Deno.test("ProgressLine: bytes as sizes, entries as counts; nothing when not a terminal", () => {
  const written: string[] = [];
  const line = new ProgressLine("scanning src", true, (text) => written.push(text));
  line.updateEntries(17_408);
  line.finish();
  const bytes = new ProgressLine("pulling", true, (text) => written.push(text));
  bytes.update(4096, 8192);
  bytes.finish();
  assert.deepEqual(written, [
    "\r\x1b[Kscanning src 17,408 entries",
    "\n",
    "\r\x1b[Kpulling 4.0 KiB / 8.0 KiB (50%)",
    "\n",
  ]);
  const quiet: string[] = [];
  const off = new ProgressLine("scanning", false, (text) => quiet.push(text));
  off.updateEntries(5);
  off.finish();
  assert.deepEqual(quiet, []);
});

Deno.test("ProgressLine.updateRead: bytes against the total, or with their rate from a pipe", () => {
  let clockMs = 1000;
  const written: string[] = [];
  const pipe = new ProgressLine(
    "reading standard input",
    true,
    (t) => written.push(t),
    () => clockMs,
  );
  clockMs = 3000;
  pipe.updateRead(4 << 20, undefined, 3);
  clockMs = 3050;
  pipe.updateRead(6 << 20, undefined, 5); // within 100 ms of the last: drawn at the end
  clockMs = 4000;
  pipe.finish();
  const file = new ProgressLine("reading l.tar", true, (t) => written.push(t), () => clockMs);
  file.updateRead(4096, 8192, 2);
  file.finish();
  assert.deepEqual(written, [
    "\r\x1b[Kreading standard input 4.0 MiB (2.0 MiB/s), 3 entries",
    "\r\x1b[Kreading standard input 6.0 MiB (2.0 MiB/s), 5 entries",
    "\n",
    "\r\x1b[Kreading l.tar 4.0 KiB / 8.0 KiB (50%), 2 entries",
    "\n",
  ]);
  const quiet: string[] = [];
  const off = new ProgressLine("reading", false, (t) => quiet.push(t), () => clockMs);
  off.updateRead(1, undefined, 1);
  off.finish();
  assert.deepEqual(quiet, []);
});

Deno.test("ProgressLine: a line left open is ended before a message (endOpenProgressLine)", () => {
  const written: string[] = [];
  let now = 0;
  const line = new ProgressLine("reading", true, (text) => written.push(text), () => now);
  line.update(1, 4);
  now += 1000;
  line.update(2, 4);
  endOpenProgressLine();
  assert.equal(written.at(-1), "\n", "the message that follows starts a line of its own");
  const count = written.length;
  endOpenProgressLine();
  line.finish();
  assert.equal(written.length, count, "ended once: nothing more written");
});
