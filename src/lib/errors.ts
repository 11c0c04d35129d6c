// Operating errors: things that go wrong in a correct program (a bad config file, a
// full disk, a peer that lies). Each has a stable code that logs, the admin API and
// tests can match on; the "Error codes" section of docs/operations.md lists them. Bugs are assertions, not these.

export type ErrorCode =
  | 'ERR_CONFIG_INVALID'
  | 'ERR_VOLUME_MISMATCH'
  | 'ERR_VOLUME_IO'
  | 'ERR_LOG_CORRUPT'
  | 'ERR_ADDRESS_IN_USE'
  | 'ERR_USAGE'
  | 'ERR_PEER_PROTOCOL'
  | 'ERR_REPLICA_UNAVAILABLE'
  | 'ERR_VERIFY_REFUSED'
  | 'ERR_ADMIN_UNREACHABLE'
  | 'ERR_NOT_PRIMARY'
  | 'ERR_UNKNOWN_VOLUME'
  | 'ERR_ROLE_REFUSED'
  | 'ERR_MAY_LOSE_WRITES'
  | 'ERR_NO_QUORUM'
  | 'ERR_FENCED'
  | 'ERR_COORDINATION'
  | 'ERR_BAD_FILE';

export class BlockmirrorError extends Error {
  override name = 'BlockmirrorError';
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/** A cluster file that cannot be used; the message names the field and the problem. */
export class ConfigError extends BlockmirrorError {
  override name = 'ConfigError';
  readonly field: string;

  constructor(field: string, problem: string) {
    super('ERR_CONFIG_INVALID', field === '' ? problem : `${field}: ${problem}`);
    this.field = field;
  }
}

/** A volume on disk that does not match its definition (size, identity). */
export class VolumeMismatchError extends BlockmirrorError {
  override name = 'VolumeMismatchError';
  constructor(message: string) {
    super('ERR_VOLUME_MISMATCH', message);
  }
}

/** Extracts the errno name (EIO, ENOSPC, ...) from a Node system error, if any. */
export function errnoCode(error: unknown): string | undefined {
  if (typeof error === 'object' && error !== null && 'code' in error) {
    const code = (error as { code: unknown }).code;
    if (typeof code === 'string') return code;
  }
  return undefined;
}
