/**
 * The README speed table's rows for each benchmark script, from its recorded run
 * (scripts/bench/readme_sources.ts). Columns: scripts/bench/readme_table.ts HEADER. Every ratio
 * is computed here from recorded seconds.
 */
import type { BenchSources, GuestInfo, HostRun, Machine, Step, VmRow } from "./readme_sources.ts";

export interface GeneratedGroup {
  /** How the group's first row starts in the README (`scripts/bench-host.sh` …). */
  key: string;
  /** The record the rows came from, or what is missing. */
  from: string;
  /** Undefined: no recorded run; the README's rows stay. */
  rows?: string[][];
}

const DASH = "—";

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
};

/** "1.2" or "1.2–1.5" over several runs. */
function range(xs: number[], digits: number): string {
  const lo = Math.min(...xs).toFixed(digits);
  const hi = Math.max(...xs).toFixed(digits);
  return lo === hi ? lo : `${lo}–${hi}`;
}

/** "2026-12-01 15:52 UTC, AMD EPYC, 2 cores, kernel 6.18.44, load 5.6–1.7, ec031bb". */
export function machineLabel(m: Machine, extra: string[] = []): string {
  const parts = [`${m.date.slice(0, 10)} ${m.date.slice(11, 16)} UTC`];
  if (m.cpu) parts.push(m.cpu);
  if (m.cores) parts.push(`${m.cores} cores`);
  if (m.kernel) parts.push(`kernel ${m.kernel}`);
  parts.push(...extra);
  if (m.load?.length) parts.push(`load ${m.load.map((l) => l.toFixed(1)).join("→")}`);
  // run_info.ts marks a commit with "+" when lib/ or ffi/ had uncommitted changes.
  if (m.commit) parts.push(m.commit.replace(/\+$/, " + uncommitted changes"));
  return `(${parts.join(", ")})`;
}

/** "TCG guest 6.1.0-57-amd64", and the emulator's translation buffer when the run says it. */
function guestLabel(g: GuestInfo): string[] {
  return [g.guestKernel ? `TCG guest ${g.guestKernel}` : "TCG guest", ...(g.tcg ? [g.tcg] : [])];
}

const ratioCell = (s: number, local: number) => `${(s / local).toFixed(1)}× (${s.toFixed(2)} s)`;

function hostGroup(src: BenchSources): GeneratedGroup {
  const key = "`scripts/bench-host.sh`";
  if (!src.host) return { key, from: "no .cache/bench/host-latest.json" };
  const { record } = src.host;
  const local = record.runs[0].seconds;
  const label = (run: HostRun, first: boolean) => {
    const kind = /remount/.test(run.name)
      ? "remount on the filled disk cache"
      : /no-disk-cache/.test(run.name)
      ? "`--no-disk-cache`"
      : /empty/.test(run.name)
      ? "empty disk cache"
      : run.name;
    if (!first) return `same, ${kind}`;
    const cli = record.cli === "dist" ? ["CLI dist/erofs-oci"] : [];
    return `${key}, FUSE, ${kind} ${machineLabel(record, ["real CPU", ...cli])}`;
  };
  const rows = record.runs.slice(1).map((run, i) => {
    const step = (s: Step) => ratioCell(run.seconds[s], local[s]);
    const g = run.gets;
    return [
      label(run, i === 0),
      `${run.seconds.mount.toFixed(2)} s`,
      step("find"),
      step("python"),
      step("fullRead"),
      g ? `${g.mount} / ${g.find} / ${g.python} / ${g.fullRead}` : DASH,
      run.registryBytes === undefined ? DASH : (run.registryBytes / record.imageBytes).toFixed(2),
      run.serverPeakRssMb === undefined ? DASH : `${run.serverPeakRssMb.toFixed(0)} MB`,
    ];
  });
  return { key, from: src.host.path, rows };
}

function traceGroup(src: BenchSources): GeneratedGroup {
  const key = "`scripts/bench-trace.sh`";
  if (!src.trace) return { key, from: "no .cache/bench/trace-latest.json" };
  const r = src.trace.record;
  const ratio = (runs: { python: number }[]) => median(runs.map((x, i) => x.python / r.local[i]));
  const delay = r.delayMs ? [`+${r.delayMs} ms per request`] : [];
  return {
    key,
    from: src.trace.path,
    rows: [[
      `${key}, FUSE, recorded prefetch ${machineLabel(r, delay)}`,
      `${median(r.traced.map((x) => x.mount)).toFixed(2)} s`,
      DASH,
      `${ratio(r.traced).toFixed(2)}× (no trace: ${ratio(r.untraced).toFixed(2)}×)`,
      DASH,
      DASH,
      DASH,
      DASH,
    ]],
  };
}

