import assert from "node:assert/strict";
import { info, setDebug, setTextLogSink, warn } from "./log.ts";

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

Deno.test("info: control characters of quoted paths and image data are escaped", () => {
  const lines: string[] = [];
  setTextLogSink((_level, text) => lines.push(text));
  try {
    // `build -o $'dir/a\nb.erofs'` split its summary line; an escape sequence reached the terminal.
    info("wrote dir/a\nb\u001b[31m.erofs");
  } finally {
    setTextLogSink(undefined);
  }
  assert.equal(lines.length, 1);
  assert.ok(!lines[0].includes("\n") && !lines[0].includes("\u001b"), lines[0]);
  assert.match(lines[0], /^wrote dir\/a.*b.*\.erofs$/);
});
