// Errors in the three families of the Admin API (see docs/protocol/admin-api.md):
// - QubesError: user-facing; sent to the client as an exception reply with its Qubes type name.
// - ProtocolError: a client bug (bad arguments to a method); the connection is closed, no reply.
// - PermissionDenied: refused by policy; the connection is closed, no reply.

/** Exception type names that qubesadmin maps to its own classes (qubesadmin.exc). */
export type QubesErrorType =
  | 'QubesException'
  | 'QubesVMNotFoundError'
  | 'QubesVMInvalidUUIDError'
  | 'QubesVMError'
  | 'QubesVMInUseError'
  | 'QubesVMNotStartedError'
  | 'QubesVMNotRunningError'
  | 'QubesVMNotPausedError'
  | 'QubesVMNotHaltedError'
  | 'QubesVMShutdownTimeoutError'
  | 'QubesVMAlreadyExistsError'
  | 'QubesNoTemplateError'
  | 'QubesValueError'
  | 'QubesPropertyValueError'
  | 'QubesNoSuchPropertyError'
  | 'QubesNotImplementedError'
  | 'QubesFeatureNotFoundError'
  | 'QubesTagNotFoundError'
  | 'QubesLabelNotFoundError'
  | 'QubesInvalidTagError'
  | 'QubesInvalidLabelError'
  | 'QubesNotesError';

export class QubesError extends Error {
  override readonly name = 'QubesError';
  constructor(
    readonly type: QubesErrorType,
    message: string,
  ) {
    super(message);
  }
}

export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
}

export class PermissionDenied extends Error {
  override readonly name = 'PermissionDenied';
}

export function vmNotFound(name: string): QubesError {
  return new QubesError('QubesVMNotFoundError', `No such domain: '${name}'`);
}

export function valueError(message: string): QubesError {
  return new QubesError('QubesValueError', message);
}

export function propertyValueError(message: string): QubesError {
  return new QubesError('QubesPropertyValueError', message);
}