function buildGroup(src: BenchSources): GeneratedGroup {
  const key = "`scripts/bench-build.sh`";
  if (!src.build) return { key, from: "no .cache/bench/build-latest.json" };
  const r = src.build.record;
  const ours = r.images.find((i) => i.name === "erofs-oci-build");
  const peer = r.images.find((i) => i.name === "mkfs.erofs");
  if (!ours || !peer) return { key, from: `${src.build.path} lacks an image` };
  const gets = (i: typeof ours) =>
    `${i.gets.mount} / ${i.gets.find} / ${DASH} / ${i.gets.fullRead}`;
  return {
    key,
    from: src.build.path,
    rows: [[
      `${key}, image made by \`erofs-oci build\` ${machineLabel(r)}`,
      DASH,
      `${(ours.seconds.find / peer.seconds.find).toFixed(1)}× of the mkfs.erofs image's (${
        ours.seconds.find.toFixed(2)
      } s)`,
      DASH,
      `${(ours.seconds.fullRead / peer.seconds.fullRead).toFixed(1)}× of it (${
        ours.seconds.fullRead.toFixed(2)
      } s)`,
      `${gets(ours)} (mkfs.erofs: ${gets(peer)})`,
      DASH,
      DASH,
    ]],
  };
}

function vmGroup(src: BenchSources): GeneratedGroup {
  const key = "`deno task bench`";
  const vm = src.vm;
  if (!vm) return { key, from: "no VM run with results.tsv rows under .cache/bench/runs/" };
  const local = vm.rows.find((r) => r.variant === "local-loop")!;
  const peer = vm.rows.find((r) => r.variant === "peer-mount.erofs");
  const ours = vm.rows.filter((r) => r !== local && r !== peer);
  if (!ours.length) return { key, from: `${vm.dir}: no erofs-oci variant` };
  const names: Record<string, string> = {
    "erofs-oci-nbd": "kernel NBD",
    "erofs-oci-nbd-20ms": "+20 ms RTT",
    "erofs-oci-fuse": "FUSE backend",
    "erofs-oci-nbd-local": "kernel NBD from a local copy (no registry)",
    "qemu-nbd-local": "qemu-nbd (a C NBD server) from that copy: the transport's own cost",
  };
  const guest = guestLabel(vm);
  const row = (r: VmRow, i: number) => {
    const what = names[r.variant] ?? r.variant;
    const fetched = r.bytes[0] + r.bytes[1] + r.bytes[2];
    return [
      i === 0
        ? `${key} (\`scripts/bench.sh\`), ${what} in the QEMU VM ${machineLabel(vm, guest)}`
        : `same, ${what}`,
      `${r.mountS.toFixed(1)} s${vmMountContext(i === 0, peer, vm.denoFloorS)}`,
      `${r.findBounded ? ">" : ""}${(r.findS / local.findS).toFixed(1)}× (${r.findS.toFixed(1)} s)`,
      DASH,
      `${r.tarBounded ? ">" : ""}${(r.tarS / local.tarS).toFixed(1)}× (${r.tarS.toFixed(1)} s)`,
      `${r.gets[0]} / ${r.gets[1]} / ${DASH} / ${r.gets[2]}`,
      vm.imageBytes ? (fetched / vm.imageBytes).toFixed(2) : DASH,
      r.hwmKb ? `${(r.hwmKb / 1024).toFixed(0)} MB` : DASH,
    ];
  };
  return { key, from: `${vm.dir}/results.tsv`, rows: ours.map(row) };
}

/** mount.erofs's mount in the same run and, once, what a Deno program takes just to start. */
function vmMountContext(first: boolean, peer: VmRow | undefined, denoFloorS?: number): string {
  const parts = [
    ...(peer ? [`mount.erofs ${peer.mountS.toFixed(1)} s`] : []),
    ...(first && denoFloorS
      ? [`a one-line Deno program starts in ${denoFloorS.toFixed(1)} s`]
      : []),
  ];
  return parts.length ? ` (${parts.join("; ")})` : "";
}

function vmTraceGroup(src: BenchSources): GeneratedGroup {
  const key = "`scripts/bench.sh` trace-python-20ms";
  const t = src.vmTrace;
  if (!t) return { key, from: "no VM run with trace-python.tsv under .cache/bench/runs/" };
  const local = new Map(t.runs.filter((r) => r.kind === "local").map((r) => [r.round, r.python]));
  const of = (kind: string) => t.runs.filter((r) => r.kind === kind && local.has(r.round));
  // Per round against the local run of the same round, as scripts/bench/guest.sh summarizes.
  const ratio = (kind: string) => median(of(kind).map((r) => r.python / local.get(r.round)!));
  const guest = guestLabel(t);
  const untraced = of("untraced").length ? ` (no trace: ${ratio("untraced").toFixed(2)}×)` : "";
  return {
    key,
    from: `${t.dir}/trace-python.tsv`,
    rows: [[
      `${key}: kernel NBD in the QEMU VM at +20 ms RTT, recorded prefetch ${
        machineLabel(t, guest)
      }`,
      `${median(of("traced").map((r) => r.mount)).toFixed(1)} s`,
      DASH,
      `${ratio("traced").toFixed(2)}×${untraced}`,
      DASH,
      DASH,
      DASH,
      DASH,
    ]],
  };
}

