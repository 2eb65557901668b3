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
