// One volume on a secondary node: the destination of its primary's mirror links. Entries
// arrive on the session's n connections; SecondaryCore (src/core/secondary-core.ts, around
// MirrorTarget; the secondary's part of the volume's ReplicaCore, started here with
// `follow`) puts them back in sequence order and says when to store, acknowledge,
// flush and take the primary's consistency points, when READY may go out and how a RESET
// runs; this module does the I/O. Storing an entry appends it
// to the per-source log `<dataDir>/peers/<primary>/<volume>/` under the primary's
// sequence number and, except in logship mode, writes it to the image.
//
// A session is the set of connections one source opened together (same session id in
// HELLO). A new session replaces the old one; READY is sent on all of its connections
// once every one has authenticated and the stores of the previous session are done, so
// the last sequence number it reports is exact. The source may also ask about ranges of
// the image as of an entry: VERIFY (a digest, online verify) and READ (the bytes, a
// primary whose own disk failed); both wait until that entry is in the image.
//
// Why one file of this size: every part (stores, READY, RESET, VERIFY and READ answers,
// following a newer epoch) acts on the same session and the same SecondaryCore, and the
// order between them (nothing answered before its entries are stored, READY only once
// the last session's work is done) is this file's to keep.

import crypto from 'node:crypto';
import { constants } from '../constants.js';
import { EpochHistory } from '../core/epoch-history.js';
import type { VolumeConfig } from '../control/config.js';
import type { Logger } from '../lib/log.js';
import type { MirrorTarget } from '../core/mirror-target.js';
import type { SecondaryAction, SecondaryCore } from '../core/secondary-core.js';
import { copyState } from '../core/volume-core.js';
import { encodeFrame, encodeReadDataFrame, PEER_DIVERGED_EXTENTS_MAX, PEER_HISTORY_EPOCHS_MAX, type PeerMessage } from '../protocol/peer/frames.js';
import { EntryType } from '../protocol/log-entry.js';
import type { LocalVolume } from '../storage/local-volume.js';
import type { HelloMessage, PeerLink } from './peer-link.js';
import type { SourceContact } from '../core/promotion.js';
import type { ContactRecord } from './source-contact.js';

type EntryMessage = Extract<PeerMessage, { type: 'entry' }>;
type VerifyMessage = Extract<PeerMessage, { type: 'verify' }>;
type ReadMessage = Extract<PeerMessage, { type: 'read' }>;

interface Session {
  id: number;
  links: (PeerLink | undefined)[];
  ready: boolean;
  /** The last entry the source holds (its HELLO). */
  sourceLastSeq: number;
}

/** What the node lends a replica target: its durable files, and the change of log a newer history asks for. */
export interface ReplicaTargetParts {
  /** The record of this copy's last contact with its primary. */
  contact: ContactRecord;
  /**
   * The copy follows `history`, newer than its own (a promotion elsewhere): its log moves
   * to the new primary's per-source directory, the history is made durable, and the
   * volume's core learns it. Nothing of a session is under way.
   */
  follow(history: EpochHistory): Promise<void>;
  /**
   * The copy's image was made at this start (an empty disk: a new volume, or a replaced
   * one): while it holds no entry, a source that holds some must send it all.
   */
  fresh: boolean;
}
export class ReplicaTarget {
  private readonly core: SecondaryCore<EntryMessage>;
  private session: Session | null = null;
  private closed = false;
  private ackPending: number | null = null;
  /** VERIFY requests waiting for the entries before them to be stored. */
  /** VERIFY and READ requests waiting until the entries they name are in the image. */
  private verifies: { session: Session; link: PeerLink; message: VerifyMessage | ReadMessage }[] = [];
  /** A newer history being taken on (the log moving), which sessions wait for. */
  private following: Promise<void> | null = null;
  /** Called once nothing of a session is under way. */
  private idleWaiters: (() => void)[] = [];

  constructor(
    readonly config: VolumeConfig,
    readonly volume: LocalVolume,
    private readonly log: Logger,
    private readonly counters: { peerProtocolErrors: number },
    /**
     * Restarts the per-source log after `seq` (a resync): what was received is applied and
     * made durable first. The regions the copy lacks arrive afterwards as entries.
     */
    private readonly resetLog: (seq: number) => Promise<void>,
    private readonly parts: ReplicaTargetParts,
  ) {
    this.core = volume.replica.follow({
      mode: config.mode === 'logship' ? 'logship' : config.mode === 'async' ? 'async' : 'sync',
      lastSeq: volume.log.lastSeq,
      windowBytesMax: constants.mirrorWindowBytesMax,
    });
  }

