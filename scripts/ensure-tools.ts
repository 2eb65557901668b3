// `npm run tools`: make sure the Temporal CLI is available (builds it once with Go when it is not) and say where.
import { resolveTemporalServer } from '../client/temporal-cli';

resolveTemporalServer({ log: (l) => console.log(l) })
  .then((source) => {
    if (source.kind === 'existing-path') console.log(`Temporal CLI: ${source.path} (${source.origin})`);
    else if (source.kind === 'external') console.log(`Temporal: external cluster at ${source.address}`);
    else console.log('Temporal CLI: none here and no Go toolchain; the SDK will download its dev server at first start');
  })
  .catch((err: Error) => {
    console.error(`tools: ${err.message}`);
    process.exit(1);
  });
