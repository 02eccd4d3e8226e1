import assert from "node:assert/strict";
import { setDebug, setTextLogSink, warn } from "./log.ts";

Deno.test("warn: Deno's OS error texts in our words; --debug adds the errno's name", () => {
  const lines: string[] = [];
  setTextLogSink((_level, text) => lines.push(text));
  try {
    const raw = "cache: cannot evict /c/x: Permission denied (os error 13): unlink '/c/x'";
    warn(raw);
    setDebug(true);
    warn(raw);
  } finally {
    setDebug(false);
    setTextLogSink(undefined);
  }
  assert.deepEqual(lines, [
    "cache: cannot evict /c/x: Permission denied",
    "cache: cannot evict /c/x: Permission denied [EACCES (os error 13)]",
  ]);
});
