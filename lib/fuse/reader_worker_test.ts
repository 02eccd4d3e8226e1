/**
 * The FUSE reader thread's loop when poll() fails (tests/_support/fuse_reader_harness.ts fakes
 * the failures): its connections end, and it still ends when the control pipe is closed, or
 * says it ended when not even the pipe can be polled, so the worker can be terminated.
 */
import assert from "node:assert/strict";
import { closeFd, libc } from "../../ffi/libc.ts";
import { makePipe, setNonBlocking } from "../../ffi/io.ts";
import type { FuseReaderCommand, FuseReaderMessage } from "./reader_worker.ts";

/** Bounds a wait that only a broken loop leaves pending (so it fails instead of hanging). */
const HANG_GUARD_MS = 30_000;

/** A reader thread serving one pipe as its "device", with `pollFailures` poll()s failing. */
function readerWithFailingPoll(pollFailures: number) {
  const control = makePipe();
  const device = makePipe();
  let controlWriteOpen = true;
  const posted = new Int32Array(new SharedArrayBuffer(4));
  const failures = new Int32Array(new SharedArrayBuffer(4));
  failures[0] = pollFailures;
  const worker = new Worker(
    new URL("../../tests/_support/fuse_reader_harness.ts", import.meta.url).href,
    { type: "module" },
  );
  const messages: FuseReaderMessage[] = [];
  let arrived = Promise.withResolvers<void>();
  worker.onmessage = (event: MessageEvent<FuseReaderMessage>) => {
    messages.push(event.data);
    arrived.resolve();
    arrived = Promise.withResolvers();
  };
  const send = (command: FuseReaderCommand) => {
    worker.postMessage(command);
    Atomics.add(posted, 0, 1);
    libc().write(control.write, new Uint8Array(1), 1n);
  };
  setNonBlocking(control.read);
  worker.postMessage(failures.buffer);
  send({
    start: {
      controlFd: control.read,
      posted: posted.buffer as SharedArrayBuffer,
      bufferBytes: 1 << 17,
      maxReadBytes: 1 << 17,
    },
  });
  send({ add: { id: 1, fd: device.read } });
  return {
    /** Waits for a message that `matches` (failing after HANG_GUARD_MS). */
    async next(what: string, matches: (message: FuseReaderMessage) => boolean) {
      let guard: ReturnType<typeof setTimeout> | undefined;
      const hung = new Promise<never>((_, reject) => {
        guard = setTimeout(
          () => reject(new Error(`the reader thread never sent ${what}`)),
          HANG_GUARD_MS,
        );
      });
      try {
        for (;;) {
          const found = messages.find(matches);
          if (found) return found;
          await Promise.race([arrived.promise, hung]);
        }
      } finally {
        clearTimeout(guard);
      }
    },
    closeControl() {
      closeFd(control.write);
      controlWriteOpen = false;
    },
    [Symbol.dispose]() {
      worker.terminate();
      if (controlWriteOpen) closeFd(control.write);
      for (const fd of [control.read, device.read, device.write]) closeFd(fd);
    },
  };
}

Deno.test("reader thread: after a failed poll(), the control pipe's EOF still ends it", async () => {
  using reader = readerWithFailingPoll(1);
  const ended = await reader.next("the connection's end", (m) => "end" in m);
  assert.deepEqual(ended, { conn: 1, end: "error", errno: 9 });
  reader.closeControl();
  await reader.next("closed", (m) => "closed" in m);
});

Deno.test("reader thread: when not even the control pipe can be polled, it says it ended", async () => {
  using reader = readerWithFailingPoll(1_000_000);
  const ended = await reader.next("the connection's end", (m) => "end" in m);
  assert.deepEqual(ended, { conn: 1, end: "error", errno: 9 });
  await reader.next("closed", (m) => "closed" in m);
});
