// Online verify of one mirrored volume on its primary (`blockmirror verify`): every region
// of the volume is compared, by SHA-256, between this node's copy and each streaming
// peer's, while clients keep using the volume.
//
// Each region is compared at a consistent moment: the primary holds back new changes to
// it (LocalVolume.whileHeld), reads it once every change already logged is applied, and
// asks each peer (VERIFY, on the connection the region's entries travel on) for its
// digest once the peer has stored every entry up to the same sequence number. Changes to
// the region wait only for that round trip; other regions go on. A region that differs
// is marked in the peer's dirty bitmap at once and the peer's copy becomes
// `inconsistent`; with `repair` the peer is then resynced from this node.

import crypto from 'node:crypto';
import { constants } from '../constants.js';

export interface VerifyPeerReport {
  node: string;
  /** Every region was compared with this peer. */
  compared: boolean;
  /** Why it was not (or not fully) compared. */
  note: string | null;
  mismatchedRegions: number;
  mismatchedBytes: number;
  /** With repair: whether its resync finished (null: nothing to repair, or no repair asked). */
  repaired: boolean | null;
}

export interface VerifyReport {
  volume: string;
  state: 'running' | 'repairing' | 'done' | 'failed';
  repair: boolean;
  startedAt: string;
  finishedAt: string | null;
  regionBytes: number;
  totalBytes: number;
  checkedBytes: number;
  peers: VerifyPeerReport[];
  /** The first mismatching regions (all are counted in `peers`). */
  mismatches: { node: string; offset: number; lengthBytes: number }[];
  /** Every peer compared and every region the same (null until done). */
  matched: boolean | null;
  error: string | null;
}

/** What a verify needs from the mirror engine. */
export interface VerifyHost {
  volume: string;
  sizeBytes: number;
  regionBytes: number;
  /** Each peer and, when it cannot be compared now, why. */
  peers(): { node: string; unavailable: string | null }[];
  whileHeld<T>(offset: number, lengthBytes: number, use: (data: Buffer, seq: number) => Promise<T>): Promise<T>;
  /** The peer's digest of the range once it has stored every entry up to `seq`; rejects when it cannot answer. */
  askDigest(node: string, seq: number, offset: number, lengthBytes: number): Promise<Buffer>;
  /** The range differs on the peer: its copy is inconsistent and the range must be resent. */
  markOutOfSync(node: string, offset: number, lengthBytes: number): void;
  /** Resyncs the peer's marked regions now; resolves true when it is up to date again. */
  repair(node: string): Promise<boolean>;
}

export class OnlineVerify {
  readonly report: VerifyReport;

  constructor(
    private readonly host: VerifyHost,
    repair: boolean,
  ) {
    this.report = {
      volume: host.volume,
      state: 'running',
      repair,
      startedAt: new Date().toISOString(),
      finishedAt: null,
      regionBytes: host.regionBytes,
      totalBytes: host.sizeBytes,
      checkedBytes: 0,
      peers: host.peers().map(({ node, unavailable }) => ({
        node,
        compared: unavailable === null,
        note: unavailable,
        mismatchedRegions: 0,
        mismatchedBytes: 0,
        repaired: null,
      })),
      mismatches: [],
      matched: null,
      error: null,
    };
  }

  get running(): boolean {
    return this.report.state === 'running' || this.report.state === 'repairing';
  }

  async run(): Promise<VerifyReport> {
    const report = this.report;
    try {
      const active = new Set(report.peers.filter((peer) => peer.compared).map((peer) => peer.node));
      if (active.size === 0) throw new Error('no peer is streaming this volume: there is nothing to compare with');
      const regions = Math.ceil(report.totalBytes / report.regionBytes);
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < regions && active.size > 0) {
          const region = next;
          next += 1;
          await this.compare(region, active);
        }
      };
      await Promise.all(Array.from({ length: constants.verifyRegionsInflightMax }, worker));
      const differing = report.peers.filter((peer) => peer.mismatchedRegions > 0);
      if (report.repair && differing.length > 0) {
        report.state = 'repairing';
        await Promise.all(
          differing.map(async (peer) => {
            peer.repaired = await this.host.repair(peer.node);
          }),
        );
      }
      report.matched = report.peers.every((peer) => peer.compared && peer.mismatchedRegions === 0);
      report.state = 'done';
    } catch (error) {
      report.error = error instanceof Error ? error.message : String(error);
      report.state = 'failed';
    }
    report.finishedAt = new Date().toISOString();
    return report;
  }

  /** Compares one region with every peer still being compared. */
  private async compare(region: number, active: Set<string>): Promise<void> {
    const report = this.report;
    const offset = region * report.regionBytes;
    const lengthBytes = Math.min(report.regionBytes, report.totalBytes - offset);
    await this.host.whileHeld(offset, lengthBytes, async (data, seq) => {
      const digest = crypto.createHash('sha256').update(data).digest();
      const nodes = [...active];
      const answers = await Promise.allSettled(nodes.map((node) => this.host.askDigest(node, seq, offset, lengthBytes)));
      answers.forEach((answer, index) => {
        const node = nodes[index] ?? '';
        const peer = report.peers.find((candidate) => candidate.node === node);
        if (peer === undefined || !active.has(node)) return;
        if (answer.status === 'rejected') {
          // It went away (or cannot answer): the rest of the volume is not compared with it.
          active.delete(node);
          peer.compared = false;
          peer.note = `stopped at offset ${offset}: ${answer.reason instanceof Error ? answer.reason.message : String(answer.reason)}`;
          return;
        }
        if (answer.value.equals(digest)) return;
        peer.mismatchedRegions += 1;
        peer.mismatchedBytes += lengthBytes;
        if (report.mismatches.length < constants.verifyMismatchesListedMax) report.mismatches.push({ node, offset, lengthBytes });
        this.host.markOutOfSync(node, offset, lengthBytes);
      });
    });
    report.checkedBytes += lengthBytes;
  }
}
