// Errors of the node-to-node protocol. A peer that sends bytes this node cannot accept
// (a bad checksum, an unknown frame, a field out of range) is an operating error, not a
// bug: the connection is closed and the peer may try again. Bugs in this node's own
// encoders are assertions instead.

import { BlockmirrorError } from '../../lib/errors.js';

/** The peer's byte stream broke the frame format; the connection cannot be trusted further. */
export class PeerProtocolError extends BlockmirrorError {
  override name = 'PeerProtocolError';

  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_PEER_PROTOCOL', message, options);
  }
}
