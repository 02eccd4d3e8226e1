/**
 * Run with `--v8-flags=--expose-gc`: one connection whose READ waits for the byte budget while
 * its client trickles a byte per read() until the reader's buffer is full (~256 Ki reads).
 * Prints the server's heap growth as JSON: the wait must cost the same however many reads it
 * sees (each once kept ~300 B alive).
 */
import { serveTransmission } from "../../lib/nbd/transmission.ts";
import { InflightBudget } from "../../lib/nbd/budget.ts";
import { NBD_CMD_READ } from "../../lib/nbd/protocol.ts";
import { encodeRequest } from "./nbd_client.ts";
import { MemorySource, patternBytes } from "./memory_source.ts";

const MiB = 1024 * 1024;
const gc = (globalThis as unknown as { gc: () => void }).gc;
const budget = new InflightBudget(2 * MiB, 2); // 512 KiB guaranteed each, 1 MiB shared
await budget.account().acquire(1536 * 1024); // another connection holds its share and the pool
const account = budget.account();

const request = encodeRequest(NBD_CMD_READ, 1n, 0, MiB); // needs the pool: waits
const TRICKLED = 256 * 1024 - 28;
let fed = -1;
let closed = false;
const conn = {
  async read(p: Uint8Array): Promise<number | null> {
    if (closed) throw new Error("closed");
    if (fed < 0) {
      p.set(request);
      fed = 0;
      return request.length;
    }
    if (fed >= TRICKLED) return await new Promise<null>(() => {}); // then silent
    await Promise.resolve();
    p[0] = 0;
    fed++;
    return 1;
  },
  write: (p: Uint8Array) => Promise.resolve(p.length),
  close() {
    closed = true;
  },
};
gc();
const before = Deno.memoryUsage().heapUsed;
serveTransmission(conn, new MemorySource(patternBytes(4 * MiB)), {
  readOnly: true,
  budget: account,
});
while (fed < TRICKLED) await new Promise((r) => setTimeout(r, 100));
await new Promise((r) => setTimeout(r, 200));
gc();
console.log(JSON.stringify({ reads: fed, heapGrowthBytes: Deno.memoryUsage().heapUsed - before }));
Deno.exit(0);