  /** The volume's primary, which this copy follows (its history's). */
  get source(): string {
    return this.volume.replica.history.current.primary;
  }

  /** What this copy knew of its primary at their last contact (null: none since it was made). */
  get contact(): SourceContact | null {
    return this.parts.contact.current;
  }

  /**
   * An authenticated connection of the source; READY goes out once its whole session is
   * here. A source in a newer epoch (its HELLO's history, checked by the peer server) is
   * followed first: the session of the old one ends and the log moves.
   */
  attach(hello: HelloMessage, link: PeerLink): void {
    if (this.closed) {
      link.close('node stopping');
      return;
    }
    // A newer epoch's primary, or this copy's primary that restarted its epoch after a crash: followed anew.
    const restarted = hello.epoch === this.volume.replica.epoch && this.volume.replica.judgeSource(hello.fromNode, hello.history).kind === 'newer';
    if (this.following !== null || hello.epoch > this.volume.replica.epoch || restarted) {
      this.following ??= this.followNewer(hello);
      this.following.then(
        () => this.attach(hello, link),
        (error: unknown) => link.close(`could not follow epoch ${hello.epoch}: ${String(error)}`),
      );
      return;
    }
    if (hello.epoch !== this.volume.replica.epoch || hello.fromNode !== this.source) {
      link.close(`node ${hello.fromNode} in epoch ${hello.epoch} is not the primary this copy follows (${this.source}, epoch ${this.volume.replica.epoch})`);
      return;
    }
    if (this.session === null || this.session.id !== hello.session) {
      if (this.session !== null) this.endSession('replaced by a new session');
      this.session = { id: hello.session, links: Array.from({ length: hello.connections }, () => undefined), ready: false, sourceLastSeq: hello.lastSeq };
    }
    const session = this.session;
    if (session.links.length !== hello.connections || session.links[hello.connectionIndex] !== undefined) {
      this.counters.peerProtocolErrors += 1;
      link.close('connection does not fit its session');
      return;
    }
    session.links[hello.connectionIndex] = link;
    link.onClose((reason) => {
      if (this.session === session) this.endSession(reason);
    });
    link.receive((message) => this.onMessage(session, link, message));
    if (session.links.every((candidate) => candidate !== undefined)) this.run(this.core.sessionStarted(session.id));
  }

  status(): { source: string; session: boolean } & ReturnType<MirrorTarget<EntryMessage>['status']> {
    return { source: this.source, session: this.session?.ready === true, ...this.core.status() };
  }

  close(): void {
    this.closed = true;
    this.endSession('node stopping');
  }

  /**
   * Ends the session (a promotion of this copy): resolves once nothing of it is under way.
   * Later connections are refused.
   */
  async retire(reason: string): Promise<void> {
    this.closed = true;
    this.endSession(reason);
    await this.idle();
  }

  /** After `retire`, when the change it was for did not happen: sessions are taken again. */
  resume(): void {
    this.closed = false;
  }

  /** The source went silent (heartbeats): its connections are closed. */
  sourceDown(reason: string): void {
    this.endSession(`source down: ${reason}`);
  }

  /**
   * A heartbeat from the source: the time goes into every element of the session's
   * connection array, and the last entry it names for the volume into the contact record.
   */
  sourceHeard(nowMs: number, sourceLastSeq: number | null): void {
    for (const link of this.session?.links ?? []) if (link !== undefined) link.lastHeartbeatMs = nowMs;
    if (sourceLastSeq !== null) this.parts.contact.heard(sourceLastSeq);
  }

