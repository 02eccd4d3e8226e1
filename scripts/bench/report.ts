/**
 * Turns the guest's results.tsv (scripts/bench/guest.sh) into the benchmark table (Markdown).
 * Usage: deno run --allow-read scripts/bench/report.ts RUN_DIR
 */

interface Row {
  variant: string;
  failed: boolean;
  mountS: number;
  findS: number;
  findEntries: number;
  tarS: number;
  tarBytes: number;
  /** The full read was stopped by its time bound: tarS/tarBytes are partial. */
  tarBounded: boolean;
  /** The find was stopped by its time bound. */
  findBounded: boolean;
  /** Server RSS right after the mount, before any file was read. */
  rssMountKb: number;
  getsMount: number;
  bytesMount: number;
  getsFind: number;
  bytesFind: number;
  getsTar: number;
  bytesTar: number;
  devReadMount: number;
  devReadFind: number;
  devReadTar: number;
  rssKb: number;
  hwmKb: number;
  listFetched?: number;
  listRequested?: number;
}

function parseRow(line: string): Row {
  const f = line.split("\t");
  const n = (i: number) => Number(f[i]);
  const opt = (i: number) => (f[i] === undefined || f[i] === "-" ? undefined : Number(f[i]));
  if (f[1] === "FAILED") {
    return { variant: f[0], failed: true } as Row;
  }
  return {
    variant: f[0],
    failed: false,
    mountS: n(1),
    findS: n(2),
    findEntries: n(3),
    tarS: n(4),
    tarBytes: n(5),
    tarBounded: f[6] === "1",
    findBounded: f[20] === "1",
    rssMountKb: Number(f[21] ?? 0),
    getsMount: n(7),
    bytesMount: n(8),
    getsFind: n(9),
    bytesFind: n(10),
    getsTar: n(11),
    bytesTar: n(12),
    devReadMount: n(13),
    devReadFind: n(14),
    devReadTar: n(15),
    rssKb: n(16),
    hwmKb: n(17),
    listFetched: opt(18),
    listRequested: opt(19),
  };
}

const fixed = (x: number, digits = 1) => Number.isFinite(x) ? x.toFixed(digits) : "-";
const mb = (bytes: number) => bytes / 1e6;

function table(rows: Row[]): string {
  const local = rows.find((r) => r.variant === "local-loop" && !r.failed);
  const header = [
    "variant",
    "mount s",
    "cold find s",
    "cold tar s",
    "MB/s",
    "HTTP GETs",
    "fetched/read",
    "RSS MB",
    "vs local loop (find, tar)",
  ];
  const lines = [
    `| ${header.join(" | ")} |`,
    `| ${header.map(() => "---").join(" | ")} |`,
  ];
  for (const r of rows) {
    if (r.failed) {
      lines.push(`| ${r.variant} | FAILED | | | | | | | |`);
      continue;
    }
    const rate = mb(r.tarBytes) / r.tarS;
    const isLocal = r.variant === "local-loop";
    const gets = r.getsMount + r.getsFind + r.getsTar;
    const fetched = r.bytesMount + r.bytesFind + r.bytesTar;
    const read = r.devReadMount + r.devReadFind + r.devReadTar;
    // A bounded read is projected to the full size at the rate it reached.
    const tarS = r.tarBounded && local ? local.tarBytes / (r.tarBytes / r.tarS) : r.tarS;
    const mark = r.tarBounded ? "~" : "";
    const ratio = local && !isLocal
      ? `${r.findBounded ? ">" : ""}${fixed(r.findS / local.findS)}×, ${mark}${
        fixed(tarS / local.tarS)
      }×`
      : "1×, 1×";
    lines.push(
      `| ${
        [
          r.variant,
          fixed(r.mountS, 2),
          r.findBounded ? `>${fixed(r.findS, 0)} (stopped)` : fixed(r.findS, 1),
          r.tarBounded ? `>${fixed(r.tarS, 0)} (stopped; ~${fixed(tarS, 0)})` : fixed(r.tarS, 1),
          fixed(rate, 1),
          isLocal ? "-" : `${gets} (${r.getsMount}+${r.getsFind}+${r.getsTar})`,
          isLocal ? "-" : fixed(fetched / read, 2),
          r.rssKb ? `${fixed(r.rssKb / 1024, 0)} (peak ${fixed(r.hwmKb / 1024, 0)})` : "-",
          ratio,
        ].join(" | ")
      } |`,
    );
  }
  return lines.join("\n");
}

function details(rows: Row[], getSizes: string[], queue: string[]): string {
  const out: string[] = [];
  for (const r of rows) {
    if (r.failed) continue;
    const gets = r.getsMount + r.getsFind + r.getsTar;
    const fetched = r.bytesMount + r.bytesFind + r.bytesTar;
    out.push(
      `${r.variant}: ${r.findEntries} entries, tar ${fixed(mb(r.tarBytes))} MB; ` +
        `device read mount/find/tar ${fixed(mb(r.devReadMount))}/${fixed(mb(r.devReadFind))}/` +
        `${fixed(mb(r.devReadTar))} MB; registry sent ${fixed(mb(fetched))} MB in ${gets} GETs` +
        (gets ? ` (mean ${fixed(fetched / gets / 1024, 0)} KiB)` : "") +
        (r.rssMountKb ? `; server RSS after mount ${fixed(r.rssMountKb / 1024, 0)} MB` : "") +
        (r.listFetched !== undefined
          ? `; list --json bytesFetched ${fixed(mb(r.listFetched))} MB, bytesRequested ${
            fixed(mb(r.listRequested ?? NaN))
          } MB`
          : ""),
    );
    for (const step of ["find", "tar"]) {
      const sizes = getSizes.filter((l) => l.startsWith(`${r.variant}\t${step}\t`));
      const shown = sizes.slice(0, 6).map((l) => {
        const [, , bytes, count] = l.split("\t");
        return `${count}× ${fixed(Number(bytes) / 1024, 0)} KiB`;
      });
      const more = sizes.length > 6 ? `, … (${sizes.length} sizes)` : "";
      if (shown.length) out.push(`  ${step} GET sizes (most common): ${shown.join(", ")}${more}`);
    }
    const q = queue.filter((l) => l.startsWith(`${r.variant}\t`)).map((l) =>
      l.split("\t").slice(1).join("=")
    );
    if (q.length) out.push(`  block queue: ${q.join(", ")}`);
  }
  return out.join("\n");
}

function readLines(path: string): string[] {
  try {
    return Deno.readTextFileSync(path).split("\n").filter((l) => l.trim() !== "");
  } catch {
    return [];
  }
}

if (import.meta.main) {
  const dir = Deno.args[0];
  if (!dir) {
    console.error("usage: report.ts RUN_DIR");
    Deno.exit(2);
  }
  const rows = readLines(`${dir}/results.tsv`).map(parseRow);
  if (!rows.length) {
    console.error(`report: no results in ${dir}/results.tsv`);
    Deno.exit(1);
  }
  console.log(table(rows));
  console.log();
  console.log(details(rows, readLines(`${dir}/get-sizes.tsv`), readLines(`${dir}/queue.tsv`)));
}
