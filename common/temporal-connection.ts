import * as fs from 'node:fs';
import { Connection, type TLSConfig } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import type { Env } from './config';
import { UserFacingError } from './errors';

export interface TemporalConnectionOptions {
  address: string;
  tls?: TLSConfig;
  apiKey?: string;
}

/**
 * How every dhm process reaches Temporal: the address, and TLS / mTLS / an API key (Temporal Cloud) from the
 * environment. TLS is on when TEMPORAL_TLS=true or any TLS setting or the API key is set. `address` overrides
 * TEMPORAL_ADDRESS (the embedded stack passes its dev server's); settings only apply to the configured address.
 */
export function temporalConnectionOptions(env: Env, address?: string): TemporalConnectionOptions {
  const target = address ?? env.TEMPORAL_ADDRESS;
  if (!target) throw new UserFacingError('TEMPORAL_ADDRESS: required for this service (`dhm up` runs everything with embedded defaults)', 'TEMPORAL_ADDRESS');
  // The embedded dev server (another address than the configured one) is plain text on loopback.
  if (address !== undefined && address !== env.TEMPORAL_ADDRESS) return { address: target };
  const wantsTls = env.TEMPORAL_TLS ?? Boolean(env.TEMPORAL_TLS_CERT || env.TEMPORAL_TLS_CA || env.TEMPORAL_TLS_SERVER_NAME || env.TEMPORAL_API_KEY);
  const opts: TemporalConnectionOptions = { address: target };
  if (wantsTls) {
    const tls: TLSConfig = {};
    if (env.TEMPORAL_TLS_SERVER_NAME) tls.serverNameOverride = env.TEMPORAL_TLS_SERVER_NAME;
    if (env.TEMPORAL_TLS_CA) tls.serverRootCACertificate = readPem('TEMPORAL_TLS_CA', env.TEMPORAL_TLS_CA);
    if (env.TEMPORAL_TLS_CERT && env.TEMPORAL_TLS_KEY)
      tls.clientCertPair = { crt: readPem('TEMPORAL_TLS_CERT', env.TEMPORAL_TLS_CERT), key: readPem('TEMPORAL_TLS_KEY', env.TEMPORAL_TLS_KEY) };
    opts.tls = tls;
  }
  if (env.TEMPORAL_API_KEY) opts.apiKey = env.TEMPORAL_API_KEY;
  return opts;
}

function readPem(name: string, file: string): Buffer {
  let pem: Buffer;
  try {
    pem = fs.readFileSync(file);
  } catch (err) {
    throw new UserFacingError(`${name}: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`, name);
  }
  if (!pem.includes('-----BEGIN ')) throw new UserFacingError(`${name}: ${file} is not a PEM file`, name);
  return pem;
}

/** A client connection (API, CLI helpers). */
export async function connectTemporalClient(env: Env, address?: string): Promise<Connection> {
  return Connection.connect(temporalConnectionOptions(env, address));
}

/** A worker connection (migration workers). */
export async function connectTemporalWorker(env: Env, address?: string): Promise<NativeConnection> {
  return NativeConnection.connect(temporalConnectionOptions(env, address));
}