  /** Resolves once nothing of a session is under way (no store, sync, checkpoint or reset). */
  private idle(): Promise<void> {
    if (this.core.idle) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** The source's history is newer than this copy's: the old session ends, and the log moves to the new primary's directory. */
  private async followNewer(hello: HelloMessage): Promise<void> {
    try {
      const verdict = this.volume.replica.judgeSource(hello.fromNode, hello.history);
      if (verdict.kind !== 'newer') throw new Error(`node ${hello.fromNode} is not a newer epoch's primary to follow (${verdict.kind})`);
      const from = this.source;
      this.endSession(`node ${hello.fromNode} is primary in epoch ${hello.epoch}`);
      await this.idle();
      await this.parts.follow(verdict.history);
      this.parts.contact.forget();
      this.log.warn('following a new primary', { from, to: this.source, epoch: this.volume.replica.epoch, firstSeq: this.volume.replica.history.current.firstSeq });
    } finally {
      this.following = null;
    }
  }

  /** READY on every connection of the session (the core says when: nothing of the last one under way). */
  private sendReady(lastSeq: number): void {
    const session = this.session;
    if (session === null) return;
    const logStatus = this.volume.log.status();
    // An empty image made at this start (a replaced disk, or a copy that joins late) lacks
    // whatever the source holds, which no record of the source's names: all of it is sent.
    const empty = this.parts.fresh && lastSeq === 0 && session.sourceLastSeq > 0;
    if (empty) this.log.warn('this copy is empty and its source holds entries: it lacks all it has not marked', { source: this.source, sourceLastSeq: session.sourceLastSeq });
    const ready = encodeFrame({
      type: 'ready',
      epoch: this.volume.replica.epoch,
      history: this.volume.replica.history.last(PEER_HISTORY_EPOCHS_MAX),
      // A copy whose log was made anew at start (LogStatus.needsFullResync) asks for all of it.
      disk: copyState({ failed: this.volume.failed || this.core.status().failed, needsFullResync: logStatus.needsFullResync, streaming: null }),
      lastSeq,
      durableSeq: Math.min(logStatus.durableSeq, lastSeq),
      cpSeq: logStatus.cpSeq,
      diverged: this.volume.log.divergedAfter !== null,
      divergedAfter: Math.min(this.volume.log.divergedAfter ?? lastSeq, lastSeq),
      empty,
    });
    session.ready = true;
    for (const link of session.links) {
      if (link !== undefined) link.state = 'up';
      link?.send(ready);
    }
    // Not in sync until the source says so (IN_SYNC); written before anything of the session is stored.
    this.parts.contact.started(this.source, this.volume.replica.epoch, lastSeq);
    this.log.info('source connected', { source: this.source, lastSeq, connections: session.links.length });
  }

  private endSession(reason: string): void {
    const session = this.session;
    if (session === null) return;
    this.session = null;
    for (const link of session.links) link?.close(reason);
    this.core.sessionEnded();
    this.verifies = [];
    if (session.ready) {
      this.log.warn('source disconnected', { source: this.source, reason });
      // A session this node ended (it stops, or leaves the role) says nothing of what the
      // source acknowledged after it: only a source that went away leaves it in sync.
      this.parts.contact.ended(this.core.status().storedSeq, reason, !this.closed);
    }
    this.settleIdle();
  }

  /** Wakes what waits for the session's work to end, once it has. */
  private settleIdle(): void {
    if (this.idleWaiters.length === 0 || !this.core.idle) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const waiter of waiters) waiter();
  }

  private onMessage(session: Session, link: PeerLink, message: PeerMessage): void {
    if (this.session !== session || !session.ready) {
      this.protocolError(link, `${message.type} before READY`);
      return;
    }
    switch (message.type) {
      case 'entry': {
        const problem = this.checkEntry(message);
        if (problem !== null) return this.protocolError(link, problem);
        return this.run(this.core.entry(message.header.seq, message.bodyBytes, message));
      }
      case 'flush':
        return this.run(this.core.flush(message.seq));
      case 'sync':
        return this.run(this.core.sync(message.cpSeq));
      case 'verify': {
        if (message.offset + message.lengthBytes > this.volume.sizeBytes) {
          return this.protocolError(link, `VERIFY reaches past the end of the volume (${message.offset}+${message.lengthBytes})`);
        }
        if (this.verifies.length >= constants.verifyRegionsInflightMax + constants.peerReadsInflightMax) return this.protocolError(link, 'too many VERIFY requests waiting');
        this.verifies.push({ session, link, message });
        this.answerVerifies();
        return;
      }
      case 'read': {
        // A diskless primary's read (its own disk failed): the range as of entry `seq`.
        if (message.offset + message.lengthBytes > this.volume.sizeBytes) {
          return this.protocolError(link, `READ reaches past the end of the volume (${message.offset}+${message.lengthBytes})`);
        }
        if (this.verifies.length >= constants.verifyRegionsInflightMax + constants.peerReadsInflightMax) return this.protocolError(link, 'too many READ requests waiting');
        this.verifies.push({ session, link, message });
        this.answerVerifies();
        return;
      }
      case 'reset':
        return this.run(this.core.resetAsked(session.id, message.seq, message.reportAfter));
      case 'in-sync':
        this.parts.contact.inSync(message.seq);
        return;
      default:
        return this.protocolError(link, `unexpected ${message.type} from the source`);
    }
  }

