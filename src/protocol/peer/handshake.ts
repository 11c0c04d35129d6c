// The proofs of the peer handshake. The source sends HELLO with its nonce; the target
// answers CHALLENGE with its own nonce and a target proof; the source checks it and sends
// AUTH with a source proof. Each proof is an HMAC, keyed with the cluster secret, over a
// transcript of everything both sides said, so a proof cannot be replayed on another
// connection, another volume, another pair of nodes or in the other direction.
//
// The MAC is injected (HMAC-SHA256 in production, src/lib/hmac.ts) so that this module
// stays pure and free of node: imports. It neither decides whether a HELLO is acceptable
// nor compares proofs with node:crypto; callers may use proofsEqual or macEquals.

import { assert } from '../../lib/assert.js';
import { PEER_NONCE_BYTES, type PeerHello } from './messages.js';

/** HMAC-SHA256(key, data). */
export type Mac = (key: Buffer, data: Buffer) => Buffer;

/** The HELLO fields a proof covers; a decoded or about-to-be-sent HELLO both fit. */
export type HelloTranscript = Pick<
  PeerHello,
  'version' | 'connectionIndex' | 'connections' | 'session' | 'nonce' | 'cluster' | 'fromNode' | 'toNode' | 'volume' | 'epoch' | 'lastSeq' | 'history'
>;

// Distinct labels, so the target's proof is never a valid source proof (the transcript
// is otherwise the same, and a target could be asked to prove what the source must).
const TARGET_LABEL = Buffer.from('blockmirror-peer-v1 target', 'utf8');
const SOURCE_LABEL = Buffer.from('blockmirror-peer-v1 source', 'utf8');

/** The target's proof, sent in CHALLENGE: it knows the secret and saw this HELLO. */
export function targetProof(mac: Mac, secret: Buffer, hello: HelloTranscript, targetNonce: Buffer): Buffer {
  return proof(mac, secret, TARGET_LABEL, hello, targetNonce);
}

/** The source's proof, sent in AUTH: it knows the secret and saw the target's nonce. */
export function sourceProof(mac: Mac, secret: Buffer, hello: HelloTranscript, targetNonce: Buffer): Buffer {
  return proof(mac, secret, SOURCE_LABEL, hello, targetNonce);
}

/**
 * Whether two proofs are equal, in time that depends only on their length (which is
 * public: both are HMAC-SHA256 outputs), so a forger learns nothing from the timing.
 */
export function proofsEqual(a: Buffer, b: Buffer): boolean {
  if (a.length !== b.length) return false;
  let difference = 0;
  for (let index = 0; index < a.length; index += 1) difference |= (a[index] ?? 0) ^ (b[index] ?? 0);
  return difference === 0;
}

function proof(mac: Mac, secret: Buffer, label: Buffer, hello: HelloTranscript, targetNonce: Buffer): Buffer {
  assert(secret.length > 0, 'peer secret must not be empty');
  assert(hello.nonce.length === PEER_NONCE_BYTES && targetNonce.length === PEER_NONCE_BYTES, 'nonces must be 32 bytes');
  const result = mac(secret, transcript(label, hello, targetNonce));
  assert(result.length > 0, 'mac returned nothing');
  return result;
}

/**
 * The label, then every field as u32 length + bytes. Length prefixes keep the encoding
 * unambiguous: no two different sets of fields give the same bytes (without them,
 * cluster "ab" + node "c" would read the same as cluster "a" + node "bc").
 */
function transcript(label: Buffer, hello: HelloTranscript, targetNonce: Buffer): Buffer {
  const fields = [
    uint(hello.version, 2),
    uint(hello.connectionIndex, 1),
    uint(hello.connections, 1),
    uint(hello.session, 4),
    hello.nonce,
    Buffer.from(hello.cluster, 'utf8'),
    Buffer.from(hello.fromNode, 'utf8'),
    Buffer.from(hello.toNode, 'utf8'),
    Buffer.from(hello.volume, 'utf8'),
    uint(hello.epoch, 4),
    Buffer.from(String(hello.lastSeq), 'utf8'),
    uint(hello.history.length, 2),
    ...hello.history.flatMap((start) => [uint(start.epoch, 4), uint(start.restart ?? 0, 4), Buffer.from(String(start.firstSeq), 'utf8'), Buffer.from(start.primary, 'utf8')]),
    targetNonce,
  ];
  const parts: Buffer[] = [label];
  for (const field of fields) parts.push(uint(field.length, 4), field);
  return Buffer.concat(parts);
}

/** A big-endian unsigned integer in `bytes` bytes, at the width it has on the wire. */
function uint(value: number, bytes: 1 | 2 | 4): Buffer {
  assert(Number.isInteger(value) && value >= 0 && value < 2 ** (8 * bytes), 'transcript field out of range');
  const out = Buffer.alloc(bytes);
  out.writeUIntBE(value, 0, bytes);
  return out;
}
