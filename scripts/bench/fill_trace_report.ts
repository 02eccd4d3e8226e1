/**
 * Sums up an EROFS_OCI_FILL_TRACE file (lib/source/fill_trace.ts) of a mount server: per demand
 * miss (a read that waited for a fetch) how long it waited, how long its GET took to its first
 * body bytes, from there to its table chunk hashed, and from there to the reader's answer; and
 * the event-loop lags. FROM_EPOCH_MS / TO_EPOCH_MS (optional) keep the events of one step (e.g.
 * a cold python start) only.
 * Usage: deno run -A scripts/bench/fill_trace_report.ts TRACE [FROM_EPOCH_MS TO_EPOCH_MS]
 */
const [path, fromArg, toArg] = Deno.args;
if (!path) throw new Error("usage: fill_trace_report.ts TRACE [FROM_EPOCH_MS TO_EPOCH_MS]");

interface Event {
  ms: number;
  kind: string;
  fields: string[];
}
const all = Deno.readTextFileSync(path).split("\n").map((line) => line.split(" "))
  .filter((f) => f[0] === "fill" && f.length >= 4);
// The mount command writes to the same file (its event-loop lags): the server is the process
// with the most events.
const perPid = new Map<string, number>();
for (const f of all) perPid.set(f[1], (perPid.get(f[1]) ?? 0) + 1);
const pid = [...perPid].sort((a, b) => b[1] - a[1])[0]?.[0];
const lines = all.filter((f) => f[1] === pid).map((f) => f.slice(1));
const originMs = Number(lines.find((f) => f[2] === "origin")?.[3] ?? 0);
const from = fromArg ? Number(fromArg) - originMs : -Infinity;
const to = toArg ? Number(toArg) - originMs : Infinity;
const events: Event[] = lines.filter((f) => f[2] !== "origin")
  .map((f) => ({ ms: Number(f[1]), kind: f[2], fields: f.slice(3) }))
  .filter((e) => e.ms >= from && e.ms <= to)
  .sort((a, b) => a.ms - b.ms);

const TABLE_CHUNK_GUESS = 1 << 20;
interface Get {
  ms: number;
  offset: number;
  length: number;
  firstMs?: number;
  hashedMs: Map<number, number>;
}
const gets: Get[] = [];
for (const e of events) {
  if (e.kind === "v-get") {
    gets.push({ ms: e.ms, offset: +e.fields[0], length: +e.fields[1], hashedMs: new Map() });
  } else if (e.kind === "v-first-bytes") {
    const get = gets.find((g) => g.offset === +e.fields[0] && g.firstMs === undefined);
    if (get) get.firstMs = e.ms;
  } else if (e.kind === "v-chunk-hashed") {
    const at = +e.fields[0] * TABLE_CHUNK_GUESS;
    const get = gets.find((g) =>
      g.offset <= at && at < g.offset + g.length && !g.hashedMs.has(+e.fields[0])
    );
    get?.hashedMs.set(+e.fields[0], e.ms);
  }
}

const waited: number[] = [], ttfb: number[] = [], body: number[] = [], after: number[] = [];
const open = new Map<string, number>();
for (const e of events) {
  const key = `${e.fields[0]} ${e.fields[1]}`;
  if (e.kind === "miss") open.set(key, e.ms);
  if (e.kind !== "miss-ready" || !open.has(key)) continue;
  const startMs = open.get(key)!;
  open.delete(key);
  waited.push(e.ms - startMs);
  const offset = +e.fields[0];
  const get = gets.filter((g) => g.offset <= offset && offset < g.offset + g.length && g.ms <= e.ms)
    .at(-1);
  if (!get?.firstMs) continue;
  ttfb.push(Math.max(0, get.firstMs - Math.max(get.ms, startMs)));
  const hashedMs = get.hashedMs.get(Math.floor(offset / TABLE_CHUNK_GUESS));
  if (hashedMs === undefined) continue;
  body.push(hashedMs - Math.max(get.firstMs, startMs));
  after.push(e.ms - hashedMs);
}
const lags = events.filter((e) => e.kind === "lag").map((e) => +e.fields[0]);

const summary = (values: number[]) => {
  if (!values.length) return "none";
  const sorted = [...values].sort((a, b) => a - b);
  const sum = values.reduce((a, b) => a + b, 0);
  return `n=${values.length} sum ${sum.toFixed(0)} ms, median ${
    sorted[Math.floor(sorted.length / 2)].toFixed(1)
  } ms, max ${sorted.at(-1)!.toFixed(1)} ms`;
};
console.log(`${path}: ${gets.length} GETs of the verified layer`);
console.log(`  demand misses, waited:         ${summary(waited)}`);
console.log(`  their GET to first body bytes: ${summary(ttfb)}`);
console.log(`  first bytes to chunk hashed:   ${summary(body)}`);
console.log(`  hashed to the reader's answer: ${summary(after)}`);
console.log(`  event-loop lags > 6 ms:        ${summary(lags)}`);
