-- Idempotency keys of the HTTP API (client/api/idempotency.ts). A POST or DELETE sent with an `Idempotency-Key` header
-- reserves (principal, key) here before it acts; its answer (status and body) is stored when it finishes, and a retry
-- with the same key gets that answer instead of acting again. A reservation whose answer is still NULL belongs to a
-- request in flight. Answers that carry a secret (a new tenant's token) are stored sealed (AES-256-GCM, keyed by the
-- operator token and the idempotency key), never in plain text: tokens live in the database only as hashes.
CREATE TABLE api_idempotency_keys (
  -- 'operator' or 'tenant:<id>': keys of different principals never meet.
  principal text NOT NULL CHECK (length(principal) BETWEEN 1 AND 200),
  key text NOT NULL CHECK (length(key) BETWEEN 1 AND 200),
  -- Method and path of the first request, e.g. 'POST /v1/dedicated-hosts/dh-1/vms'.
  route text NOT NULL CHECK (length(route) BETWEEN 1 AND 400),
  -- sha256 of the first request (method, path, canonical JSON body): a reuse with another request is refused.
  request_hash text NOT NULL CHECK (request_hash ~ '^[0-9a-f]{64}$'),
  status integer CHECK (status BETWEEN 200 AND 499),
  body jsonb,
  created_at timestamptz NOT NULL DEFAULT now(),
  completed_at timestamptz,
  PRIMARY KEY (principal, key),
  CHECK ((status IS NULL) = (completed_at IS NULL)),
  CHECK ((status IS NULL) = (body IS NULL))
);
-- Expired keys (older than the retention, 24 h) are swept by age.
CREATE INDEX api_idempotency_keys_age ON api_idempotency_keys (created_at);
