/**
 * Sums up a cold find's scheduler trace from the VM benchmark (`BENCH_SCHED_TRACE=1`,
 * trace-NAME.sched.txt): per READ of the device, its service time (block_rq_issue →
 * block_rq_complete) and the time until the next request (the reader's own work and wake-up);
 * which threads completed requests; and, for each request served slower than SLOW_MS, what ran
 * on each vCPU while it waited (how a 10 s NBD stall was traced to the workqueue rescuer).
 * Usage: deno run --allow-read scripts/bench/sched_trace_report.ts TRACE [MAJOR,MINOR] [SLOW_MS]
 * (device default 43,0: nbd0; the loop device is 7,0).
 */
const [path, device = "43,0", slowArg = "5"] = Deno.args;
if (!path) {
  console.error("usage: sched_trace_report.ts TRACE [MAJOR,MINOR] [SLOW_MS]");
  Deno.exit(2);
}
const slowMs = Number(slowArg);

interface TraceEvent {
  task: string;
  cpu: string;
  seconds: number;
  kind: string;
  detail: string;
}

const events: TraceEvent[] = [];
for (const line of Deno.readTextFileSync(path).split("\n")) {
  const match = /^\s*(.+?)\s+\[(\d+)\]\s+\S+\s+([\d.]+):\s+(\w+):\s*(.*)$/.exec(line);
  if (match) {
    events.push({
      task: match[1],
      cpu: match[2],
      seconds: Number(match[3]),
      kind: match[4],
      detail: match[5],
    });
  }
}

const isRead = (event: TraceEvent, kind: string) =>
  event.kind === kind && event.detail.startsWith(`${device} R`);
const sectorOf = (event: TraceEvent) => /\) (\d+) \+/.exec(event.detail)?.[1] ?? "";

const issues = events.flatMap((event, at) =>
  isRead(event, "block_rq_issue") ? [{ seconds: event.seconds, sector: sectorOf(event), at }] : []
);
const completions = new Map<string, number[]>();
const completers = new Map<string, number>();
for (const event of events) {
  if (!isRead(event, "block_rq_complete")) continue;
  const sector = sectorOf(event);
  completions.set(sector, [...(completions.get(sector) ?? []), event.seconds]);
  completers.set(event.task, (completers.get(event.task) ?? 0) + 1);
}

/** Milliseconds each task ran on each vCPU between events[from] and `untilSeconds`. */
function ranBetween(from: number, untilSeconds: number): Map<string, number> {
  const ran = new Map<string, number>();
  const running: Record<string, { task: string; since: number }> = {};
  for (let i = from; i < events.length && events[i].seconds <= untilSeconds; i++) {
    const event = events[i];
    if (event.kind !== "sched_switch") continue;
    const previous = running[event.cpu];
    if (previous) {
      const key = `cpu${event.cpu} ${previous.task}`;
      ran.set(key, (ran.get(key) ?? 0) + (event.seconds - previous.since) * 1000);
    }
    const next = /next_comm=(.+?) next_pid=(\d+)/.exec(event.detail);
    if (next) running[event.cpu] = { task: `${next[1]}/${next[2]}`, since: event.seconds };
  }
  return ran;
}

/** Adds `ran` into `sums`, by task (both vCPUs together). */
function addRan(sums: Map<string, number>, ran: Map<string, number>): void {
  for (const [key, ms] of ran) {
    const task = key.slice(key.indexOf(" ") + 1);
    sums.set(task, (sums.get(task) ?? 0) + ms);
  }
}

const serviceMs: number[] = [];
const untilNextMs: number[] = [];
const slow: string[] = [];
const ranWhileServed = new Map<string, number>();
const ranBeforeNext = new Map<string, number>();
issues.forEach((issue, k) => {
  const completed = completions.get(issue.sector)?.find((seconds) => seconds >= issue.seconds);
  if (completed === undefined) return;
  const ms = (completed - issue.seconds) * 1000;
  serviceMs.push(ms);
  const ranServing = ranBetween(issue.at, completed);
  addRan(ranWhileServed, ranServing);
  if (k + 1 < issues.length) {
    untilNextMs.push((issues[k + 1].seconds - completed) * 1000);
    const completedAt = events.findIndex((event, i) => i > issue.at && event.seconds >= completed);
    addRan(ranBeforeNext, ranBetween(completedAt, issues[k + 1].seconds));
  }
  if (ms <= slowMs) return;
  const ran = [...ranServing].sort((a, b) => b[1] - a[1]).slice(0, 6);
  slow.push(
    `${issue.seconds.toFixed(6)} s, sector ${issue.sector}: ${ms.toFixed(2)} ms; ran: ` +
      ran.map(([task, taskMs]) => `${task} ${taskMs.toFixed(2)} ms`).join(", "),
  );
});

function quantile(values: number[], q: number): string {
  if (values.length === 0) return "-";
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(q * (sorted.length - 1))].toFixed(2);
}
const total = (values: number[]) => values.reduce((sum, value) => sum + value, 0).toFixed(0);

console.log(`device ${device}: ${serviceMs.length} READs completed of ${issues.length} issued`);
console.log(
  `issue -> complete: median ${quantile(serviceMs, 0.5)} ms, p90 ${
    quantile(serviceMs, 0.9)
  } ms, total ${total(serviceMs)} ms`,
);
console.log(
  `complete -> next issue: median ${quantile(untilNextMs, 0.5)} ms, p90 ${
    quantile(untilNextMs, 0.9)
  } ms, total ${total(untilNextMs)} ms`,
);
console.log(
  `completed by: ${[...completers].map(([task, count]) => `${task} ${count}`).join(", ")}`,
);
/** The tasks that ran longest (vCPU ms summed over both vCPUs) in `sums`. */
const topTasks = (sums: Map<string, number>) =>
  [...sums].sort((a, b) => b[1] - a[1]).slice(0, 8).map(([task, ms]) => `${task} ${ms.toFixed(0)}`)
    .join(", ");
console.log(`ran while served (vCPU ms): ${topTasks(ranWhileServed)}`);
console.log(`ran until the next issue (vCPU ms): ${topTasks(ranBeforeNext)}`);
if (slow.length) console.log(`served slower than ${slowMs} ms (${slow.length}):`);
for (const row of slow.slice(0, 30)) console.log(`  ${row}`);