function gzipGroup(src: BenchSources): GeneratedGroup {
  const key = "`scripts/bench-gzip-mount.sh`";
  if (!src.gzip) return { key, from: "no .cache/bench/gzip-mount-latest.json" };
  const r = src.gzip.record;
  const steps = (name: string) => r.steps.filter((s) => s.step === name);
  const full = steps("full");
  const curl = new Map(steps("curl").map((s) => [s.run, s]));
  const paired = full.filter((f) => curl.has(f.run));
  if (!paired.length) return { key, from: `${src.gzip.path}: no full read with its curl run` };
  const share = (name: string) => range(steps(name).map((s) => s.fetchedBytes / r.layerBytes), 2);
  const gets = (name: string) => range(steps(name).map((s) => s.gets), 0);
  // The mounts through the pushed index (the index-here steps' mount indexes the layer first).
  const mounts = r.steps.filter((s) => !s.step.startsWith("index-here"))
    .map((s) => s.mountSeconds).filter((s) => s !== undefined);
  const rss = full.map((s) => s.serverPeakRssMb).filter((s) => s !== undefined);
  // CPU of the lazy read = the reader's + the server's (which inflates), against curl | gunzip | tar.
  const cpu = paired.filter((f) => f.cpuSeconds !== undefined && curl.get(f.run)!.cpuSeconds);
  const lazyCpu = (f: (typeof full)[number]) => f.cpuSeconds! + (f.serverCpuSeconds ?? 0);
  const options = [
    r.diskCache ? "disk cache" : "no disk cache",
    ...(r.delayMs ? [`+${r.delayMs} ms per GET`] : []),
  ];
  const firstAndTenth = [
    ...(steps("first").length ? [`first file ${gets("first")}`] : []),
    ...(steps("tenth").length ? [`tenth of the files ${gets("tenth")}`] : []),
  ];
  const sharesOf = [
    ...(steps("first").length ? [`first file ${share("first")}`] : []),
    ...(steps("tenth").length ? [`tenth ${share("tenth")}`] : []),
  ];
  // `mount --index-missing` (the layer pushed without an index), then the full read.
  const indexHere = steps("index-here");
  const hereFull = steps("index-here-full").filter((f) => curl.has(f.run));
  const hereRows = indexHere.length && hereFull.length
    ? [[
      "same, no index anywhere: `mount --index-missing` (indexes the layer here), disk cache",
      `${range(indexHere.map((s) => s.seconds), 1)} s`,
      DASH,
      DASH,
      `${range(hereFull.map((f) => f.seconds / curl.get(f.run)!.seconds), 1)}× (${
        range(hereFull.map((f) => f.seconds), 2)
      } s)`,
      `${gets("index-here")} / — / — / ${gets("index-here-full")}`,
      `${share("index-here")} (mount); ${share("index-here-full")} (read)`,
      DASH,
    ]]
    : [];
  return {
    key,
    from: src.gzip.path,
    rows: [[
      `${key}, same tree as a ${(r.layerBytes / 1e6).toFixed(0)} MB tar.gz layer, FUSE, ${
        options.join(", ")
      }; × of \`curl \\| gunzip \\| tar x\` ${machineLabel(r)}`,
      mounts.length ? `${range(mounts, 1)} s` : DASH,
      DASH,
      DASH,
      `${range(paired.map((f) => f.seconds / curl.get(f.run)!.seconds), 1)}× (${
        range(full.map((f) => f.seconds), 2)
      } s)${
        cpu.length
          ? `, CPU ${range(cpu.map((f) => lazyCpu(f) / curl.get(f.run)!.cpuSeconds!), 2)}×`
          : ""
      }`,
      `— / — / — / ${gets("full")}${firstAndTenth.length ? ` (${firstAndTenth.join(", ")})` : ""}`,
      `${share("full")} (read)${sharesOf.length ? `; ${sharesOf.join(", ")}` : ""}`,
      rss.length ? `${range(rss, 0)} MB` : DASH,
    ], ...hereRows],
  };
}

/** All groups in the README's order; those without a recorded run have no rows. */
export function generatedGroups(src: BenchSources): GeneratedGroup[] {
  return [hostGroup, traceGroup, buildGroup, vmGroup, vmTraceGroup, gzipGroup].map((g) => g(src));
}
