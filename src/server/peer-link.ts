// One authenticated connection between two nodes, for one volume: an element of the
// peer's connection array (socket, state, time of the last sign of life).
//
// Both ends run the same handshake, in opposite roles. The source connects and sends
// HELLO (protocol version, cluster, both node ids, the volume, its place in a session of
// n connections and a nonce); the target checks it, answers CHALLENGE with its own nonce
// and an HMAC proof over everything said so far; the source checks that proof and sends
// AUTH with its own; the target checks it and answers READY with the state of its copy,
// or REFUSE. No volume data moves before READY, and a connection whose peer fails to
// prove it knows the cluster secret is closed with a log line that says so.
//
// After the handshake the link only moves frames: a frame that fails its checksum or
// limits closes the connection (and is counted by the caller).

import { constants } from '../constants.js';
import type { Address } from '../control/config.js';
import { hmacSha256, macEquals, randomNonce } from '../lib/hmac.js';
import type { Logger } from '../lib/log.js';
import type { ByteStream, StreamLink } from '../io/stream-link.js';
import { encodeFrame, PEER_PROTOCOL_VERSION, PeerFrameDecoder, RefuseCode, type PeerEpochStart, type PeerMessage } from '../protocol/peer/frames.js';
import { sourceProof, targetProof } from '../protocol/peer/handshake.js';

const HELD_MESSAGES_MAX = 1024;

export type LinkState = 'connecting' | 'handshake' | 'up' | 'closed';

export type HelloMessage = Extract<PeerMessage, { type: 'hello' }>;
export type ReadyMessage = Extract<PeerMessage, { type: 'ready' }>;

export class PeerLink {
  state: LinkState = 'connecting';
  /** Time (ms since the epoch) of the last heartbeat from the peer (the connection array's timestamp). */
  lastHeartbeatMs = Date.now();
  /** Why the link closed, once it has. */
  closeReason: string | null = null;
  private readonly decoder = new PeerFrameDecoder({ entryBodyBytesMax: constants.peerEntryBodyBytesMax });
  private onMessage: (message: PeerMessage) => void = () => undefined;
  /** Messages that arrived while nobody was listening yet (between handshake and session). */
  private held: PeerMessage[] | null = null;
  private readonly closeHandlers: ((reason: string) => void)[] = [];
  private timer: NodeJS.Timeout | null = null;
  private corked = false;

  constructor(
    readonly stream: ByteStream,
    readonly counters: { peerProtocolErrors: number },
  ) {
    stream.onData((chunk) => this.onData(chunk));
    stream.onClose((error) => this.close(error === null ? 'connection closed by the peer' : `socket error: ${error.message}`));
  }

  /** Messages go to `handler` from now on, starting with any held ones. */
  receive(handler: (message: PeerMessage) => void): void {
    this.onMessage = handler;
    const held = this.held ?? [];
    this.held = null;
    for (const message of held) {
      if (this.isClosed()) return;
      handler(message);
    }
  }

  /**
   * Keeps messages until the next receive(): frames that follow the handshake in the same
   * chunk are judged by whoever takes the link over, not dropped.
   */
  hold(): void {
    this.held = [];
    this.onMessage = (message) => {
      const held = this.held;
      if (held === null) return;
      if (held.length >= HELD_MESSAGES_MAX) {
        this.counters.peerProtocolErrors += 1;
        this.close(`more than ${HELD_MESSAGES_MAX} messages before the session started`);
        return;
      }
      held.push(message);
    };
  }

  onClose(handler: (reason: string) => void): void {
    if (this.state === 'closed') handler(this.closeReason ?? 'closed');
    else this.closeHandlers.push(handler);
  }

  /** Closes the link unless `done` is called within `timeoutMs`. */
  deadline(timeoutMs: number, what: string): () => void {
    this.clearDeadline();
    this.timer = setTimeout(() => this.close(`no ${what} within ${timeoutMs} ms`), timeoutMs);
    return () => this.clearDeadline();
  }

  /**
   * Queues a frame. Frames sent during one turn of the event loop leave together, in
   * one writev, once the turn's I/O callbacks have run: a syscall per batch rather than
   * per entry or acknowledgement.
   */
  send(frame: Buffer | readonly Buffer[]): void {
    if (this.state === 'closed') return;
    if (!this.corked) {
      this.corked = true;
      this.stream.cork();
      setImmediate(() => {
        this.corked = false;
        this.stream.uncork();
      });
    }
    if (Buffer.isBuffer(frame)) this.stream.write(frame);
    else for (const part of frame) this.stream.write(part);
  }

