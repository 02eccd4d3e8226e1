/**
 * Where the time of each trace-python-20ms run went (scripts/bench/guest.sh keeps the raw
 * material in RUN_DIR/trace-python/KIND-RUN.*): block requests python caused (count, bytes,
 * latency from block_rq_issue to block_rq_complete), CPU of the guest and of the mount server
 * while python ran, when the server's trace prefetch and metadata prefetch finished relative to
 * python's start, and the layer's fetch counters after python. Prints Markdown.
 * Usage: deno run --allow-read scripts/bench/trace_python_breakdown.ts RUN_DIR
 */

const TICKS_PER_S = 100;

interface Run {
  name: string;
  fields: Map<string, string[]>;
}

function readRuns(dir: string): Run[] {
  const runs: Run[] = [];
  for (const entry of Deno.readDirSync(dir)) {
    const m = /^(local|untraced|traced)-(\d+)\.txt$/.exec(entry.name);
    if (!m) continue;
    const fields = new Map<string, string[]>();
    for (const line of Deno.readTextFileSync(`${dir}/${entry.name}`).split("\n")) {
      const parts = line.trim().split(/\s+/);
      if (parts[0]) fields.set(parts[0], parts.slice(1));
    }
    runs.push({ name: `${m[1]}-${m[2]}`, fields });
  }
  const order = ["local", "untraced", "traced"];
  return runs.sort((a, b) => {
    const [ka, ra] = a.name.split("-"), [kb, rb] = b.name.split("-");
    return Number(ra) - Number(rb) || order.indexOf(ka) - order.indexOf(kb);
  });
}

/** Block reads python caused: count, bytes, latencies (s), from the tracefs text. */
function blockReads(path: string) {
  let text = "";
  try {
    text = Deno.readTextFileSync(path);
  } catch {
    return undefined;
  }
  const issued = new Map<string, { t: number; bytes: number }>();
  const latencies: number[] = [];
  let bytes = 0;
  const re =
    /(\d+\.\d+): block_rq_(issue|complete): (\d+,\d+) (\S+) (?:\d+ )?\(.*?\) (\d+) \+ (\d+)/;
  for (const line of text.split("\n")) {
    const m = re.exec(line);
    if (!m || !m[4].includes("R")) continue;
    const key = `${m[3]}:${m[5]}`;
    if (m[2] === "issue") issued.set(key, { t: Number(m[1]), bytes: Number(m[6]) * 512 });
    else {
      const start = issued.get(key);
      if (!start) continue;
      issued.delete(key);
      latencies.push(Number(m[1]) - start.t);
      bytes += start.bytes;
    }
  }
  latencies.sort((a, b) => a - b);
  return { count: latencies.length, bytes, latencies };
}

/** Seconds from python's start (epoch s) to server log lines matching `pattern`. */
function logTimes(path: string, pythonStart: number, pattern: RegExp): number[] {
  let text = "";
  try {
    text = Deno.readTextFileSync(path);
  } catch {
    return [];
  }
  const out: number[] = [];
  for (const line of text.split("\n")) {
    let time: string | undefined, msg = line;
    if (line.startsWith("{")) {
      try {
        const record = JSON.parse(line);
        time = record.time;
        msg = record.msg ?? "";
      } catch { /* not JSON */ }
    } else {
      const parts = line.split(" ");
      time = parts[0];
      msg = parts.slice(2).join(" "); // after "TIME LEVEL"
    }
    if (time && pattern.test(msg)) out.push(Date.parse(time) / 1000 - pythonStart);
  }
  return out;
}

const at = (xs: number[], q: number) =>
  xs.length ? xs[Math.min(xs.length - 1, Math.floor(xs.length * q))] : NaN;
const s = (x: number | undefined, digits = 1) =>
  x === undefined || Number.isNaN(x) ? "—" : `${x >= 0 ? "" : "−"}${Math.abs(x).toFixed(digits)} s`;

function main(runDir: string): void {
  const dir = `${runDir}/trace-python`;
  const runs = readRuns(dir);
  console.log(
    "| run | python | mount → python | block reads (bytes) | read latency median / p90 / sum |" +
      " guest CPU busy | server CPU | trace prefetch done | metadata prefetch done |" +
      " fetches / MB after python |",
  );
  console.log("|---|---|---|---|---|---|---|---|---|---|");
  for (const run of runs) {
    const num = (key: string, i = 0) => Number(run.fields.get(key)?.[i]);
    const pythonStart = num("python_start");
    const python = num("python_end") - pythonStart;
    const gap = pythonStart - num("mount_return");
    const blk = blockReads(`${dir}/${run.name}.blk.txt`);
    const busy = (num("cpu_busy_total_after") - num("cpu_busy_total_before")) /
      Math.max(1, num("cpu_busy_total_after", 1) - num("cpu_busy_total_before", 1));
    const server = run.fields.get("server_pid");
    const serverTicks = server && server[0] !== "-" ? Number(server[2]) : undefined;
    const log = `${dir}/${run.name}.server.log`;
    const traceDone = logTimes(log, pythonStart, /^trace prefetch (done|stopped)/)[0];
    const metaDone = logTimes(log, pythonStart, /metadata prefetch, /).at(-1);
    let fetched = "—";
    try {
      const list = JSON.parse(Deno.readTextFileSync(`${dir}/${run.name}.list1.json`));
      const layer = list[0]?.layers?.[0];
      if (layer) fetched = `${layer.fetches} / ${(layer.bytesFetched / 1e6).toFixed(1)}`;
    } catch { /* local run: no server */ }
    console.log(
      `| ${run.name} | ${s(python)} | ${s(gap)} | ${
        blk ? `${blk.count} (${(blk.bytes / 1e6).toFixed(2)} MB)` : "—"
      } | ${
        blk
          ? `${(at(blk.latencies, 0.5) * 1000).toFixed(1)} ms / ${
            (at(blk.latencies, 0.9) * 1000).toFixed(0)
          } ms / ${s(blk.latencies.reduce((a, b) => a + b, 0))}`
          : "—"
      } | ${(busy * 100).toFixed(0)}% | ${
        serverTicks === undefined ? "—" : s(serverTicks / TICKS_PER_S)
      } | ${s(traceDone)} | ${s(metaDone)} | ${fetched} |`,
    );
  }
  console.log(
    "\nTimes relative to python's start (negative: before it). Guest CPU busy: of both vCPUs " +
      "while python ran. Server CPU: the mount server's user+system time while python ran.",
  );
}

main(Deno.args[0] ?? ".");
