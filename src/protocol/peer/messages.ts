// The messages of the node-to-node protocol and the numbers that fix their wire format:
// frame types, refusal codes, disk states and size limits. Only types and constants live
// here, so both the codec (frames.ts) and the cores that act on messages can import them
// without pulling in the codec.

import { constants } from '../../constants.js';
import { DISK_STATES, type DiskState } from '../disk-state.js';
import type { EntryHeader } from '../log-entry.js';

export const PEER_FRAME_MAGIC = 0x424d5046; // 'BMPF'
export const PEER_FRAME_HEADER_BYTES = 16;
export const PEER_PROTOCOL_VERSION = 3;
export const PEER_NONCE_BYTES = 32;
export const PEER_MAC_BYTES = 32;
/** A session's connections: the cluster file's `connections` is bounded by the same limit. */
export const PEER_CONNECTIONS_MAX = constants.peerConnectionsMax;
export const PEER_NAME_BYTES_MAX = 255;
export const PEER_REFUSE_MESSAGE_BYTES_MAX = 1024;
/** Epochs a HELLO or READY carries at most: the last ones of the sender's history. */
export const PEER_HISTORY_EPOCHS_MAX = 16;
/** Every frame but ENTRY; the largest legal one (HELLO with a full history) is 5450 bytes. */
export const PEER_CONTROL_BODY_BYTES_MAX = 8192;
/** Extents in one DIVERGED frame (8 + 64 × 16 bytes). */
export const PEER_DIVERGED_EXTENTS_MAX = 64;
/** The largest region one VERIFY may ask about. */
export const PEER_VERIFY_BYTES_MAX = 4 * 1024 * 1024;
/** The largest range one READ may ask for (its answer must also fit the reader's ENTRY body limit). */
export const PEER_READ_BYTES_MAX = 4 * 1024 * 1024;
export const PEER_DIGEST_BYTES = 32;

export const PeerFrameType = {
  HELLO: 1,
  CHALLENGE: 2,
  AUTH: 3,
  READY: 4,
  REFUSE: 5,
  /**
   * The target's answer in place of READY when the copies are in split brain (each holds
   * writes past the last entry they share that the other lacks): what it found and what
   * its policy decided. The target closes the connection after it.
   */
  SPLIT_BRAIN: 6,
  ENTRY: 16,
  ACK: 17,
  FLUSH: 18,
  FLUSHED: 19,
  SYNC: 20,
  SYNCED: 21,
  /** Resync: the peer restarts its per-source log after `seq` (it will get the rest by region). */
  RESET: 22,
  RESET_DONE: 23,
  /** Before RESET_DONE: regions the target holds entries for past RESET's `reportAfter`. */
  DIVERGED: 24,
  /** Online verify: the digest of a region as of entry `seq`, and the answer. */
  VERIFY: 25,
  VERIFIED: 26,
  /**
   * The target is up to date from entry `seq` on: its acknowledgements count for clients'
   * replies (sync mode) until the session ends. Sent when it starts to stream.
   */
  IN_SYNC: 27,
  /**
   * A primary whose own disk failed (diskless) reads from an up-to-date peer: READ asks
   * for a range as of entry `seq`; READ_DATA (laid out as an ENTRY: a WRITE entry header,
   * its `seq` the READ's token, then the bytes) answers it, or READ_FAILED with a status.
   */
  READ: 28,
  READ_DATA: 29,
  READ_FAILED: 30,
} as const;
export type PeerFrameType = (typeof PeerFrameType)[keyof typeof PeerFrameType];

export const RefuseCode = {
  VERSION: 1,
  CLUSTER: 2,
  UNKNOWN_NODE: 3,
  AUTH: 4,
  VOLUME: 5,
  ROLE: 6,
  STATE: 7,
  BUSY: 8,
  /** The source's epoch cannot be followed (its history and the target's went separate ways). */
  EPOCH: 9,
  /** The target knows a newer epoch than the one the source claims: the source is no longer the primary. */
  STALE_EPOCH: 10,
} as const;
export type RefuseCode = (typeof RefuseCode)[keyof typeof RefuseCode];

const FRAME_NAMES = new Map<number, string>(Object.entries(PeerFrameType).map(([name, code]) => [code, name]));

/** 'HELLO', 'ENTRY', ... for messages and logs; unknown codes as 'type N'. */
export function peerFrameName(type: number): string {
  return FRAME_NAMES.get(type) ?? `type ${type}`;
}

/** READY's disk byte is the index in this list. */
export const PEER_DISK_STATES = DISK_STATES;
export type PeerDiskState = DiskState;

/**
 * An epoch of a volume's history as the wire carries it: `primary` numbered the entries
 * from `firstSeq` on. A history on the wire is the last PEER_HISTORY_EPOCHS_MAX epochs at
 * most; a copy compared against a cut history looks different from where the cut begins,
 * which costs a larger resync, never a missed difference.
 */
export interface PeerEpochStart {
  epoch: number;
  primary: string;
  firstSeq: number;
  /** A restart of the epoch by its primary after a crash (src/core/epoch-history.ts); absent: 0. */
  restart?: number;
}

