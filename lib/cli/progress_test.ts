import assert from "node:assert/strict";
import { ProgressLine } from "./progress.ts";

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
