import type { MigrationStatus } from '../common/migration';

const MAX_ROWS = 40;

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(0)} MiB`;
}

/**
 * Text a tenant chose (a VM's name), made inert for the Web UI's Markdown: no table cell breaks, links, images,
 * emphasis, code or HTML; line breaks and other control characters become spaces. Ids and plain names stay as they are.
 */
export function escapeMarkdown(text: string): string {
  return text
    .replace(/[\u0000-\u001f\u007f\u2028\u2029]/g, ' ')
    .replace(/[\\`*_[\]|#!~]/g, (c) => `\\${c}`)
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;');
}

/** The migration as readable markdown for the Web UI's "current details" (kept short: it is stored per task). */
export function renderMigrationDetails(st: MigrationStatus): string {
  const c: Record<string, number> = {};
  for (const v of st.vms) c[v.state] = (c[v.state] ?? 0) + 1;
  const lines = [
    `## Migration of dedicated host \`${st.dedicatedHostId}\``,
    `**Phase:** ${st.phase}${st.waitingForCapacitySince ? ` (waiting for a free server since ${st.waitingForCapacitySince})` : ''}`,
    `**Source:** ${st.source ? `${st.source.serverId} (${st.source.incarnationId})` : '—'} → **clone:** ${st.target ? `${st.target.serverId} (${st.target.incarnationId})` : '—'}`,
    `**VMs:** ${
      Object.entries(c)
        .map(([k, n]) => `${n} ${k}`)
        .join(', ') || 'none'
    }${st.deletedDropped ? ` (and ${st.deletedDropped} deleted earlier)` : ''}; requests handled: ${st.requestsHandled}`,
  ];
  if (st.lastError) lines.push(`**Last error:** ${escapeMarkdown(st.lastError)}`);
  // Memory and local disk separately: the disk column is the data the mirror copies, then what it sent (re-sends included).
  lines.push('', '| VM | name | memory | disk data | state | downtime | sent | disk sent |', '|---|---|---|---|---|---|---|---|');
  for (const v of st.vms.slice(0, MAX_ROWS)) {
    const f = v.figures;
    lines.push(
      `| ${v.vmId} | ${escapeMarkdown(v.name)} | ${v.spec.memoryMiB} MiB | ${v.diskMiB ? `${v.diskMiB} MiB` : '—'} | ${v.state} | ${f ? `${f.downtimeMs.toFixed(0)} ms` : ''} | ${f ? mib(f.bytesSent - (f.diskBytesCopied ?? 0)) : ''} | ${f?.diskBytesCopied !== undefined ? mib(f.diskBytesCopied) : ''} |`,
    );
  }
  if (st.vms.length > MAX_ROWS) lines.push(`| … | ${st.vms.length - MAX_ROWS} more | | | | | | |`);
  return lines.join('\n');
}
