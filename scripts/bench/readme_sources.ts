/**
 * Reads the latest recorded run of each benchmark script from a cache dir (.cache/bench/) for
 * scripts/bench/readme_table.ts (of the VM benchmark: the latest not limited to chosen variants).
 * Missing or unreadable records are `undefined`, never an error: the table keeps that script's
 * row as it was.
 */

/** Machine facts as recorded (older records have only some of them). */
export interface Machine {
  date: string;
  cpu?: string;
  cores?: number;
  kernel?: string;
  /** 1-minute load at start and end, when recorded. */
  load?: number[];
  commit?: string;
}

export type Step = "mount" | "find" | "python" | "fullRead";

export interface HostRun {
  name: string;
  seconds: Record<Step, number>;
  gets?: Record<Step, number>;
  /** Body bytes the registry sent for the layer (access log), all steps. */
  registryBytes?: number;
  serverPeakRssMb?: number;
}

export interface HostRecord extends Machine {
  cli?: string;
  imageBytes: number;
  runs: HostRun[];
}

export interface TraceRecord extends Machine {
  delayMs?: number;
  local: number[];
  untraced: { mount: number; python: number }[];
  traced: { mount: number; python: number }[];
}

/** scripts/bench_build_gets.ts: one entry per image (mkfs.erofs, erofs-oci-build). */
export interface BuildRecord extends Machine {
  images: {
    name: string;
    gets: { mount: number; find: number; fullRead: number };
    seconds: { find: number; fullRead: number };
  }[];
}

/** One measured step of a run of scripts/bench_gzip_mount.ts. */
export interface GzipStep {
  run: number;
  step: string;
  seconds: number;
  gets: number;
  fetchedBytes: number;
  /** The reader's CPU (tar, wc; curl, gunzip, tar for the `curl` step). */
  cpuSeconds?: number;
  /** The mount's server processes' CPU during the step (they inflate the gzip stream). */
  serverCpuSeconds?: number;
  mountSeconds?: number;
  serverPeakRssMb?: number;
}

/** scripts/bench_gzip_mount.ts: one entry per measured step of each run. */
export interface GzipRecord extends Machine {
  layerBytes: number;
  diskCache: boolean;
  delayMs: number;
  steps: GzipStep[];
}

/** One results.tsv row of the VM benchmark (columns: scripts/bench/report.ts). */
export interface VmRow {
  variant: string;
  mountS: number;
  findS: number;
  tarS: number;
  tarBounded: boolean;
  findBounded: boolean;
  gets: [number, number, number];
  bytes: [number, number, number];
  hwmKb: number;
}

/** What a VM run says of its guest: kernel, and the emulator's translation buffer (host.txt). */
export interface GuestInfo {
  guestKernel?: string;
  tcg?: string;
}

export interface VmRecord extends Machine, GuestInfo {
  dir: string;
  imageBytes?: number;
  /** Best of 3 starts of a one-line Deno program in the guest: the floor of any Deno mount. */
  denoFloorS?: number;
  rows: VmRow[];
}

export interface VmTraceRecord extends Machine, GuestInfo {
  dir: string;
  /** trace-python.tsv: kind (local/untraced/traced), round, mount s, python s. */
  runs: { kind: string; round: number; mount: number; python: number }[];
}

export interface BenchSources {
  host?: { path: string; record: HostRecord };
  trace?: { path: string; record: TraceRecord };
  build?: { path: string; record: BuildRecord };
  gzip?: { path: string; record: GzipRecord };
  vm?: VmRecord;
  vmTrace?: VmTraceRecord;
}

function readJson<T>(path: string): { path: string; record: T } | undefined {
  try {
    return { path, record: JSON.parse(Deno.readTextFileSync(path)) as T };
  } catch {
    return undefined;
  }
}

function readText(path: string): string | undefined {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return undefined;
  }
}

function tsvLines(text: string | undefined): string[][] {
  return (text ?? "").split("\n").filter((l) => l.trim() && !l.startsWith("#")).map((l) =>
    l.split("\t")
  );
}