  /** Sends a last frame (a refusal) and closes once it has left, or after a moment at most. */
  finish(frame: Buffer, reason: string): void {
    if (this.state === 'closed') return;
    this.stream.end(frame);
    setTimeout(() => this.close(reason), 100).unref();
  }

  close(reason: string): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.closeReason = reason;
    this.clearDeadline();
    this.stream.destroy();
    for (const handler of this.closeHandlers.splice(0)) handler(reason);
  }

  isClosed(): boolean {
    return this.state === 'closed';
  }

  private clearDeadline(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  private onData(chunk: Buffer): void {
    if (this.state === 'closed') return;
    let messages: PeerMessage[];
    try {
      messages = this.decoder.push(chunk);
    } catch (error) {
      this.counters.peerProtocolErrors += 1;
      this.close(`bad frame: ${(error as Error).message}`);
      return;
    }
    for (const message of messages) {
      // A handler may close the link; what follows it is dropped.
      if (this.isClosed()) return;
      this.onMessage(message);
    }
  }
}

export interface SourceHandshake {
  cluster: string;
  secret: Buffer;
  fromNode: string;
  toNode: string;
  volume: string;
  session: number;
  connectionIndex: number;
  connections: number;
  /** The source's epoch history (its last epoch is the one it is primary in), cut to what the wire carries. */
  history: PeerEpochStart[];
  /** The last entry the source holds. */
  lastSeq: number;
}

/** Thrown (as the rejection) when the peer refuses us or fails to authenticate. */
export class HandshakeRefused extends Error {
  constructor(
    message: string,
    readonly code: number | null,
    /** The target found the copies in split brain (SPLIT_BRAIN in place of READY). */
    readonly splitBrain: SplitBrainMessage | null = null,
  ) {
    super(message);
  }
}

export type SplitBrainMessage = Extract<PeerMessage, { type: 'split-brain' }>;

/**
 * The single outcome of one handshake: the first of success, refusal or failure wins and
 * stops the handshake deadline; later ones are ignored.
 */
function handshakeOutcome<T>(link: PeerLink, resolve: (value: T) => void, reject: (error: Error) => void) {
  const stopDeadline = link.deadline(constants.peerHandshakeTimeoutMs, 'handshake');
  let settled = false;
  const first = (): boolean => {
    if (settled) return false;
    settled = true;
    stopDeadline();
    return true;
  };
  return {
    get settled(): boolean {
      return settled;
    },
    succeed(value: T): void {
      if (!first()) return;
      // Frames that came with the last handshake message wait for the session.
      link.hold();
      resolve(value);
    },
    /** Sends a REFUSE saying why, then closes. */
    refuse(code: RefuseCode, toPeer: string, error: HandshakeRefused): void {
      if (!first()) return;
      link.finish(encodeFrame({ type: 'refuse', code, message: toPeer }), error.message);
      reject(error);
    },
    fail(error: Error): void {
      if (!first()) return;
      link.close(error.message);
      reject(error);
    },
  };
}

/**
 * The source's side: connects from `from` (this node's replication address, so the
 * connection uses the replication link, not whatever the routing table picks) to
 * `address`, authenticates, and resolves with the link and the target's READY. Rejects
 * (and closes) on refusal, bad proof, or timeout.
 */
