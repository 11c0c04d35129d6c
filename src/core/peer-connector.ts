// When a primary connects to a peer again (docs/architecture.md, "Where each decision
// lives"): at start and whenever the heartbeats call the peer up, at once; after a failed
// attempt, a lost or dropped session, after a back-off (Backoff) that doubles with each
// failure, but only while the heartbeats do not call the peer down (then it waits for them
// to call it up); a problem is reported once until it changes. Pure: PeerSessions carries
// out the actions on its clock and its links, one PeerConnector per peer.

import { Backoff } from './backoff.js';

export type ConnectorAction =
  /** Set up a session's connections now; report connected() or failed(). */
  | { kind: 'connect' }
  /** Call timerFired() after `delayMs`. */
  | { kind: 'wait'; delayMs: number }
  /** The wait set earlier must not fire. */
  | { kind: 'cancel-wait' }
  /** Say why the peer cannot be reached (a new problem: the same one is said once). */
  | { kind: 'report'; problem: string };

export class PeerConnector {
  private phase: 'idle' | 'connecting' | 'up' | 'waiting' = 'idle';
  private lastProblem = '';
  private readonly backoff: Backoff;

  constructor(delayMsMin: number, delayMsMax: number) {
    this.backoff = new Backoff(delayMsMin, delayMsMax);
  }

  /** The mirror starts: connect if the heartbeats allow it. */
  start(available: boolean): ConnectorAction[] {
    return this.phase === 'idle' && available ? this.connect() : [];
  }

  /** A session is up. */
  connected(): void {
    this.phase = 'up';
    this.backoff.reset();
    this.lastProblem = '';
  }

  /**
   * An attempt failed, or the session was lost or dropped: try again after the back-off,
   * unless the heartbeats call the peer down (`available` false): then when they call it up.
   */
  failed(problem: string, available: boolean): ConnectorAction[] {
    // A retry is set already (a second link of the same session reporting its loss).
    if (this.phase === 'waiting') return [];
    const actions: ConnectorAction[] = [];
    if (problem !== this.lastProblem) {
      actions.push({ kind: 'report', problem });
      this.lastProblem = problem;
    }
    const delayMs = this.backoff.next();
    if (!available) {
      this.phase = 'idle';
      return actions;
    }
    this.phase = 'waiting';
    actions.push({ kind: 'wait', delayMs });
    return actions;
  }

  /** The wait ran out: connect, if the heartbeats still allow it. */
  timerFired(available: boolean): ConnectorAction[] {
    if (this.phase !== 'waiting') return [];
    this.phase = 'idle';
    return available ? this.connect() : [];
  }

  /** The heartbeats call the peer up (first contact, after its probation, or a restart): connect now. */
  heartbeatUp(): ConnectorAction[] {
    if (this.phase === 'up' || this.phase === 'connecting') return [];
    const actions: ConnectorAction[] = this.phase === 'waiting' ? [{ kind: 'cancel-wait' }] : [];
    this.backoff.reset();
    return [...actions, ...this.connect()];
  }

  /** The heartbeats call the peer down: no retry until they call it up (its links are closed by the caller). */
  heartbeatDown(): ConnectorAction[] {
    if (this.phase !== 'waiting') return [];
    this.phase = 'idle';
    return [{ kind: 'cancel-wait' }];
  }

  private connect(): ConnectorAction[] {
    this.phase = 'connecting';
    return [{ kind: 'connect' }];
  }
}
