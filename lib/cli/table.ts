/** Plain-text tables and human sizes for command output. */
import { printable } from "../text.ts";

export { formatBytes, printable, printableJson } from "../text.ts";

/** Prints rows under a header, columns padded to their widest cell; cells go through printable. */
export function printTable(header: string[], rawRows: string[][]): void {
  const rows = rawRows.map((row) => row.map(printable));
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join("  ");
  console.log(line(header));
  for (const row of rows) console.log(line(row));
}
