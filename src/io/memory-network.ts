// The twin of the stream and datagram link ports (stream-link.ts, datagram-link.ts): a
// network inside one process, so that nodes, their mirror links and their heartbeats run
// in one test with no sockets, and a test can cut the link between two hosts as a pulled
// cable or a firewall rule would.
//
// Hosts are matched as written (no wildcards, no names). Delivery happens on a later turn
// of the event loop, never inside write() or send(). While two hosts are cut, the bytes of
// their streams wait (TCP retransmits), connection attempts between them wait, and their
// datagrams are lost; heal() delivers what waited, in order. reset() breaks every stream
// between two hosts as a connection reset would.

import { assert } from '../lib/assert.js';
import type { DatagramLink, DatagramSocket } from './datagram-link.js';
import type { ByteStream, NetAddress, StreamLink, StreamListener } from './stream-link.js';

/** Ports handed out for port 0, from here up. */
const FIRST_EPHEMERAL_PORT = 40_000;
/** Bytes a stream may hold unsent (a test that floods a cut link fails rather than grows). */
const STREAM_HELD_BYTES_MAX = 256 * 1024 * 1024;
/** Connection attempts that may wait for a cut to heal (a runaway reconnect loop fails rather than grows). */
const WAITING_CONNECTS_MAX = 10_000;

function errorWithCode(code: string, message: string): Error {
  return Object.assign(new Error(`${message} (${code})`), { code });
}

const key = (address: NetAddress): string => `${address.host}:${address.port}`;

type Outgoing = { kind: 'data'; chunk: Buffer } | { kind: 'fin' };

class MemoryStream implements ByteStream {
  peer: MemoryStream | null = null;
  private opened = false;
  private closed = false;
  private failure: Error | null = null;
  private readonly openHandlers: (() => void)[] = [];
  private readonly dataHandlers: ((chunk: Buffer) => void)[] = [];
  private readonly closeHandlers: ((error: Error | null) => void)[] = [];
  /** What this end sent and the network has not delivered yet. */
  private outbox: Outgoing[] = [];
  private outboxBytes = 0;
  private flushing = false;
  private finished = false;

  constructor(
    private readonly network: MemoryNetwork,
    readonly localHost: string,
    readonly remoteHost: string,
    readonly remote: string,
  ) {}

  onOpen(handler: () => void): void {
    if (this.opened) queueMicrotask(() => !this.closed && handler());
    else if (!this.closed) this.openHandlers.push(handler);
  }

  onData(handler: (chunk: Buffer) => void): void {
    this.dataHandlers.push(handler);
  }

  onClose(handler: (error: Error | null) => void): void {
    if (this.closed) queueMicrotask(() => handler(this.failure));
    else this.closeHandlers.push(handler);
  }

  write(chunk: Buffer): void {
    if (this.closed || this.finished) return;
    this.outboxBytes += chunk.length;
    assert(this.outboxBytes <= STREAM_HELD_BYTES_MAX, 'a memory stream holds too many unsent bytes');
    this.outbox.push({ kind: 'data', chunk: Buffer.from(chunk) });
    this.schedule();
  }

  cork(): void {}

  uncork(): void {}

  end(last: Buffer): void {
    if (this.closed || this.finished) return;
    this.write(last);
    this.finished = true;
    this.outbox.push({ kind: 'fin' });
    this.schedule();
  }

  destroy(): void {
    if (this.closed) return;
    // What was not delivered is lost; the other end learns of the close as of a FIN.
    this.outbox = [{ kind: 'fin' }];
    this.outboxBytes = 0;
    this.finished = true;
    this.schedule();
    this.close(null);
  }

  /** The connection is set up (client side) or accepted (server side). */
  open(): void {
    if (this.closed) return;
    this.opened = true;
    for (const handler of this.openHandlers.splice(0)) handler();
    this.schedule();
  }

  close(error: Error | null): void {
    if (this.closed) return;
    this.closed = true;
    this.failure = error;
    queueMicrotask(() => {
      for (const handler of this.closeHandlers.splice(0)) handler(error);
    });
  }

  /** Delivers the outbox on a later turn, unless the link is cut or nobody is connected yet. */
  schedule(): void {
    if (this.flushing || this.outbox.length === 0) return;
    this.flushing = true;
    setImmediate(() => {
      this.flushing = false;
      this.flush();
    });
  }

  private flush(): void {
    const peer = this.peer;
    if (peer === null) return;
    if (this.network.isCut(this.localHost, this.remoteHost)) {
      this.network.held.add(this);
      return;
    }
    for (const item of this.outbox.splice(0)) {
      if (item.kind === 'fin') {
        // Both ends close, as a TCP socket that does not allow half-open connections does.
        peer.close(null);
        this.close(null);
        break;
      }
      this.outboxBytes -= item.chunk.length;
      if (peer.closed) continue;
      for (const handler of peer.dataHandlers) handler(item.chunk);
    }
    this.outboxBytes = 0;
  }
}

interface Listening {
  connectionsMax: number;
  open: number;
  onConnection: (stream: ByteStream) => void;
}

interface Bound {
  onMessage: (datagram: Buffer, from: string) => void;
}

export class MemoryNetwork {
  private readonly listeners = new Map<string, Listening>();
  private readonly bound = new Map<string, Bound>();
  private readonly cuts = new Set<string>();
  private readonly streamsOpen = new Set<MemoryStream>();
  private readonly waitingConnects: (() => void)[] = [];
  /** Streams whose bytes wait for a cut to heal. */
  readonly held = new Set<MemoryStream>();
  private nextPort = FIRST_EPHEMERAL_PORT;
  /** Datagrams lost to cuts (for tests that check a cut did something). */
  datagramsLost = 0;

