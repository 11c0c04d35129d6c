// One NBD client connection: the handshake (driven by the pure Negotiation), then
// transmission, where requests run concurrently on the volume and replies go back in
// completion order, each written whole.
//
// Memory is bounded per connection: at most nbdInflightRequestsMax requests and
// nbdInflightBytesMax payload bytes are held, and no new request is taken while more than
// nbdReplyQueueBytesMax of replies wait on a client that does not read. When any limit
// is reached the socket is paused, so TCP pushes back on the client.

import type net from 'node:net';
import { constants } from '../constants.js';
import { assert } from '../lib/assert.js';
import type { BufferPool } from '../lib/buffer-pool.js';
import type { IoActivity } from '../io/file-io.js';
import { errnoCode } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import { Command, CommandFlag, Errno, STATE_HOLE, STATE_ZERO } from '../protocol/nbd/constants.js';
import {
  encodeBlockStatusChunk,
  encodeErrorChunk,
  encodeGreeting,
  encodeOffsetDataHeader,
  encodeSimpleReply,
  type Extent,
} from '../protocol/nbd/encode.js';
import { HandshakeDecoder } from '../protocol/nbd/handshake-decoder.js';
import { Negotiation, type ExportCatalog, type TransmissionParams } from '../protocol/nbd/negotiation.js';
import { RequestDecoder, type NbdRequest } from '../protocol/nbd/request-decoder.js';
import { checkRequest, type RequestContext } from '../protocol/nbd/validate.js';
import type { ClientVolume } from './mirrored-volume.js';

export interface VolumeCatalog extends ExportCatalog {
  volume(name: string): ClientVolume;
}

export interface ConnectionCounters {
  requests: number;
  errorReplies: number;
  protocolErrors: number;
}

/** Maps a disk error to the errno an NBD client gets. */
export function errnoForDiskError(error: unknown): Errno {
  switch (errnoCode(error)) {
    case 'ENOSPC':
    case 'EDQUOT':
    case 'EFBIG':
      return Errno.ENOSPC;
    case 'EROFS':
    case 'EPERM':
    case 'ERR_NOT_PRIMARY':
    case 'EACCES':
      return Errno.EPERM;
    default:
      return Errno.EIO;
  }
}

const commandNames: Record<number, string> = {
  [Command.READ]: 'read',
  [Command.WRITE]: 'write',
  [Command.DISC]: 'disc',
  [Command.FLUSH]: 'flush',
  [Command.TRIM]: 'trim',
  [Command.CACHE]: 'cache',
  [Command.WRITE_ZEROES]: 'write-zeroes',
  [Command.BLOCK_STATUS]: 'block-status',
};

export class NbdConnection {
  private phase: 'handshake' | 'transmission' | 'closing' | 'closed' = 'handshake';
  private readonly handshakeDecoder = new HandshakeDecoder(constants.nbdOptionBytesMax);
  private readonly negotiation: Negotiation;
  private requestDecoder: RequestDecoder | null = null;
  private params: TransmissionParams | null = null;
  private volume: ClientVolume | null = null;
  private context: RequestContext | null = null;
  private handshakeTimer: NodeJS.Timeout | null = null;

  private inflightRequests = 0;
  private inflightBytes = 0;
  private paused = false;
  private corked = false;
  /** DISC received or the server is stopping: take no more requests. */
  private draining = false;
  private drainWaiters: (() => void)[] = [];
  private readonly closed: Promise<void>;

  constructor(
    private readonly socket: net.Socket,
    private readonly catalog: VolumeCatalog,
    private readonly log: Logger,
    private readonly counters: ConnectionCounters,
    private readonly buffers: BufferPool,
    private readonly activity: IoActivity,
  ) {
    this.negotiation = new Negotiation(catalog, {
      optionCountMax: constants.nbdOptionCountMax,
      nameBytesMax: constants.nbdNameBytesMax,
      metaQueriesMax: constants.nbdMetaQueriesMax,
      blockSizeMinBytes: constants.nbdBlockSizeMinBytes,
      blockSizePreferredBytes: constants.nbdBlockSizePreferredBytes,
      payloadBytesMax: constants.nbdPayloadBytesMax,
    });
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
  }

  start(): void {
    this.socket.setNoDelay(true);
    this.socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.socket.on('drain', () => this.pump());
    this.socket.on('error', (error) => this.log.debug('connection error', { error: error.message }));
    this.socket.on('close', () => this.onClose());
    this.handshakeTimer = setTimeout(() => {
      this.log.warn('handshake timed out', { timeoutMs: constants.nbdHandshakeTimeoutMs });
      this.socket.destroy();
    }, constants.nbdHandshakeTimeoutMs);
    this.socket.write(encodeGreeting());
  }

  /** The export this connection is attached to (null during the handshake). */
  get exportName(): string | null {
    return this.params?.export.name ?? null;
  }

