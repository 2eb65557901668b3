/** Fixed-width text tables for the terminal and Markdown tables for the docs, from the same rows. */
export type Cell = string | number;

export function fmt(v: number, digits = 1): string {
  if (!Number.isFinite(v)) return '—';
  return v.toFixed(digits);
}

export function textTable(header: string[], rows: Cell[][], rightAlignFrom = 1): string {
  const cells = [header, ...rows.map((r) => r.map(String))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => r.map((c, i) => (i >= rightAlignFrom ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ');
  return [line(cells[0]!), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.slice(1).map(line)].join('\n');
}

export function markdownTable(header: string[], rows: Cell[][], rightAlignFrom = 1): string {
  const sep = header.map((_, i) => (i >= rightAlignFrom ? '---:' : ':---'));
  return [header, sep, ...rows.map((r) => r.map(String))].map((r) => `| ${r.join(' | ')} |`).join('\n');
}
