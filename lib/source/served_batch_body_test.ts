import assert from "node:assert/strict";
import { servedBatchBody } from "./served_batch_body.ts";

/** As a worker gets it: rebuilt from its source text, so it must not reach outside itself. */
const rebuilt = new Function(`return (${servedBatchBody.toString()});`)() as typeof servedBatchBody;

for (const [name, make] of [["module", servedBatchBody], ["source text", rebuilt]] as const) {
  Deno.test(`servedBatchBody (${name}): posts after 64 reads`, () => {
    const posted: number[][] = [];
    const batch = make((pairs) => posted.push(pairs));
    for (let i = 0; i < 63; i++) batch.add(i * 4096, 4096);
    assert.equal(posted.length, 0);
    batch.add(63 * 4096, 4096);
    assert.equal(posted.length, 1);
    assert.equal(posted[0].length, 128);
    assert.deepEqual(posted[0].slice(0, 4), [0, 4096, 4096, 4096]);
    batch.flush();
    assert.equal(posted.length, 1, "nothing pending: no message");
  });

  Deno.test(`servedBatchBody (${name}): posts after 1 MiB`, () => {
    const posted: number[][] = [];
    const batch = make((pairs) => posted.push(pairs));
    batch.add(0, 512 << 10);
    batch.add(512 << 10, (512 << 10) - 1);
    assert.equal(posted.length, 0);
    batch.add(1 << 20, 1);
    assert.deepEqual(posted, [[0, 512 << 10, 512 << 10, (512 << 10) - 1, 1 << 20, 1]]);
  });

  Deno.test(`servedBatchBody (${name}): posts once its oldest read is 20 ms old`, () => {
    // Slow reads (3.5 ms each under TCG) must still reach the main thread at a walk's pace.
    const posted: number[][] = [];
    let clockMs = 1000;
    const batch = make((pairs) => posted.push(pairs), () => clockMs);
    for (let i = 0; i < 6; i++) {
      batch.add(i * 4096, 4096);
      clockMs += 3.5;
    }
    assert.equal(posted.length, 0, "the 6th read came 17.5 ms after the first: not yet");
    batch.add(6 * 4096, 4096);
    assert.equal(posted.length, 1, "21 ms after the first with the 7th read: posted");
    assert.equal(posted[0].length, 14);
    clockMs += 100;
    batch.add(7 * 4096, 4096);
    assert.equal(posted.length, 1, "the age counts from the oldest read not yet posted");
    clockMs += 19;
    batch.add(8 * 4096, 4096);
    assert.equal(posted.length, 1);
    clockMs += 1;
    batch.add(9 * 4096, 4096);
    assert.deepEqual(posted[1], [7 * 4096, 4096, 8 * 4096, 4096, 9 * 4096, 4096]);
  });

  Deno.test(`servedBatchBody (${name}): poll waits briefly while reads are pending`, () => {
    const posted: number[][] = [];
    const batch = make((pairs) => posted.push(pairs));
    const timeouts: number[] = [];
    const idle = (timeoutMs: number) => (timeouts.push(timeoutMs), 0);
    assert.equal(batch.poll(idle, 200), 0);
    assert.deepEqual(timeouts, [200], "nothing pending: one poll of the full timeout");

    batch.add(0, 4096);
    timeouts.length = 0;
    const busy = (timeoutMs: number) => (timeouts.push(timeoutMs), 1);
    assert.equal(batch.poll(busy, 200), 1);
    assert.deepEqual(timeouts, [5], "a request came: the batch keeps growing");
    assert.equal(posted.length, 0);

    timeouts.length = 0;
    assert.equal(batch.poll(idle, 200), 0);
    assert.deepEqual(timeouts, [5, 200], "quiet: posted before the long poll");
    assert.deepEqual(posted, [[0, 4096]]);

    batch.add(8192, 4096);
    timeouts.length = 0;
    assert.equal(batch.poll((timeoutMs) => (timeouts.push(timeoutMs), -1), 200), -1);
    assert.deepEqual(timeouts, [5], "an error goes back to the caller");
    assert.equal(posted.length, 1);
  });
}
