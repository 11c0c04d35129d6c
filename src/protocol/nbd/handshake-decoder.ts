// Incremental decoder of what an NBD client sends during the fixed newstyle handshake:
// the 4-byte client flags, then option requests. It never holds more than one option's
// header plus nbdOptionBytesMax of data; a longer option's data is discarded as it
// arrives and reported as too big, so a client cannot make the server buffer it.
//
// Decoding stops at the caller's word: after the option that enters transmission the
// caller takes the remaining bytes (`takeRemainder`) for the request decoder.

import { assert } from '../../lib/assert.js';
import { ByteQueue } from '../../lib/byte-queue.js';
import { IHAVEOPT, OPTION_HEADER_BYTES } from './constants.js';

export type HandshakeMessage =
  | { kind: 'client-flags'; flags: number }
  | { kind: 'option'; option: number; data: Buffer }
  | { kind: 'option-too-big'; option: number; lengthBytes: number }
  | { kind: 'bad-magic' };

type State =
  | { name: 'client-flags' }
  | { name: 'option-header' }
  | { name: 'option-data'; option: number; lengthBytes: number }
  | { name: 'option-skip'; option: number; lengthBytes: number; leftBytes: number }
  | { name: 'failed' };

export class HandshakeDecoder {
  private readonly queue = new ByteQueue();
  private state: State = { name: 'client-flags' };

  constructor(private readonly optionBytesMax: number) {
    assert(optionBytesMax > 0);
  }

  push(chunk: Buffer): void {
    this.queue.push(chunk);
  }

  /** Returns the next complete message, or undefined when more bytes are needed. */
  next(): HandshakeMessage | undefined {
    for (;;) {
      const state = this.state;
      switch (state.name) {
        case 'failed':
          return undefined;
        case 'client-flags': {
          if (this.queue.length < 4) return undefined;
          const flags = this.queue.read(4).readUInt32BE(0);
          this.state = { name: 'option-header' };
          return { kind: 'client-flags', flags };
        }
        case 'option-header': {
          if (this.queue.length < OPTION_HEADER_BYTES) return undefined;
          const header = this.queue.read(OPTION_HEADER_BYTES);
          if (header.readBigUInt64BE(0) !== IHAVEOPT) {
            this.state = { name: 'failed' };
            return { kind: 'bad-magic' };
          }
          const option = header.readUInt32BE(8);
          const lengthBytes = header.readUInt32BE(12);
          this.state =
            lengthBytes > this.optionBytesMax
              ? { name: 'option-skip', option, lengthBytes, leftBytes: lengthBytes }
              : { name: 'option-data', option, lengthBytes };
          continue;
        }
        case 'option-data': {
          if (this.queue.length < state.lengthBytes) return undefined;
          // Copy so the message does not pin the socket's chunk.
          const data = Buffer.from(this.queue.read(state.lengthBytes));
          this.state = { name: 'option-header' };
          return { kind: 'option', option: state.option, data };
        }
        case 'option-skip': {
          state.leftBytes -= this.queue.skip(state.leftBytes);
          if (state.leftBytes > 0) return undefined;
          this.state = { name: 'option-header' };
          return { kind: 'option-too-big', option: state.option, lengthBytes: state.lengthBytes };
        }
      }
    }
  }

  /** Bytes received after the last decoded message (the start of transmission). */
  takeRemainder(): Buffer {
    return this.queue.drain();
  }

  get bufferedBytes(): number {
    return this.queue.length;
  }
}