export function connectAsSource(
  streams: StreamLink,
  from: Address,
  address: Address,
  hello: SourceHandshake,
  counters: { peerProtocolErrors: number },
): Promise<{ link: PeerLink; ready: ReadyMessage }> {
  return new Promise((resolve, reject) => {
    // A wildcard listen address names no link, and a host name may stand for several: the
    // stream link binds only an address of this machine's, else the kernel chooses.
    const link = new PeerLink(streams.connect(address, from), counters);
    const outcome = handshakeOutcome(link, resolve, reject);
    const helloMessage: HelloMessage = {
      type: 'hello',
      version: PEER_PROTOCOL_VERSION,
      connectionIndex: hello.connectionIndex,
      connections: hello.connections,
      session: hello.session,
      nonce: randomNonce(),
      cluster: hello.cluster,
      fromNode: hello.fromNode,
      toNode: hello.toNode,
      volume: hello.volume,
      epoch: hello.history[hello.history.length - 1]?.epoch ?? 0,
      lastSeq: hello.lastSeq,
      history: hello.history,
    };
    link.onClose((reason) => outcome.fail(new Error(reason)));
    link.stream.onOpen(() => {
      link.state = 'handshake';
      link.send(encodeFrame(helloMessage));
    });
    let proven = false;
    link.receive((message) => {
      if (message.type === 'challenge' && !proven) {
        const expected = targetProof(hmacSha256, hello.secret, helloMessage, message.nonce);
        if (!macEquals(expected, message.mac)) {
          // Told, so that the other side's log says why too.
          outcome.refuse(
            RefuseCode.AUTH,
            `node ${hello.fromNode} could not verify your proof: wrong cluster secret`,
            new HandshakeRefused(`node ${hello.toNode} failed to authenticate: wrong cluster secret`, RefuseCode.AUTH),
          );
          return;
        }
        proven = true;
        link.send(encodeFrame({ type: 'auth', mac: sourceProof(hmacSha256, hello.secret, helloMessage, message.nonce) }));
      } else if (message.type === 'ready' && proven) {
        link.state = 'up';
        outcome.succeed({ link, ready: message });
      } else if (message.type === 'split-brain' && proven) {
        const text = `node ${hello.toNode} found the copies of ${hello.volume} in split brain: ${message.targetEntries} entries of its own and ${message.sourceEntries} of this node's past entry ${message.sharedSeq}`;
        outcome.fail(new HandshakeRefused(text, null, message));
      } else if (message.type === 'refuse') {
        outcome.fail(new HandshakeRefused(`node ${hello.toNode} refused the connection: ${message.message}`, message.code));
      } else {
        counters.peerProtocolErrors += 1;
        outcome.fail(new Error(`unexpected ${message.type} during the handshake`));
      }
    });
  });
}

export interface TargetExpectations {
  cluster: string;
  secret: Buffer;
  localNode: string;
  /** Why this HELLO cannot be served (a refusal), or null when it can. */
  check: (hello: HelloMessage) => { code: RefuseCode; message: string } | null;
}

/**
 * The target's side of a connection just accepted: resolves with the authenticated
 * HELLO; the caller then answers READY (or REFUSE). Rejects (having refused and closed
 * the link) when the source is not who it claims or may not mirror that volume here.
 */
export function acceptAsTarget(link: PeerLink, expect: TargetExpectations, log: Logger): Promise<HelloMessage> {
  return new Promise((resolve, reject) => {
    const outcome = handshakeOutcome(link, resolve, reject);
    link.state = 'handshake';
    let hello: HelloMessage | null = null;
    let nonce: Buffer | null = null;
    const refuse = (code: RefuseCode, message: string): void => {
      log.warn('peer connection refused', { remote: link.stream.remote, from: hello?.fromNode ?? '?', reason: message });
      outcome.refuse(code, message, new HandshakeRefused(message, code));
    };
    link.onClose((reason) => outcome.fail(new Error(reason)));
    link.receive((message) => {
      if (outcome.settled) return;
      if (message.type === 'hello' && hello === null) {
        hello = message;
        if (message.version !== PEER_PROTOCOL_VERSION) {
          return refuse(RefuseCode.VERSION, `protocol version ${message.version} is not supported (this node speaks ${PEER_PROTOCOL_VERSION})`);
        }
        if (message.cluster !== expect.cluster) {
          return refuse(RefuseCode.CLUSTER, `node ${message.fromNode} belongs to cluster "${message.cluster}", this node to "${expect.cluster}"`);
        }
        if (message.toNode !== expect.localNode) {
          return refuse(RefuseCode.UNKNOWN_NODE, `connection meant for node "${message.toNode}" reached node "${expect.localNode}"`);
        }
        const problem = expect.check(message);
        if (problem !== null) return refuse(problem.code, problem.message);
        nonce = randomNonce();
        link.send(encodeFrame({ type: 'challenge', nonce, mac: targetProof(hmacSha256, expect.secret, message, nonce) }));
      } else if (message.type === 'auth' && hello !== null && nonce !== null) {
        if (!macEquals(sourceProof(hmacSha256, expect.secret, hello, nonce), message.mac)) {
          return refuse(RefuseCode.AUTH, `node "${hello.fromNode}" failed to authenticate: wrong cluster secret`);
        }
        outcome.succeed(hello);
      } else if (message.type === 'refuse' && hello !== null) {
        log.warn('peer connection refused', { remote: link.stream.remote, from: hello.fromNode, reason: message.message });
        outcome.fail(new HandshakeRefused(message.message, message.code));
      } else {
        link.counters.peerProtocolErrors += 1;
        outcome.fail(new Error(`unexpected ${message.type} during the handshake`));
      }
    });
  });
}