export interface PeerHello {
  type: 'hello';
  /** Decoded as sent, whatever its value, so the target can answer REFUSE VERSION. */
  version: number;
  connectionIndex: number;
  connections: number;
  session: number;
  nonce: Buffer;
  cluster: string;
  fromNode: string;
  toNode: string;
  volume: string;
  /** The epoch of the volume's history the source is primary in. */
  epoch: number;
  /** The last entry the source holds (a target finds from it how many the source holds past their shared one). */
  lastSeq: number;
  /** The source's history, ending with that epoch (a target that knows an older one learns it). */
  history: PeerEpochStart[];
}
export interface PeerChallenge { type: 'challenge'; nonce: Buffer; mac: Buffer }
export interface PeerAuth { type: 'auth'; mac: Buffer }
export interface PeerReady {
  type: 'ready';
  epoch: number;
  disk: PeerDiskState;
  lastSeq: number;
  durableSeq: number;
  cpSeq: number;
  /**
   * The target holds entries after `divergedAfter` that are not of the history it sends,
   * or regions of writes that are not (it held them before it followed a newer epoch):
   * the source resets it and has it name them. Without it, `divergedAfter` is `lastSeq`.
   */
  diverged: boolean;
  divergedAfter: number;
  /**
   * The target's image was made empty at its last start (a new or replaced disk) and it
   * holds no entry: it lacks whatever the source holds, unless the source's records say
   * they name all of it.
   */
  empty: boolean;
  /** The target's history, ending with `epoch` (the source finds from it where the copies part). */
  history: PeerEpochStart[];
}
export interface PeerRefuse { type: 'refuse'; code: RefuseCode; message: string }
/**
 * A split brain found by the target: the last entry both copies share, what each holds
 * past it (the target's entries it may have acknowledged, and bytes of the regions they
 * changed), and the decision: `disconnect` (nothing is discarded until an operator says
 * which), or `discard-source` (the source's writes lose: it steps down, saves them, and
 * follows the target once that is the primary of a newer epoch).
 */
export interface PeerSplitBrain {
  type: 'split-brain';
  decision: 'disconnect' | 'discard-source';
  sharedSeq: number;
  /** The target's last entry, and its epoch and history. */
  lastSeq: number;
  epoch: number;
  history: PeerEpochStart[];
  targetEntries: number;
  targetBytes: number;
  sourceEntries: number;
}
export interface PeerEntry {
  type: 'entry';
  header: EntryHeader;
  /**
   * The payload as slices of the received chunks (not copied), checked against the
   * header's payload CRC; empty without payload.
   */
  payload: Buffer[];
  /** Bytes of the frame body: the 64-byte entry header and the payload. */
  bodyBytes: number;
}
export interface PeerAck { type: 'ack'; seq: number; status: number }
export interface PeerFlush { type: 'flush'; seq: number }
export interface PeerFlushed { type: 'flushed'; seq: number; status: number }
export interface PeerSync { type: 'sync'; cpSeq: number }
export interface PeerSynced { type: 'synced'; cpSeq: number; status: number }
/**
 * Restart your log after `seq`; first name (DIVERGED) the regions of every entry you hold
 * past `reportAfter`, which this node may not have (it lost them in a crash).
 */
export interface PeerReset { type: 'reset'; seq: number; reportAfter: number }
export interface PeerResetDone { type: 'reset-done'; seq: number; status: number }
/** `all`: too many to list, every region counts. */
export interface PeerDiverged { type: 'diverged'; all: boolean; extents: { offset: number; lengthBytes: number }[] }
/** The SHA-256 of [offset, offset+lengthBytes) once every entry up to `seq` is in the image. */
export interface PeerVerify { type: 'verify'; token: number; seq: number; offset: number; lengthBytes: number }
export interface PeerVerified { type: 'verified'; token: number; status: number; digest: Buffer }
export interface PeerInSync { type: 'in-sync'; seq: number }
/** The bytes of [offset, offset+lengthBytes) once every entry up to `seq` is in the image. */
export interface PeerRead { type: 'read'; token: number; seq: number; offset: number; lengthBytes: number }
/** READ's answer: `header.seq` is its token, `header.offset`/`lengthBytes` its range, the payload its bytes. */
export interface PeerReadData { type: 'read-data'; header: EntryHeader; payload: Buffer[]; bodyBytes: number }
export interface PeerReadFailed { type: 'read-failed'; token: number; status: number }

export type PeerMessage =
  | PeerHello | PeerChallenge | PeerAuth | PeerReady | PeerRefuse | PeerSplitBrain | PeerEntry
  | PeerAck | PeerFlush | PeerFlushed | PeerSync | PeerSynced | PeerReset | PeerResetDone
  | PeerDiverged | PeerVerify | PeerVerified | PeerInSync | PeerRead | PeerReadData | PeerReadFailed;
/** Everything `encodeFrame` encodes: ENTRY and READ_DATA have their own zero-copy encoders. */
export type PeerControlMessage = Exclude<PeerMessage, PeerEntry | PeerReadData>;
