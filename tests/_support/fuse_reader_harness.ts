/**
 * Worker module for lib/fuse/reader_worker_test.ts: runs the FUSE reader body with the real
 * libc except poll(), which fails (EBADF) as many times as the first message's Int32 says,
 * counting from the first poll of a set holding a connection.
 */
import { errno, libc, type LibcSymbols } from "../../ffi/libc.ts";
import { fuseReaderBody } from "../../lib/fuse/reader_worker.ts";
import { directReaderBody } from "../../lib/source/direct_read_body.ts";
import { servedBatchBody } from "../../lib/source/served_batch_body.ts";
import { activityRecorderBody } from "../../lib/source/read_activity_cell.ts";
import { walkClockBody } from "../../lib/source/walk_clock_body.ts";

const EBADF = 9;

const scope = self as unknown as {
  onmessage: ((event: MessageEvent<SharedArrayBuffer>) => void) | null;
};

scope.onmessage = (event) => {
  const failuresLeft = new Int32Array(event.data);
  const real = libc();
  let armed = false;
  let failed = false;
  const poll: LibcSymbols["poll"] = (fds, count, timeoutMs) => {
    if (count > 1n) armed = true;
    if (armed && Atomics.load(failuresLeft, 0) > 0) {
      Atomics.sub(failuresLeft, 0, 1);
      failed = true;
      return -1;
    }
    return real.poll(fds, count, timeoutMs);
  };
  const symbols = new Proxy(real, {
    get: (target, name) => name === "poll" ? poll : Reflect.get(target, name),
  });
  const errnoAfterFake = () => {
    if (!failed) return errno();
    failed = false;
    return EBADF;
  };
  // The body takes over onmessage: the commands that follow are its own.
  fuseReaderBody(symbols, errnoAfterFake, null, {
    directReader: directReaderBody,
    servedBatch: servedBatchBody,
    walkClock: walkClockBody,
    activityRecorder: activityRecorderBody,
  });
};
