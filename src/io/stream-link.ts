// The stream link port (docs/architecture.md, "I/O ports and their twins"): ordered,
// reliable byte streams between nodes, as the mirror's peer connections use them.
// `tcpStreamLink` is the real one (TCP, Nagle off); `MemoryNetwork.streams`
// (memory-network.ts) is its twin, in one process, whose links a test can cut. Both pass
// test/unit/network-ports.test.ts. TLS for peer links will be a third implementation.

import net from 'node:net';

/** A host and port; port 0 asks for one the system picks. */
export interface NetAddress {
  host: string;
  port: number;
}

/** One end of a connection. Writes after the stream closed are dropped. */
export interface ByteStream {
  /** The other end, as `host:port` (for logs). */
  readonly remote: string;
  /** `handler` runs once the connection is set up (at once for an accepted one). */
  onOpen(handler: () => void): void;
  /** Every chunk received, in order. */
  onData(handler: (chunk: Buffer) => void): void;
  /**
   * Runs once when the stream is closed, from either end: `error` says why when the
   * connection failed or broke, null for an orderly close.
   */
  onClose(handler: (error: Error | null) => void): void;
  write(chunk: Buffer): void;
  /** Writes until uncork() may leave together. */
  cork(): void;
  uncork(): void;
  /** Sends `last`, then closes this direction; the stream closes once the other end does. */
  end(last: Buffer): void;
  /** Closes at once; what was not yet sent may be lost. */
  destroy(): void;
}

export interface StreamListener {
  /** The address bound (the port the system picked for port 0). */
  readonly address: NetAddress;
  /** Stops accepting; resolves once the listener is closed (open streams stay open). */
  close(): Promise<void>;
}

export interface StreamLink {
  /**
   * Connects to `to`, from the host of `from` when it names one (so the connection leaves
   * on that link). A failure to connect arrives as onClose(error), never as onOpen.
   */
  connect(to: NetAddress, from: NetAddress | null): ByteStream;
  /**
   * Accepts connections on `address`, at most `connectionsMax` at a time. Rejects with an
   * error whose `code` is 'EADDRINUSE' when the address is taken.
   */
  listen(address: NetAddress, connectionsMax: number, onConnection: (stream: ByteStream) => void): Promise<StreamListener>;
}

/** Whether `host` is one address of this machine's (not a wildcard, not a name). */
function isBindableHost(host: string): boolean {
  return net.isIP(host) !== 0 && host !== '0.0.0.0' && host !== '::';
}

class TcpStream implements ByteStream {
  readonly remote: string;
  private closed = false;
  private failure: Error | null = null;
  private readonly closeHandlers: ((error: Error | null) => void)[] = [];

  constructor(
    private readonly socket: net.Socket,
    remote: string,
  ) {
    this.remote = remote;
    socket.setNoDelay(true);
    socket.on('error', (error) => {
      this.failure ??= error;
    });
    socket.on('close', () => {
      this.closed = true;
      for (const handler of this.closeHandlers.splice(0)) handler(this.failure);
    });
  }

  onOpen(handler: () => void): void {
    if (this.socket.connecting) this.socket.once('connect', handler);
    else if (!this.closed) queueMicrotask(handler);
  }

  onData(handler: (chunk: Buffer) => void): void {
    this.socket.on('data', handler);
  }

  onClose(handler: (error: Error | null) => void): void {
    if (this.closed) queueMicrotask(() => handler(this.failure));
    else this.closeHandlers.push(handler);
  }

  write(chunk: Buffer): void {
    if (!this.closed && !this.socket.destroyed) this.socket.write(chunk);
  }

  cork(): void {
    this.socket.cork();
  }

  uncork(): void {
    this.socket.uncork();
  }

  end(last: Buffer): void {
    if (!this.closed && !this.socket.destroyed) this.socket.end(last);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

export const tcpStreamLink: StreamLink = {
  connect(to, from) {
    const socket = net.connect({ host: to.host, port: to.port, ...(from !== null && isBindableHost(from.host) ? { localAddress: from.host } : {}) });
    return new TcpStream(socket, `${to.host}:${to.port}`);
  },

  listen(address, connectionsMax, onConnection) {
    const server = net.createServer({ noDelay: true }, (socket) => onConnection(new TcpStream(socket, `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`)));
    server.maxConnections = connectionsMax;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: address.host, port: address.port }, () => {
        server.off('error', reject);
        const bound = server.address();
        if (bound === null || typeof bound === 'string') {
          server.close();
          reject(new Error('listener has no address'));
          return;
        }
        resolve({
          address: { host: address.host, port: bound.port },
          close: () => new Promise<void>((done) => server.close(() => done())),
        });
      });
    });
  },
};
