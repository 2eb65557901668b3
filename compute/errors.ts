import type { AgentError } from './agent-http';

/**
 * The one error type agent code throws for expected outcomes; the HTTP layer turns it into
 * `{"error":{code,message,field?,movedTo?}}` with `status`. Anything else thrown is a bug and becomes a 500.
 */
export class AgentFailure extends Error {
  override readonly name = 'AgentFailure';
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field?: string,
    readonly movedTo?: string,
  ) {
    super(message);
  }
}

export const invalidInput = (field: string, message: string) => new AgentFailure(400, 'INVALID_INPUT', message, field);
export const notFound = (field: string, message: string) => new AgentFailure(404, 'NOT_FOUND', message, field);
export const conflict = (code: string, field: string | undefined, message: string) => new AgentFailure(409, code, message, field);

/** A VM that has left this server: the caller follows `movedTo`. */
export const vmMoved = (vmId: string, movedTo: string) => new AgentFailure(409, 'VM_MOVED', `VM ${vmId} has migrated to ${movedTo}`, 'vmId', movedTo);

export /** The target's refusal, renamed into the fields of the caller's startMigration request. */
function relayTargetRefusal(err: AgentError): AgentFailure {
  const field =
    err.field === 'incarnationId' ? 'target.incarnationId' : err.field === 'sourceServerId' ? 'target.agentUrl' : err.field === 'jobId' ? 'jobId' : err.field; // vmId and spec.* read the same from the caller's side
  return new AgentFailure(err.status, err.code, `target refused the VM: ${err.message}`, field);
}
