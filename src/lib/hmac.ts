// The cryptography of peer authentication, from node:crypto: HMAC-SHA256 for the
// handshake proofs, random nonces, and a constant-time comparison of MACs. It is the only
// place that imports node:crypto for this, so the pure protocol code takes `hmacSha256`
// as an injected function and tests can substitute their own.

import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

export const NONCE_BYTES = 32;

export function hmacSha256(key: Buffer, data: Buffer): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

/** 32 bytes from the system's cryptographic random source. */
export function randomNonce(): Buffer {
  return randomBytes(NONCE_BYTES);
}

/** Constant-time for equal lengths; a length mismatch (public information) is just false. */
export function macEquals(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}