  /**
   * The core's `name-and-keep`: the regions of the entries held past `reportAfter` are kept
   * durably (the log about to be made anew no longer holds them) and named (DIVERGED).
   */
  private nameDiverged(reportAfter: number): void {
    const extents = this.volume.log.entriesAfter(reportAfter);
    this.volume.log.keepNamed(extents, this.volume.sizeBytes);
    if (extents === null) this.send(encodeFrame({ type: 'diverged', all: true, extents: [] }));
    for (let at = 0; extents !== null && at < extents.length; at += PEER_DIVERGED_EXTENTS_MAX) {
      this.send(encodeFrame({ type: 'diverged', all: false, extents: extents.slice(at, at + PEER_DIVERGED_EXTENTS_MAX) }));
    }
    if (extents === null || extents.length > 0) {
      this.log.warn('naming to the source the regions of entries it may have lost', {
        source: this.source,
        afterSeq: reportAfter,
        extents: extents === null ? 'all' : extents.length,
      });
    }
  }

  /** The core's `restart-log`: the per-source log restarts after `seq` for a resync. */
  private restartLog(seq: number): void {
    this.log.info('restarting the per-source log for a resync', { source: this.source, fromSeq: this.volume.log.lastSeq, toSeq: seq });
    const startedMs = Date.now();
    this.resetLog(seq).then(
      () => {
        this.log.info('per-source log restarted', { source: this.source, seq, ms: Date.now() - startedMs });
        this.after(this.core.logRestarted(seq, null));
      },
      (error: unknown) => {
        this.log.error('could not restart the per-source log for a resync', { source: this.source, error: String(error) });
        this.after(this.core.logRestarted(seq, String(error)));
      },
    );
  }

  /** An entry that passed its checksums but cannot belong to this volume. */
  private checkEntry(message: EntryMessage): string | null {
    const { header } = message;
    // The decoder checked that the payload has header.payloadBytes bytes.
    const payloadBytes = header.payloadBytes;
    if (header.type === EntryType.CONSISTENCY_POINT) return header.lengthBytes === 0 && payloadBytes === 0 ? null : 'malformed CP entry';
    if (header.offset + header.lengthBytes > this.volume.sizeBytes) {
      return `entry ${header.seq} reaches past the end of the volume (${header.offset}+${header.lengthBytes})`;
    }
    if (header.type === EntryType.WRITE ? payloadBytes !== header.lengthBytes : payloadBytes !== 0) {
      return `entry ${header.seq} carries ${payloadBytes} payload bytes for a length of ${header.lengthBytes}`;
    }
    if (payloadBytes > this.volume.log.entryPayloadBytesMax) return `entry ${header.seq} is larger than this node's log takes`;
    // The session's HELLO named the epoch this node knows; no entry can be numbered in a later one.
    if (this.volume.replica.epochVerdict(header.epoch) === 'newer') return `entry ${header.seq} carries epoch ${header.epoch}, newer than the session's ${this.volume.replica.epoch}`;
    return null;
  }

  /** Counts and logs it, and closes `link`, or the whole session when the core found it. */
  private protocolError(link: PeerLink | null, reason: string): void {
    this.counters.peerProtocolErrors += 1;
    this.log.error('protocol error from the source', { source: this.source, reason });
    if (link !== null) link.close(`protocol error: ${reason}`);
    else this.endSession(`protocol error: ${reason}`);
  }

  private send(frame: Buffer): void {
    const link = this.session?.links.find((candidate) => candidate !== undefined && candidate.state !== 'closed');
    link?.send(frame);
  }