  /** Stops taking requests, lets in-flight ones finish (bounded), then closes. */
  async shutdown(drainMs: number): Promise<void> {
    if (this.phase === 'closed') return;
    if (this.phase === 'handshake') {
      this.negotiation.setShuttingDown();
      this.socket.destroy();
      return this.closed;
    }
    this.draining = true;
    this.pump();
    const drained = new Promise<void>((resolve) => this.whenIdle(resolve));
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), drainMs);
    });
    const outcome = await Promise.race([drained, timedOut]);
    clearTimeout(timer);
    if (outcome === 'timeout') {
      this.log.warn('closing connection with requests still in flight', { inflight: this.inflightRequests });
    }
    this.finish();
    return this.closed;
  }

  private onData(chunk: Buffer): void {
    if (this.phase === 'handshake') {
      this.handshakeDecoder.push(chunk);
      this.runHandshake();
    } else if (this.phase === 'transmission') {
      assert(this.requestDecoder !== null);
      this.requestDecoder.push(chunk);
      this.pump();
    }
  }

  private runHandshake(): void {
    for (;;) {
      if (this.phase !== 'handshake') return;
      const message = this.handshakeDecoder.next();
      if (message === undefined) return;
      const step = this.negotiation.step(message);
      this.send(step.replies);
      if (step.kind === 'close') {
        this.log.debug('closing during handshake', { reason: step.reason });
        if (step.reason !== 'client aborted') this.counters.protocolErrors += 1;
        this.socket.end();
        this.phase = 'closing';
        return;
      }
      if (step.kind === 'transmission') {
        this.enterTransmission(step.params);
        return;
      }
    }
  }

  private enterTransmission(params: TransmissionParams): void {
    if (this.handshakeTimer !== null) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
    this.phase = 'transmission';
    this.params = params;
    this.volume = this.catalog.volume(params.export.name);
    this.context = {
      sizeBytes: params.export.sizeBytes,
      readOnly: params.export.readOnly,
      structuredReplies: params.structuredReplies,
      allocationSelected: params.allocationContextId !== null,
      payloadBytesMax: constants.nbdPayloadBytesMax,
    };
    this.requestDecoder = new RequestDecoder(constants.nbdPayloadBytesMax, constants.nbdPayloadDiscardBytesMax);
    this.log.debug('transmission', {
      export: params.export.name,
      structured: params.structuredReplies,
      flags: params.transmissionFlags,
    });
    const rest = this.handshakeDecoder.takeRemainder();
    if (rest.length > 0) this.requestDecoder.push(rest);
    this.pump();
  }

  /** Takes decoded requests while every limit allows; pauses or resumes the socket. */
  private pump(): void {
    if (this.phase !== 'transmission' || this.requestDecoder === null) return;
    while (!this.draining && this.hasRoom()) {
      const message = this.requestDecoder.next();
      if (message === undefined) break;
      if (message.kind === 'fatal') {
        this.counters.protocolErrors += 1;
        this.log.warn('closing connection: protocol violation', { reason: message.reason, detail: message.detail });
        this.socket.destroy();
        this.phase = 'closed';
        return;
      }
      this.dispatch(message.request);
    }
    const shouldPause = this.draining || !this.hasRoom();
    if (shouldPause && !this.paused) {
      this.socket.pause();
      this.paused = true;
    } else if (!shouldPause && this.paused) {
      this.socket.resume();
      this.paused = false;
    }
  }

  private hasRoom(): boolean {
    return (
      this.inflightRequests < constants.nbdInflightRequestsMax &&
      this.inflightBytes < constants.nbdInflightBytesMax &&
      this.socket.writableLength <= constants.nbdReplyQueueBytesMax
    );
  }

  private dispatch(request: NbdRequest): void {
    this.counters.requests += 1;
    if (request.type === Command.DISC) {
      this.log.debug('client disconnect requested');
      this.draining = true;
      this.whenIdle(() => this.finish());
      return;
    }
    const bytes = request.type === Command.READ || request.type === Command.WRITE ? request.length : 0;
    this.inflightRequests += 1;
    this.inflightBytes += bytes;
    this.activity.requests += 1;
    this.execute(request)
      .catch((error: unknown) => {
        // execute() answers every operating error itself; anything here is a bug.
        this.log.error('request handler failed', { error: String(error) });
        throw error;
      })
      .finally(() => {
        this.activity.requests -= 1;
        this.inflightRequests -= 1;
        this.inflightBytes -= bytes;
        if (this.inflightRequests === 0) this.notifyIdle();
        this.pump();
      });
  }

  private async execute(request: NbdRequest): Promise<void> {
    assert(this.context !== null && this.volume !== null && this.params !== null);
    const refusal = checkRequest(request, this.context);
    if (refusal !== Errno.OK) {
      this.replyError(request, refusal, `${commandNames[request.type] ?? `command ${request.type}`} refused`);
      return;
    }
    const volume = this.volume;
    const fua = (request.flags & CommandFlag.FUA) !== 0;
    try {
      switch (request.type) {
        case Command.READ: {
          const data = this.buffers.acquire(request.length);
          try {
            await volume.readInto(data, request.offset);
          } catch (error) {
            this.buffers.release(data);
            throw error;
          }
          this.replyRead(request, data);
          return;
        }
        case Command.WRITE:
          await volume.write(request.payload, request.offset, fua);
          break;
        case Command.FLUSH:
          await volume.flush();
          break;
        case Command.TRIM:
          await volume.trim(request.offset, request.length, fua);
          break;
        case Command.WRITE_ZEROES: {
          const outcome = await volume.writeZeroes(request.offset, request.length, {
            noHole: (request.flags & CommandFlag.NO_HOLE) !== 0,
            fast: (request.flags & CommandFlag.FAST_ZERO) !== 0,
            fua,
          });
          if (outcome === 'slow') {
            this.replyError(request, Errno.ENOTSUP, 'fast zero not possible');
            return;
          }
          break;
        }
        case Command.CACHE:
          await volume.prefetch(request.offset, request.length, constants.nbdPayloadBytesMax);
          break;
        case Command.BLOCK_STATUS: {
          const reqOne = (request.flags & CommandFlag.REQ_ONE) !== 0;
          const extents = await volume.extents(
            request.offset,
            request.length,
            reqOne ? 1 : constants.nbdBlockStatusExtentsMax,
          );
          this.replyBlockStatus(request, extents);
          return;
        }
        default:
          assert(false, `validated request of unknown type ${request.type}`);
      }
      this.send([encodeSimpleReply(request.cookie, Errno.OK)]);
    } catch (error) {
      const errno = errnoForDiskError(error);
      this.log.warn('volume I/O failed', {
        command: commandNames[request.type],
        offset: request.offset,
        length: request.length,
        error: error instanceof Error ? error.message : String(error),
      });
      this.replyError(request, errno, 'I/O error');
    }
  }

  /** Sends a read's data, and returns its pooled buffer once the socket is done with it. */
  private replyRead(request: NbdRequest, data: Buffer): void {
    assert(this.params !== null);
    const header = this.params.structuredReplies
      ? encodeOffsetDataHeader(request.cookie, request.offset, data.length)
      : encodeSimpleReply(request.cookie, Errno.OK);
    if (!this.send([header, data], () => this.buffers.release(data))) this.buffers.release(data);
  }

  private replyBlockStatus(request: NbdRequest, diskExtents: { lengthBytes: number; hole: boolean }[]): void {
    assert(this.params !== null && this.params.allocationContextId !== null);
    const extents: Extent[] = diskExtents.map((extent) => ({
      lengthBytes: extent.lengthBytes,
      flags: extent.hole ? STATE_HOLE | STATE_ZERO : 0,
    }));
    this.send([encodeBlockStatusChunk(request.cookie, this.params.allocationContextId, extents)]);
  }

  private replyError(request: NbdRequest, errno: Errno, message: string): void {
    assert(this.params !== null && errno !== Errno.OK);
    this.counters.errorReplies += 1;
    // With structured replies, READ and BLOCK_STATUS errors travel as an error chunk;
    // other commands may use simple replies either way.
    const structured =
      this.params.structuredReplies && (request.type === Command.READ || request.type === Command.BLOCK_STATUS);
    this.send([structured ? encodeErrorChunk(request.cookie, errno, message) : encodeSimpleReply(request.cookie, errno)]);
  }

  /**
   * Writes one reply's buffers back to back, so replies never interleave. Replies
   * completed in the same event-loop turn are corked and leave in one writev when the
   * turn ends (setImmediate), instead of one system call per 16-byte reply. The reply to
   * the only request in flight has nothing to wait for and leaves at once. Returns false
   * when nothing was sent (the connection is gone); `written` is then never called.
   */
  private send(buffers: Buffer[], written?: () => void): boolean {
    if (buffers.length === 0 || this.socket.destroyed || this.phase === 'closed') return false;
    const now = !this.corked && this.inflightRequests <= 1;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      if (!now) setImmediate(this.uncork);
    }
    const last = buffers.length - 1;
    buffers.forEach((buffer, index) => {
      // The callback runs once the socket no longer needs the buffer, even on error.
      if (index === last && written !== undefined) this.socket.write(buffer, () => written());
      else this.socket.write(buffer);
    });
    if (now) this.uncork();
    return true;
  }

  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
    this.volume?.replied();
  };

  private whenIdle(callback: () => void): void {
    if (this.inflightRequests === 0) callback();
    else this.drainWaiters.push(callback);
  }

  private notifyIdle(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const waiter of waiters) waiter();
  }

  private finish(): void {
    if (this.phase === 'closed') return;
    this.phase = 'closing';
    this.socket.end();
    // A client that never closes its side is not waited for forever.
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }

  private onClose(): void {
    if (this.handshakeTimer !== null) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
    this.phase = 'closed';
    this.notifyIdle();
  }
}
