// Incremental decoder of NBD transmission requests (simple, 28-byte headers). A WRITE's
// payload is returned with its header once complete, as slices of the received chunks. Limits:
// - a WRITE payload up to payloadBytesMax is buffered and returned;
// - one larger but up to discardBytesMax is read and dropped as it arrives, and the
//   request is returned with `payloadDiscarded` so the server can answer EINVAL;
// - anything larger, or a bad magic, is fatal: the decoder stops and the caller closes
//   the connection (the stream can no longer be trusted to be in step).

import { assert } from '../../lib/assert.js';
import { ByteQueue } from '../../lib/byte-queue.js';
import { Command, REQUEST_HEADER_BYTES, REQUEST_MAGIC } from './constants.js';

export interface NbdRequest {
  flags: number;
  type: number;
  /** Opaque to the server; echoed in the reply. */
  cookie: bigint;
  /** Byte offset; Infinity when it does not fit in a safe integer (always out of range). */
  offset: number;
  length: number;
  /**
   * WRITE payload (length bytes in all) as slices of the received chunks, so it reaches
   * the disk through writev without being copied; empty for other commands or a
   * discarded payload.
   */
  payload: Buffer[];
  payloadDiscarded: boolean;
}

export type RequestMessage =
  | { kind: 'request'; request: NbdRequest }
  | { kind: 'fatal'; reason: 'bad-magic' | 'payload-too-large'; detail: string };

type State =
  | { name: 'header' }
  | { name: 'payload'; request: NbdRequest }
  | { name: 'discard'; request: NbdRequest; leftBytes: number }
  | { name: 'failed' };

const TWO_POW_32 = 2 ** 32;
/** Above this high word an offset is not a safe integer. */
const SAFE_HIGH_WORD_MAX = 2 ** 21 - 1;

export class RequestDecoder {
  private readonly queue = new ByteQueue();
  private state: State = { name: 'header' };

  constructor(
    private readonly payloadBytesMax: number,
    private readonly discardBytesMax: number,
  ) {
    assert(payloadBytesMax > 0 && discardBytesMax >= payloadBytesMax);
  }

  push(chunk: Buffer): void {
    this.queue.push(chunk);
  }

  get bufferedBytes(): number {
    return this.queue.length;
  }

  next(): RequestMessage | undefined {
    for (;;) {
      const state = this.state;
      switch (state.name) {
        case 'failed':
          return undefined;
        case 'header': {
          if (this.queue.length < REQUEST_HEADER_BYTES) return undefined;
          const header = this.queue.read(REQUEST_HEADER_BYTES);
          const magic = header.readUInt32BE(0);
          if (magic !== REQUEST_MAGIC) {
            this.state = { name: 'failed' };
            return { kind: 'fatal', reason: 'bad-magic', detail: `magic 0x${magic.toString(16)}` };
          }
          const high = header.readUInt32BE(16);
          const low = header.readUInt32BE(20);
          const request: NbdRequest = {
            flags: header.readUInt16BE(4),
            type: header.readUInt16BE(6),
            cookie: header.readBigUInt64BE(8),
            offset: high > SAFE_HIGH_WORD_MAX ? Infinity : high * TWO_POW_32 + low,
            length: header.readUInt32BE(24),
            payload: [],
            payloadDiscarded: false,
          };
          if (request.type !== Command.WRITE || request.length === 0) {
            return { kind: 'request', request };
          }
          if (request.length <= this.payloadBytesMax) {
            this.state = { name: 'payload', request };
            continue;
          }
          if (request.length <= this.discardBytesMax) {
            request.payloadDiscarded = true;
            this.state = { name: 'discard', request, leftBytes: request.length };
            continue;
          }
          this.state = { name: 'failed' };
          return {
            kind: 'fatal',
            reason: 'payload-too-large',
            detail: `write payload of ${request.length} bytes exceeds ${this.discardBytesMax}`,
          };
        }
        case 'payload': {
          if (this.queue.length < state.request.length) return undefined;
          state.request.payload = this.queue.readSlices(state.request.length);
          this.state = { name: 'header' };
          return { kind: 'request', request: state.request };
        }
        case 'discard': {
          state.leftBytes -= this.queue.skip(state.leftBytes);
          if (state.leftBytes > 0) return undefined;
          this.state = { name: 'header' };
          return { kind: 'request', request: state.request };
        }
      }
    }
  }
}
