// Assertions stay on in production. A failed assertion is a bug: it throws an
// AssertionError that nothing catches, so the process stops loudly instead of
// carrying on with state it does not understand.

export class AssertionError extends Error {
  override name = 'AssertionError';
}

export function assert(condition: unknown, message = 'assertion failed'): asserts condition {
  if (!condition) throw new AssertionError(message);
}

export function unreachable(value: never, what = 'value'): never {
  throw new AssertionError(`unreachable: unexpected ${what} ${String(value)}`);
}
