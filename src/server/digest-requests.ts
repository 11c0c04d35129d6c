// The VERIFY requests a primary has sent and not had answered (online verify, see
// online-verify.ts): each waits, by its token, for the VERIFIED of the peer it went to, at
// most `timeoutMs`, and fails when that peer's links go. Bounded by the verify itself,
// which has at most verifyRegionsInflightMax regions being compared.

import type { Clock } from '../io/clock.js';

interface Waiter {
  peer: string;
  resolve: (digest: Buffer) => void;
  reject: (error: Error) => void;
}

export class DigestRequests {
  private readonly waiters = new Map<number, Waiter>();
  private nextToken = 1;

  constructor(
    private readonly clock: Clock,
    private readonly timeoutMs: number,
  ) {}

  /** Sends a request with a fresh token (`send`) and resolves with the peer's digest. */
  ask(peer: string, send: (token: number) => void): Promise<Buffer> {
    const token = this.nextToken;
    this.nextToken = (this.nextToken % 0xffff_fffe) + 1;
    return new Promise<Buffer>((resolve, reject) => {
      const timer = this.clock.after(this.timeoutMs, () => {
        this.waiters.delete(token);
        reject(new Error(`no answer within ${this.timeoutMs} ms`));
      });
      this.waiters.set(token, {
        peer,
        resolve: (digest) => {
          timer.cancel();
          resolve(digest);
        },
        reject: (error) => {
          timer.cancel();
          reject(error);
        },
      });
      send(token);
    });
  }

  /** VERIFIED from `peer`; false when no request of that peer has the token (a protocol error). */
  answered(peer: string, token: number, status: number, digest: Buffer): boolean {
    const waiter = this.waiters.get(token);
    if (waiter === undefined || waiter.peer !== peer) return false;
    this.waiters.delete(token);
    if (status === 0) waiter.resolve(digest);
    else waiter.reject(new Error(`the peer could not compute it (status ${status})`));
    return true;
  }

  /** The peer's links went down: its digests will not come. */
  failPeer(peer: string, reason: string): void {
    for (const [token, waiter] of this.waiters) {
      if (waiter.peer !== peer) continue;
      this.waiters.delete(token);
      waiter.reject(new Error(reason));
    }
  }
}
