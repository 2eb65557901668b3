// `npm run tools`: make sure the Temporal CLI is available (builds it once with Go when it is not) and say where.
// `npm run tools -- --cluster` also builds the Temporal server, its SQL tool and the Web UI server (cluster mode).
import { loadEnv } from '../common/config';
import { resolveTemporalServer } from '../stack/tools/temporal-cli';
import { ensureClusterTools, TEMPORAL_SERVER_VERSION, TEMPORAL_UI_SERVER_VERSION } from '../stack/tools/temporal-server';

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const unknown = args.filter((a) => a !== '--cluster');
  if (unknown.length) throw new Error(`unknown option ${unknown[0]} (known: --cluster)`);
  const log = (l: string) => console.log(l);
  const source = await resolveTemporalServer({ log });
  if (source.kind === 'existing-path') console.log(`Temporal CLI: ${source.path} (${source.origin})`);
  else if (source.kind === 'external') console.log(`Temporal: external cluster at ${source.address}`);
  else console.log('Temporal CLI: none here and no Go toolchain; the SDK will download its dev server at first start');
  if (args.includes('--cluster') || loadEnv().DHM_TEMPORAL_MODE === 'cluster') {
    const tools = await ensureClusterTools({ toolsDir: loadEnv().DHM_TOOLS_DIR, log });
    console.log(`Temporal server ${TEMPORAL_SERVER_VERSION}: ${tools.server}`);
    console.log(`Temporal SQL tool ${TEMPORAL_SERVER_VERSION}: ${tools.sqlTool}`);
    console.log(`Temporal Web UI server ${TEMPORAL_UI_SERVER_VERSION}: ${tools.uiServer}`);
  }
}

main().catch((err: Error) => {
  console.error(`tools: ${err.message}`);
  process.exit(1);
});
