/**
 * Replays the kernel's block reads recorded by the benchmark (trace-*.txt from
 * scripts/bench/guest.sh: tracefs block_rq_issue during the cold find and tar steps) through
 * CachedSource with different chunk / readahead / cache sizes, and prints the underlying reads
 * (= registry GETs) each setting would make, plus a simple time model for the find step, whose
 * reads are synchronous: time ≈ Σ (perRequestMs + bytes / MBps).
 * Usage: deno run --allow-read --allow-env scripts/bench/replay.ts TRACE [perRequestMs=40] [MBps=60]
 */
import { CachedSource } from "../../lib/source/cached.ts";
import type { Source } from "../../lib/source/source.ts";

interface Read {
  offset: number;
  length: number;
}

const ISSUE = /block_rq_issue: (\d+),(\d+) (\S+) (\d+) \(.*?\) (\d+) \+ (\d+)/;
const STEP = /bench-step (\w+)/;

function parseTrace(text: string): Map<string, Read[]> {
  const perDevice = new Map<string, Map<string, Read[]>>();
  let step = "before";
  for (const line of text.split("\n")) {
    const marker = STEP.exec(line);
    if (marker) {
      step = marker[1];
      continue;
    }
    const m = ISSUE.exec(line);
    if (!m || !m[3].includes("R")) continue;
    const device = `${m[1]},${m[2]}`;
    const steps = perDevice.get(device) ?? new Map<string, Read[]>();
    perDevice.set(device, steps);
    const reads = steps.get(step) ?? [];
    steps.set(step, reads);
    reads.push({ offset: Number(m[5]) * 512, length: Number(m[6]) * 512 });
  }
  // The device of the benchmark mount is the one with the most reads.
  let best = new Map<string, Read[]>();
  let bestCount = -1;
  for (const steps of perDevice.values()) {
    const count = [...steps.values()].reduce((n, r) => n + r.length, 0);
    if (count > bestCount) [best, bestCount] = [steps, count];
  }
  return best;
}

/** A source of `size` zero bytes that records every read. */
class RecordingSource implements Source {
  readonly reads: Read[] = [];
  constructor(readonly size: number) {}
  read(offset: number, length: number): Promise<Uint8Array> {
    this.reads.push({ offset, length });
    return Promise.resolve(new Uint8Array(length));
  }
}

interface Setting {
  chunkBytes: number;
  cacheBytes: number;
  maxReadaheadBytes: number;
}

async function replay(steps: Map<string, Read[]>, size: number, setting: Setting) {
  const inner = new RecordingSource(size);
  const cache = new CachedSource(inner, setting);
  const out: Record<string, { fetches: number; bytes: number; requests: number }> = {};
  for (const step of ["find", "tar"]) {
    const reads = steps.get(step) ?? [];
    const before = inner.reads.length;
    for (const r of reads) {
      if (r.offset + r.length > size) continue;
      await cache.read(r.offset, r.length);
    }
    const made = inner.reads.slice(before);
    out[step] = {
      fetches: made.length,
      bytes: made.reduce((n, r) => n + r.length, 0),
      requests: reads.length,
    };
  }
  await cache.close();
  return out;
}

if (import.meta.main) {
  const [path, perRequestArg, rateArg] = Deno.args;
  if (!path) {
    console.error("usage: replay.ts TRACE [perRequestMs] [MBps]");
    Deno.exit(2);
  }
  const perRequestMs = Number(perRequestArg ?? 40);
  const mbps = Number(rateArg ?? 60);
  const steps = parseTrace(Deno.readTextFileSync(path));
  const all = [...steps.values()].flat();
  const size = Math.max(...all.map((r) => r.offset + r.length));
  for (const [step, reads] of steps) {
    const bytes = reads.reduce((n, r) => n + r.length, 0);
    console.log(`${step}: ${reads.length} kernel reads, ${(bytes / 1e6).toFixed(1)} MB`);
  }
  const MiB = 1 << 20;
  const KiB = 1 << 10;
  const list = (name: string, fallback: number[]) =>
    Deno.env.get(name)?.split(",").map((x) => Number(x) * KiB) ?? fallback;
  // REPLAY_CHUNK_KIB / REPLAY_CACHE_KIB: comma-separated sizes to try.
  const chunkSizes = list("REPLAY_CHUNK_KIB", [256 * KiB, 512 * KiB, MiB, 2 * MiB, 4 * MiB]);
  const cacheSizes = list("REPLAY_CACHE_KIB", [64 * MiB]);
  console.log(
    `\nchunk     readahead  cache   | find GETs  MB    model s | tar GETs  MB`,
  );
  for (const chunkBytes of chunkSizes) {
    for (const maxReadaheadBytes of [chunkBytes, 4 * MiB, 8 * MiB, 16 * MiB]) {
      if (maxReadaheadBytes < chunkBytes) continue;
      for (const cacheBytes of cacheSizes) {
        const r = await replay(steps, size, { chunkBytes, cacheBytes, maxReadaheadBytes });
        const model = r.find.fetches * perRequestMs / 1000 + r.find.bytes / 1e6 / mbps;
        console.log(
          `${(chunkBytes / KiB).toString().padStart(5)} KiB ${
            (maxReadaheadBytes / KiB).toString().padStart(6)
          } KiB ${(cacheBytes / MiB).toString().padStart(3)} MiB | ${
            r.find.fetches.toString().padStart(6)
          } ${(r.find.bytes / 1e6).toFixed(1).padStart(6)} ${model.toFixed(2).padStart(7)} | ${
            r.tar.fetches.toString().padStart(6)
          } ${(r.tar.bytes / 1e6).toFixed(1).padStart(6)}`,
        );
      }
    }
  }
}
