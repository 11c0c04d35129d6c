// Reads a diskless primary asks of its peers (docs/operations.md, "A failed disk"): when
// the primary's own disk failed, the bytes of a range come from an up-to-date peer, as of
// the last entry numbered (READ names it; the peer answers once every entry up to it is in
// its image, so a read sees every write acknowledged before it). A range is asked for in
// pieces no larger than a peer's ENTRY body takes; a piece a peer cannot answer (READ_FAILED,
// its links lost, no answer in time) is asked of the next peer, and only when no peer is
// left does the read fail.

import { constants } from '../constants.js';
import { BlockmirrorError } from '../lib/errors.js';
import type { Clock, Timer } from '../io/clock.js';
import { encodeFrame, PEER_READ_BYTES_MAX, type PeerMessage } from '../protocol/peer/frames.js';

type ReadData = Extract<PeerMessage, { type: 'read-data' }>;
type ReadFailed = Extract<PeerMessage, { type: 'read-failed' }>;

/** What the reads need of the mirror engine. */
export interface PeerReadParts {
  clock: Clock;
  /** Peers that may answer now (streaming, up to date), in order of preference. */
  candidates: () => string[];
  /** Sends a frame on the peer's first link; false when it has none up. */
  send: (peer: string, frame: Buffer) => boolean;
  /** The last entry numbered: a read is answered as of it. */
  lastSeq: () => number;
  /** The largest piece one READ asks for (the peers' ENTRY payload limit). */
  pieceBytesMax: number;
}

interface Waiting {
  peer: string;
  offset: number;
  lengthBytes: number;
  resolve: (data: ReadData) => void;
  reject: (error: Error) => void;
  timer: Timer;
}

export class PeerReads {
  private readonly waiting = new Map<number, Waiting>();
  private nextToken = 1;
  /** Pieces waiting for room: at most peerReadsInflightMax READs are out at once. */
  private readonly queue: (() => void)[] = [];

  constructor(private readonly parts: PeerReadParts) {}

  /** READs out now. */
  get inflight(): number {
    return this.waiting.size;
  }

  /** Fills `buffer` with the volume's bytes at `offset`, from the peers. */
  async read(buffer: Buffer, offset: number): Promise<void> {
    const pieceMax = Math.min(PEER_READ_BYTES_MAX, this.parts.pieceBytesMax);
    const pieces: Promise<void>[] = [];
    for (let at = 0; at < buffer.length; at += pieceMax) {
      const piece = buffer.subarray(at, Math.min(buffer.length, at + pieceMax));
      pieces.push(this.readPiece(piece, offset + at));
    }
    await Promise.all(pieces);
  }

  private async readPiece(piece: Buffer, offset: number): Promise<void> {
    const tried: string[] = [];
    let lastError = 'no peer holds an up-to-date copy';
    for (;;) {
      const peer = this.parts.candidates().find((candidate) => !tried.includes(candidate));
      if (peer === undefined) {
        throw new BlockmirrorError('ERR_VOLUME_IO', `read of ${piece.length} bytes at ${offset} failed: this node's disk failed, and ${tried.length === 0 ? lastError : `no peer answered (${lastError})`}`);
      }
      tried.push(peer);
      try {
        const data = await this.ask(peer, offset, piece.length);
        let at = 0;
        for (const slice of data.payload) {
          slice.copy(piece, at);
          at += slice.length;
        }
        return;
      } catch (error) {
        lastError = `${peer}: ${(error as Error).message}`;
      }
    }
  }

  private async ask(peer: string, offset: number, lengthBytes: number): Promise<ReadData> {
    while (this.waiting.size >= constants.peerReadsInflightMax) await new Promise<void>((resolve) => this.queue.push(resolve));
    const token = this.nextToken;
    this.nextToken = this.nextToken >= 0xffff_ffff ? 1 : this.nextToken + 1;
    return new Promise<ReadData>((resolve, reject) => {
      const done = (): void => {
        const entry = this.waiting.get(token);
        if (entry === undefined) return;
        entry.timer.cancel();
        this.waiting.delete(token);
        this.queue.shift()?.();
      };
      const timer = this.parts.clock.after(constants.peerReadTimeoutMs, () => {
        done();
        reject(new Error(`no answer in ${constants.peerReadTimeoutMs} ms`));
      });
      this.waiting.set(token, {
        peer,
        offset,
        lengthBytes,
        resolve: (data) => {
          done();
          resolve(data);
        },
        reject: (error) => {
          done();
          reject(error);
        },
        timer,
      });
      if (!this.parts.send(peer, encodeFrame({ type: 'read', token, seq: this.parts.lastSeq(), offset, lengthBytes }))) {
        this.waiting.get(token)?.reject(new Error('no link up'));
      }
    });
  }

  /**
   * READ_DATA or READ_FAILED from `peer`: false when it answers no READ of this node's to
   * it, or a different range (a protocol error).
   */
  answered(peer: string, message: ReadData | ReadFailed): boolean {
    const token = message.type === 'read-data' ? message.header.seq : message.token;
    const entry = this.waiting.get(token);
    if (entry === undefined || entry.peer !== peer) return false;
    if (message.type === 'read-failed') {
      entry.reject(new Error(message.status === 2 ? 'its image lags (logship)' : 'its disk could not read the range'));
      return true;
    }
    if (message.header.offset !== entry.offset || message.header.lengthBytes !== entry.lengthBytes) return false;
    entry.resolve(message);
    return true;
  }

  /** The peer's links went down: what it was asked is asked of another. */
  failPeer(peer: string, reason: string): void {
    for (const entry of [...this.waiting.values()]) if (entry.peer === peer) entry.reject(new Error(reason));
  }

  /** The engine stops: every read fails. */
  failAll(reason: string): void {
    for (const entry of [...this.waiting.values()]) entry.reject(new Error(reason));
  }
}
