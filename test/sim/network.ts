// The simulated links between the primary and one peer: `connections` TCP connections,
// each with one FIFO channel per direction. A message is delivered after a random delay,
// never before an earlier message of the same channel (TCP keeps order within a
// connection); messages on different connections overtake each other freely.
//
// close() is the hook for partitions and crashes: it ends the session, and whatever is
// still in flight on it is lost, as with sockets that are closed. open() starts a new
// session on fresh connections.

import type { Prng } from '../unit/prng.js';
import type { EventQueue } from './event-queue.js';

export interface DelayRange {
  minUs: number;
  maxUs: number;
  /** Chance that a message is slow (a retransmission, a full socket buffer): up to 10x maxUs. */
  slowChance: number;
}

export type Direction = 'to-peer' | 'to-source';

export class PeerLinks {
  private session = 0;
  private up = false;
  /** Per direction and connection: when the last message sent on it will be delivered. */
  private readonly lastDeliveryUs: Record<Direction, number[]>;
  sent = 0;
  delivered = 0;
  /** Messages sent while the links were down, or in flight when they closed. */
  lost = 0;

  constructor(
    readonly peer: string,
    readonly connections: number,
    private readonly queue: EventQueue,
    private readonly prng: Prng,
    private readonly delay: DelayRange,
  ) {
    this.lastDeliveryUs = { 'to-peer': new Array<number>(connections).fill(0), 'to-source': new Array<number>(connections).fill(0) };
  }

  get isUp(): boolean {
    return this.up;
  }

  /** Changes at every open() and close(): a message belongs to the session it was sent in. */
  get sessionId(): number {
    return this.session;
  }

  open(): void {
    this.session += 1;
    this.up = true;
    for (const direction of ['to-peer', 'to-source'] as const) this.lastDeliveryUs[direction].fill(0);
  }

  close(): void {
    this.session += 1;
    this.up = false;
  }

  /** Sends a message on `connection`; `deliver` runs when it arrives, unless the session ended first. */
  send(direction: Direction, connection: number, label: string, deliver: () => void): void {
    if (connection < 0 || connection >= this.connections) throw new Error(`no connection ${connection} to ${this.peer}`);
    this.sent += 1;
    if (!this.up) {
      this.lost += 1;
      return;
    }
    const session = this.session;
    const channel = this.lastDeliveryUs[direction];
    const atUs = Math.max(this.queue.now + this.drawDelayUs(), channel[connection] ?? 0);
    channel[connection] = atUs;
    this.queue.at(atUs, `${label} ${direction === 'to-peer' ? '->' : '<-'} ${this.peer}#${connection}`, () => {
      if (session !== this.session) {
        this.lost += 1;
        return;
      }
      this.delivered += 1;
      deliver();
    });
  }

  private drawDelayUs(): number {
    const base = this.prng.between(this.delay.minUs, this.delay.maxUs);
    return this.prng.chance(this.delay.slowChance) ? base + this.prng.between(this.delay.maxUs, 10 * this.delay.maxUs) : base;
  }
}