/** host.txt of a VM run: date, host (CPU, cores, kernel), loads, code. */
function vmMachine(
  dir: string,
): Machine & GuestInfo & { imageBytes?: number; denoFloorS?: number } {
  const host = readText(`${dir}/host.txt`) ?? "";
  const field = (name: string) => new RegExp(`^${name}: (.*)$`, "m").exec(host)?.[1];
  const machine = field("host")?.split(", ") ?? [];
  const load1 = (name: string) => {
    const v = field(name)?.split(" ")[0];
    return v === undefined ? undefined : Number(v);
  };
  const loads = [load1("load before"), load1("load after")].filter((l) => l !== undefined);
  const meta = readText(`${dir}/meta.txt`) ?? "";
  const stamp = dir.split("/").at(-1) ?? "";
  const fromStamp = /^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$/.exec(stamp);
  const date = field("date")?.replace(" UTC", "").replace(" ", "T") ??
    (fromStamp ? `${fromStamp.slice(1, 4).join("-")}T${fromStamp.slice(4, 7).join(":")}` : "?");
  return {
    date: `${date}Z`,
    cpu: machine[0],
    cores: machine[1] ? Number(machine[1].split(" ")[0]) : undefined,
    kernel: machine[2]?.replace(/^kernel /, ""),
    load: loads.length ? loads : undefined,
    commit: /HEAD (\w+)/.exec(field("code") ?? "")?.[1],
    guestKernel: /kernel=(\S+)/.exec(meta)?.[1],
    tcg: field("tcg"),
    imageBytes: Number(/image_bytes=(\d+)/.exec(meta)?.[1]) || undefined,
    denoFloorS: Number(/deno_floor_s=([\d.]+)/.exec(meta)?.[1]) || undefined,
  };
}

function vmRow(f: string[]): VmRow | undefined {
  if (f[1] === "FAILED" || f.length < 18) return undefined;
  const n = (i: number) => Number(f[i]);
  return {
    variant: f[0],
    mountS: n(1),
    findS: n(2),
    tarS: n(4),
    tarBounded: f[6] === "1",
    findBounded: f[20] === "1",
    gets: [n(7), n(9), n(11)],
    bytes: [n(8), n(10), n(12)],
    hwmKb: n(17),
  };
}

/** Run dirs under runs/, newest first (their names are UTC stamps). */
function runDirs(cache: string): string[] {
  try {
    return [...Deno.readDirSync(`${cache}/runs`)].filter((e) => e.isDirectory).map((e) =>
      `${cache}/runs/${e.name}`
    ).sort().reverse();
  } catch {
    return [];
  }
}

/**
 * Whether the run measured a chosen subset of the variants (BENCH_VARIANTS set: an A/B or a
 * diagnostic, scripts/vm/run.sh writes it into the run's main.sh), not the benchmark as a user
 * runs it: the README's table skips those.
 */
function chosenVariants(dir: string): boolean {
  return /^export BENCH_VARIANTS=/m.test(readText(`${dir}/main.sh`) ?? "");
}

function latestVm(cache: string): VmRecord | undefined {
  for (const dir of runDirs(cache)) {
    if (chosenVariants(dir)) continue;
    const rows = tsvLines(readText(`${dir}/results.tsv`)).map(vmRow).filter((r) => r !== undefined);
    if (!rows.some((r) => r.variant === "local-loop") || rows.length < 2) continue;
    return { dir, ...vmMachine(dir), rows };
  }
  return undefined;
}

function latestVmTrace(cache: string): VmTraceRecord | undefined {
  for (const dir of runDirs(cache)) {
    if (chosenVariants(dir)) continue;
    const runs = tsvLines(readText(`${dir}/trace-python.tsv`)).map((f) => ({
      kind: f[0],
      round: Number(f[1]),
      mount: Number(f[2]),
      python: Number(f[3]),
    })).filter((r) => Number.isFinite(r.python));
    if (!runs.some((r) => r.kind === "traced") || !runs.some((r) => r.kind === "local")) continue;
    return { dir, ...vmMachine(dir), runs };
  }
  return undefined;
}

export function readSources(cache: string): BenchSources {
  return {
    host: readJson<HostRecord>(`${cache}/host-latest.json`),
    trace: readJson<TraceRecord>(`${cache}/trace-latest.json`),
    build: readJson<BuildRecord>(`${cache}/build-latest.json`),
    gzip: readJson<GzipRecord>(`${cache}/gzip-mount-latest.json`),
    vm: latestVm(cache),
    vmTrace: latestVmTrace(cache),
  };
}