  readonly streams: StreamLink = {
    connect: (to, from) => this.connect(to, from),
    listen: (address, connectionsMax, onConnection) => this.listen(address, connectionsMax, onConnection),
  };

  readonly datagrams: DatagramLink = {
    bind: (address, onMessage) => this.bind(address, onMessage),
  };

  /** Cuts the link between two hosts (both directions) until heal(). */
  cut(hostA: string, hostB: string): void {
    this.cuts.add(this.pair(hostA, hostB));
  }

  /** Restores the link between two hosts and delivers what waited. */
  heal(hostA: string, hostB: string): void {
    this.cuts.delete(this.pair(hostA, hostB));
    for (const stream of [...this.held]) {
      this.held.delete(stream);
      stream.schedule();
    }
    for (const attempt of this.waitingConnects.splice(0)) attempt();
  }

  /** Breaks every stream between two hosts: both ends close with ECONNRESET. */
  reset(hostA: string, hostB: string): void {
    const pair = this.pair(hostA, hostB);
    for (const stream of [...this.streamsOpen]) {
      if (this.pair(stream.localHost, stream.remoteHost) !== pair) continue;
      this.streamsOpen.delete(stream);
      stream.close(errorWithCode('ECONNRESET', `connection to ${stream.remote} reset`));
    }
  }

  isCut(hostA: string, hostB: string): boolean {
    return this.cuts.has(this.pair(hostA, hostB));
  }

  private pair(hostA: string, hostB: string): string {
    return hostA < hostB ? `${hostA}|${hostB}` : `${hostB}|${hostA}`;
  }

  private ephemeralPort(): number {
    const port = this.nextPort;
    this.nextPort = this.nextPort >= 65_535 ? FIRST_EPHEMERAL_PORT : this.nextPort + 1;
    return port;
  }

  /** `address`, or for port 0 the same host with a port nothing in `taken` uses. */
  private port(address: NetAddress, taken: Map<string, unknown>): NetAddress {
    if (address.port !== 0) return address;
    for (let tries = 0; tries <= 65_535 - FIRST_EPHEMERAL_PORT; tries += 1) {
      const candidate = { host: address.host, port: this.ephemeralPort() };
      if (!taken.has(key(candidate))) return candidate;
    }
    throw errorWithCode('EADDRINUSE', `no free port on ${address.host}`);
  }

  private connect(to: NetAddress, from: NetAddress | null): ByteStream {
    const localHost = from?.host ?? to.host;
    const client = new MemoryStream(this, localHost, to.host, key(to));
    this.track(client);
    const attempt = (): void => {
      if (this.isCut(localHost, to.host)) {
        assert(this.waitingConnects.length < WAITING_CONNECTS_MAX, 'too many connection attempts wait for a cut to heal');
        this.waitingConnects.push(attempt);
        return;
      }
      const listening = this.listeners.get(key(to));
      if (listening === undefined || listening.open >= listening.connectionsMax) {
        client.close(errorWithCode('ECONNREFUSED', `connect to ${key(to)} refused`));
        return;
      }
      const server = new MemoryStream(this, to.host, localHost, `${localHost}:${this.ephemeralPort()}`);
      this.track(server);
      listening.open += 1;
      server.onClose(() => (listening.open -= 1));
      client.peer = server;
      server.peer = client;
      listening.onConnection(server);
      server.open();
      client.open();
    };
    setImmediate(attempt);
    return client;
  }

  private track(stream: MemoryStream): void {
    this.streamsOpen.add(stream);
    stream.onClose(() => this.streamsOpen.delete(stream));
  }

  private listen(address: NetAddress, connectionsMax: number, onConnection: (stream: ByteStream) => void): Promise<StreamListener> {
    if (address.port !== 0 && this.listeners.has(key(address))) {
      return Promise.reject(errorWithCode('EADDRINUSE', `listen on ${key(address)}`));
    }
    const bound = this.port(address, this.listeners);
    this.listeners.set(key(bound), { connectionsMax, open: 0, onConnection });
    return Promise.resolve({
      address: bound,
      close: () => {
        this.listeners.delete(key(bound));
        return Promise.resolve();
      },
    });
  }

  private bind(address: NetAddress, onMessage: (datagram: Buffer, from: string) => void): Promise<DatagramSocket> {
    if (address.port !== 0 && this.bound.has(key(address))) {
      return Promise.reject(errorWithCode('EADDRINUSE', `bind ${key(address)}`));
    }
    const local = this.port(address, this.bound);
    const self: Bound = { onMessage };
    this.bound.set(key(local), self);
    let closed = false;
    return Promise.resolve({
      address: local,
      send: (datagram, to, sent) => {
        if (closed) {
          sent?.(false);
          return;
        }
        const copy = Buffer.from(datagram);
        setImmediate(() => {
          if (this.isCut(local.host, to.host)) {
            this.datagramsLost += 1;
            return;
          }
          this.bound.get(key(to))?.onMessage(copy, key(local));
        });
        sent?.(true);
      },
      close: () => {
        if (closed) return;
        closed = true;
        if (this.bound.get(key(local)) === self) this.bound.delete(key(local));
      },
    });
  }
}