  private run(actions: SecondaryAction<EntryMessage>[]): void {
    for (const action of actions) {
      switch (action.kind) {
        case 'store': {
          const { header, payload } = action.frame;
          this.volume.replicate(header, payload, this.config.mode !== 'logship').then(
            () => this.after(this.core.stored(action.seq, null)),
            (error: unknown) => {
              this.log.error('could not store an entry from the source', { source: this.source, seq: action.seq, error: String(error) });
              this.after(this.core.stored(action.seq, String(error)));
            },
          );
          break;
        }
        case 'send-ack':
          // ACKs are cumulative: those of one turn of the event loop collapse into the last.
          if (action.status !== 0) {
            this.send(encodeFrame({ type: 'ack', seq: action.seq, status: action.status }));
          } else if (this.ackPending === null) {
            this.ackPending = action.seq;
            setImmediate(() => {
              const seq = this.ackPending;
              this.ackPending = null;
              if (seq !== null) this.send(encodeFrame({ type: 'ack', seq, status: 0 }));
            });
          } else {
            this.ackPending = Math.max(this.ackPending, action.seq);
          }
          break;
        case 'sync-log':
          this.volume.log.syncTo(action.seq).then(
            () => this.after(this.core.logSynced(action.seq, null)),
            (error: unknown) => this.after(this.core.logSynced(action.seq, String(error))),
          );
          break;
        case 'send-flushed':
          this.send(encodeFrame({ type: 'flushed', seq: action.seq, status: action.status }));
          break;
        case 'checkpoint':
          this.checkpoint(action.cpSeq).then(
            () => this.after(this.core.checkpointDone(action.cpSeq, null)),
            (error: unknown) => {
              this.log.error('could not take the source\'s consistency point', { source: this.source, cpSeq: action.cpSeq, error: String(error) });
              this.after(this.core.checkpointDone(action.cpSeq, String(error)));
            },
          );
          break;
        case 'send-synced':
          this.send(encodeFrame({ type: 'synced', cpSeq: action.cpSeq, status: action.status }));
          break;
        case 'protocol-error':
          this.protocolError(null, action.reason);
          break;
        case 'send-ready':
          if (this.session?.id === action.session) this.sendReady(action.lastSeq);
          break;
        case 'name-and-keep': {
          let error: string | null = null;
          try {
            this.nameDiverged(action.reportAfter);
          } catch (caught) {
            error = String(caught);
            this.log.error('could not keep the regions named to the source; the log is not restarted', { source: this.source, error });
          }
          this.run(this.core.named(error));
          break;
        }
        case 'restart-log':
          this.restartLog(action.seq);
          break;
        case 'send-reset-done':
          if (this.session?.id === action.session) this.send(encodeFrame({ type: 'reset-done', seq: action.seq, status: action.status }));
          break;
      }
    }
  }

  /**
   * Answers each VERIFY whose entries (up to its `seq`) are all in the image: the digest
   * of the range as it is now. The source holds back changes to the range meanwhile, so
   * nothing after `seq` touches it. A logship copy's image lags until the primary's
   * consistency point, so it answers status 2 (cannot compare).
   */
  private answerVerifies(): void {
    const storedSeq = this.core.status().storedSeq;
    const ready = this.verifies.filter((waiting) => waiting.message.seq <= storedSeq || this.config.mode === 'logship');
    if (ready.length === 0) return;
    this.verifies = this.verifies.filter((waiting) => !ready.includes(waiting));
    for (const { session, link, message } of ready) {
      if (message.type === 'read') {
        this.answerRead(session, link, message);
        continue;
      }
      const answer = (status: number, digest: Buffer): void => {
        if (this.session === session) link.send(encodeFrame({ type: 'verified', token: message.token, status, digest }));
      };
      if (this.config.mode === 'logship') {
        answer(2, Buffer.alloc(32));
        continue;
      }
      this.volume.read(message.offset, message.lengthBytes).then(
        (data) => answer(0, crypto.createHash('sha256').update(data).digest()),
        () => answer(1, Buffer.alloc(32)),
      );
    }
  }

  /**
   * Answers a READ whose entries are all in the image: the bytes as they are now (the
   * source holds back changes to the range meanwhile). A logship copy's image lags until
   * the primary's consistency point, and a failed one holds nothing to trust: status 2 and 1.
   */
  private answerRead(session: Session, link: PeerLink, message: ReadMessage): void {
    const failed = (status: number): void => {
      if (this.session === session) link.send(encodeFrame({ type: 'read-failed', token: message.token, status }));
    };
    if (this.config.mode === 'logship') return failed(2);
    this.volume.read(message.offset, message.lengthBytes).then(
      (data) => {
        if (this.session === session) link.send(encodeReadDataFrame(message.token, message.offset, data));
      },
      () => failed(1),
    );
  }

  /** After a completion: its actions, then the VERIFY requests it may have made answerable. */
  private after(actions: SecondaryAction<EntryMessage>[]): void {
    this.run(actions);
    if (this.verifies.length > 0) this.answerVerifies();
    this.settleIdle();
  }

  /** The source's consistency point: logship entries applied first, then the image durable and the log released. */
  private async checkpoint(cpSeq: number): Promise<void> {
    if (this.config.mode === 'logship') await this.volume.applyLoggedThrough(cpSeq);
    // The source's CP is durable there: entries up to it cannot have been lost by it.
    this.volume.log.primaryCheckpointed(cpSeq);
    await this.volume.checkpoint();
  }
}
