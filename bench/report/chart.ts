/**
 * The makespan chart of docs/benchmarks.md: makespan ÷ ΣM/B for each schedule, grouped by host size, with the lower
 * bound (1.0) and dhm's target (1.15) drawn across. Plain SVG, no library.
 */
export interface ChartGroup {
  label: string;
  bars: Array<{ name: string; value: number }>;
}

const COLORS = ['#1f77b4', '#aaaaaa', '#ff7f0e', '#9467bd', '#2ca02c', '#8c564b'];

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

export function makespanChart(groups: ChartGroup[], opts: { title: string; target: number }): string {
  const width = 760;
  const height = 380;
  const m = { left: 56, right: 16, top: 48, bottom: 64 };
  const plotW = width - m.left - m.right;
  const plotH = height - m.top - m.bottom;
  const names = [...new Set(groups.flatMap((g) => g.bars.map((b) => b.name)))];
  const finite = groups.flatMap((g) => g.bars.map((b) => b.value)).filter(Number.isFinite);
  const yMax = Math.max(1.5, Math.ceil((Math.max(...finite, 1) * 1.1) / 0.5) * 0.5);
  const y = (v: number) => m.top + plotH - (Math.min(v, yMax) / yMax) * plotH;
  const groupW = plotW / Math.max(1, groups.length);
  const barW = Math.min(40, (groupW * 0.8) / Math.max(1, names.length));
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
  );
  out.push(`<rect width="${width}" height="${height}" fill="white"/>`);
  out.push(`<text x="${width / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">${esc(opts.title)}</text>`);
  for (let v = 0; v <= yMax + 1e-9; v += 0.5) {
    out.push(`<line x1="${m.left}" x2="${width - m.right}" y1="${y(v)}" y2="${y(v)}" stroke="#eeeeee"/>`);
    out.push(`<text x="${m.left - 6}" y="${y(v) + 4}" text-anchor="end">${v.toFixed(1)}</text>`);
  }
  out.push(`<text transform="translate(14 ${m.top + plotH / 2}) rotate(-90)" text-anchor="middle">makespan ÷ (Σ(M+D) / B)</text>`);
  groups.forEach((g, gi) => {
    const x0 = m.left + gi * groupW + (groupW - barW * g.bars.length) / 2;
    g.bars.forEach((b, bi) => {
      const color = COLORS[names.indexOf(b.name) % COLORS.length]!;
      const x = x0 + bi * barW;
      const v = Number.isFinite(b.value) ? b.value : 0;
      out.push(
        `<rect x="${x + 2}" y="${y(v)}" width="${barW - 4}" height="${m.top + plotH - y(v)}" fill="${color}"><title>${esc(`${g.label}, ${b.name}: ${v.toFixed(2)}×`)}</title></rect>`,
      );
      out.push(`<text x="${x + barW / 2}" y="${y(v) - 4}" text-anchor="middle" font-size="10">${Number.isFinite(b.value) ? b.value.toFixed(2) : 'n/a'}</text>`);
    });
    out.push(`<text x="${m.left + gi * groupW + groupW / 2}" y="${m.top + plotH + 18}" text-anchor="middle">${esc(g.label)}</text>`);
  });
  const rule = (v: number, label: string, dash: string, color: string) => {
    out.push(`<line x1="${m.left}" x2="${width - m.right}" y1="${y(v)}" y2="${y(v)}" stroke="${color}" stroke-dasharray="${dash}"/>`);
    out.push(`<text x="${width - m.right - 4}" y="${y(v) - 4}" text-anchor="end" fill="${color}">${esc(label)}</text>`);
  };
  rule(1, 'lower bound Σ(M+D)/B', '2 3', '#333333');
  rule(opts.target, `target ${opts.target}×`, '6 3', '#d62728');
  out.push(`<line x1="${m.left}" x2="${m.left}" y1="${m.top}" y2="${m.top + plotH}" stroke="#333333"/>`);
  names.forEach((n, i) => {
    const x = m.left + i * 150;
    const ly = height - 18;
    out.push(`<rect x="${x}" y="${ly - 10}" width="12" height="12" fill="${COLORS[i % COLORS.length]}"/>`);
    out.push(`<text x="${x + 16}" y="${ly}">${esc(n)}</text>`);
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
